# SPDX-License-Identifier: MIT
"""Configuration: one TOML file plus ``MAILD_<SECTION>_<KEY>`` overrides -> frozen, typed settings.

Every section is a frozen dataclass; the loader checks every key against it, so a misspelt key or a
value of the wrong type is a one-line ``ConfigError`` naming the key, never a traceback.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import secrets
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class ConfigError(Exception):
    """A configuration problem, already phrased for the operator."""


@dataclass(frozen=True)
class DatabaseSettings:
    url: str = ""  # empty: SQLite file maild.db in [paths] data


@dataclass(frozen=True)
class PathSettings:
    data: str = "."
    invoices: str = "invoices"
    templates: str = ""  # empty: the templates shipped with maild


@dataclass(frozen=True)
class SmtpSettings:
    listen: str = "127.0.0.1:8025"
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 100
    tls_cert: str = ""
    tls_key: str = ""
    require_tls: bool = False
    data_timeout: int = 300
    shutdown_grace: int = 20
    # Intake worker processes (maild.ingest.workers); 0 runs intake in threads of the daemon itself.
    processes: int = 0
    # Seconds queued mail may take to process (a message that hangs the parser or a driver): one
    # message with processes = 0, past which the work process exits 70 and maild's listener starts
    # it again (maild.listener; with queue = false the daemon drains SMTP and exits 70 for its
    # supervisor); one run of up to 16 messages in a worker, which is then killed. Either way the
    # message is quarantined after 3 such runs.
    process_timeout: int = 300
    # true: answer 250 once the raw message is committed and process it right after, oldest first
    # (maild.ingest.queue); false: process it before answering (the 250 names the case).
    queue: bool = True


@dataclass(frozen=True)
class RelaySettings:
    host: str = "localhost"
    port: int = 25
    security: str = "none"  # none | starttls | tls
    username: str = ""
    password: str = ""
    password_file: str = ""
    ca_file: str = ""
    timeout: int = 60
    helo: str = ""
    retry_first_minutes: int = 5
    retry_max_minutes: int = 240
    give_up_hours: int = 96  # SPEC §6: temporary failures are retried for up to 4 days


@dataclass(frozen=True)
class IntakeSettings:
    address: str = "support@example.com"
    # extra intake addresses and the case kind each implies, e.g. {"macd@example.com" = "macd"}
    extra: dict[str, str] = field(default_factory=dict)
    own_addresses: list[str] = field(default_factory=list)
    staff_alerts: str = ""  # where operator alerts go; empty: every active staff member
    notify_mpoc_on_unauthorised: bool = True
    max_received: int = 50
    ack_per_sender_per_hour: int = 5
    ack_per_sender_per_day: int = 20
    unauthorised_reply_per_day: int = 1
    reopen_days: int = 7


@dataclass(frozen=True)
class ImapSettings:
    url: str = ""
    kind: str = "technical"
    processed_folder: str = "Processed"
    failed_folder: str = "Failed"
    poll_seconds: int = 60
    idle_seconds: int = 1500  # re-issue IDLE before the 29-minute server timeout (RFC 2177)
    batch: int = 100
    ca_file: str = ""
    oauth_token_command: str = ""
    oauth_token_file: str = ""
    silent_alert_hours: int = 0


@dataclass(frozen=True)
class TimeSettings:
    zone: str = "America/Denver"
    holidays: list[str] = field(default_factory=list)
    holiday_country: str = "US"  # empty: no default holiday list
    business_day_start: str = "08:00"
    business_day_end: str = "17:00"


@dataclass(frozen=True)
class DeskSettings:
    name: str = "Client Services Support"
    phone: str = "+1 800 555 0100"
    chat_url: str = "https://support.example.com/chat"
    status_page: str = ""
    domain: str = ""  # Message-ID domain; empty: the support address's domain


@dataclass(frozen=True)
class LifecycleSettings:
    no_response_business_days: int = 2
    grace_business_days: int = 1
    assign: str = "round-robin"  # round-robin | none


@dataclass(frozen=True)
class SecuritySettings:
    secret: str = ""  # HMAC key for reply addresses and Message-IDs; `maild init` writes a random one
    trusted_authserv_ids: list[str] = field(default_factory=list)
    authserv_id: str = "maild"


@dataclass(frozen=True)
class MaintenanceSettings:
    monthly_products: list[str] = field(default_factory=list)  # empty: every product
    connect_products: list[str] = field(default_factory=lambda: ["connect"])
    connect_first_sprint: str = "2026-01-06"
    plan_ahead_days: int = 60  # the scheduler keeps recurring windows planned this far ahead; 0: only by hand
    monthly_description: str = "Monthly planned maintenance of the platform."
    monthly_reason: str = "Keeping the platform secure and up to date."
    connect_description: str = "Connect update (3-week sprint release)."
    connect_reason: str = "New features and fixes; no service impact expected."


@dataclass(frozen=True)
class EscalationSettings:
    # level -> product line -> manager addresses, e.g. {"2" = {"cloud" = ["lead@example.com"]}}
    levels: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    notify_next_level_on_miss: bool = True


@dataclass(frozen=True)
class Settings:
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    paths: PathSettings = field(default_factory=PathSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    relay: RelaySettings = field(default_factory=RelaySettings)
    intake: IntakeSettings = field(default_factory=IntakeSettings)
    imap: ImapSettings = field(default_factory=ImapSettings)
    time: TimeSettings = field(default_factory=TimeSettings)
    desk: DeskSettings = field(default_factory=DeskSettings)
    lifecycle: LifecycleSettings = field(default_factory=LifecycleSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    maintenance: MaintenanceSettings = field(default_factory=MaintenanceSettings)
    escalation: EscalationSettings = field(default_factory=EscalationSettings)
    base_dir: str = "."  # directory of the config file; relative paths are resolved against it

    # -- derived values ------------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self._resolve(self.paths.data)

    @property
    def invoice_dir(self) -> Path:
        return self._resolve(self.paths.invoices)

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_dir / 'maild.db'}"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time.zone)

    @property
    def support_address(self) -> str:
        return self.intake.address.lower()

    @property
    def intake_kinds(self) -> dict[str, str]:
        """Every intake address (lower case) -> the case kind it opens."""
        kinds = {self.support_address: "technical"}
        kinds.update({a.lower(): k for a, k in self.intake.extra.items()})
        return kinds

    @property
    def own_addresses(self) -> frozenset[str]:
        return frozenset({*self.intake_kinds, *(a.lower() for a in self.intake.own_addresses)})

    @property
    def mail_domain(self) -> str:
        return (self.desk.domain or self.support_address.rpartition("@")[2]).lower()

    @property
    def secret_bytes(self) -> bytes:
        return (self.security.secret or "maild-insecure-default-secret").encode()

    @property
    def loop_token(self) -> str:
        """Value of our ``X-Maild-Loop`` header: own mail coming back is recognised by it (RELIABILITY L4)."""
        return hmac.new(self.secret_bytes, b"loop:" + self.mail_domain.encode(), hashlib.sha256).hexdigest()[:20]

    def _resolve(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p


_SECTIONS = {f.name: f for f in dataclasses.fields(Settings) if f.name != "base_dir"}


def _coerce(where: str, value: Any, hint: Any) -> Any:
    """Check (TOML) or convert (environment strings) a value to the field's declared type."""
    origin = typing.get_origin(hint)
    from_env = isinstance(value, str) and hint is not str
    if hint is bool:
        if isinstance(value, bool):
            return value
        if from_env and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_env and value.strip().lstrip("-").isdigit():
            return int(value)
        raise ConfigError(f"{where}: expected a whole number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if origin is list:
        if from_env:
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(f"{where}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if from_env:
            pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
            if any(len(p) != 2 for p in pairs):
                raise ConfigError(f"{where}: expected key=value pairs separated by commas")
            value = {k.strip(): v.strip() for k, v in pairs}
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        _, val_hint = typing.get_args(hint)
        return {str(k): _coerce(f"{where}.{k}", v, val_hint) for k, v in value.items()}
    raise ConfigError(f"{where}: unsupported setting type")  # pragma: no cover - programming error


def _section(name: str, raw: dict[str, Any], env: typing.Mapping[str, str]) -> Any:
    cls = typing.get_type_hints(Settings)[name]
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in hints:
            raise ConfigError(f"unknown setting [{name}] {key}")
        values[key] = _coerce(f"[{name}] {key}", value, hints[key])
    for key, hint in hints.items():
        env_name = f"MAILD_{name.upper()}_{key.upper()}"
        if env_name in env:
            values[key] = _coerce(env_name, env[env_name], hint)
    return cls(**values)


def load(path: str | Path | None = None, env: typing.Mapping[str, str] | None = None) -> Settings:
    """Load settings: ``path``, else ``$MAILD_CONFIG``, else ``./maild.toml`` (defaults if absent)."""
    env = os.environ if env is None else env
    explicit = path is not None or "MAILD_CONFIG" in env
    cfg_path = Path(path if path is not None else env.get("MAILD_CONFIG", "maild.toml"))
    raw: dict[str, Any] = {}
    if cfg_path.exists():
        try:
            raw = tomllib.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config {cfg_path}: {exc}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config {cfg_path} is not valid TOML: {exc}") from exc
    elif explicit:
        raise ConfigError(f"config file {cfg_path} not found (create one with `maild init`)")
    for name in raw:
        if name not in _SECTIONS:
            raise ConfigError(f"unknown section [{name}] in {cfg_path}")
        if not isinstance(raw[name], dict):
            raise ConfigError(f"[{name}] must be a table")
    sections = {name: _section(name, raw.get(name, {}), env) for name in _SECTIONS}
    settings = Settings(**sections, base_dir=str(cfg_path.resolve().parent))
    validate(settings)
    return settings


def validate(s: Settings) -> None:
    """Value checks that types alone cannot express."""
    try:
        ZoneInfo(s.time.zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(f"[time] zone: unknown time zone {s.time.zone!r}") from exc
    host, sep, port = s.smtp.listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"[smtp] listen: expected host:port, got {s.smtp.listen!r}")
    if not 0 <= s.smtp.processes <= 64:
        raise ConfigError(f"[smtp] processes: expected 0 to 64, got {s.smtp.processes}")
    if not 1 <= s.smtp.process_timeout <= 86400:
        raise ConfigError(f"[smtp] process_timeout: expected 1 to 86400 seconds, got {s.smtp.process_timeout}")
    if s.relay.security not in ("none", "starttls", "tls"):
        raise ConfigError(f"[relay] security: expected none, starttls or tls, got {s.relay.security!r}")
    if "@" not in s.intake.address:
        raise ConfigError(f"[intake] address: not an email address: {s.intake.address!r}")
    for addr, kind in s.intake.extra.items():
        if "@" not in addr:
            raise ConfigError(f"[intake] extra: not an email address: {addr!r}")
        if kind not in ("technical", "macd", "billing"):
            raise ConfigError(f"[intake] extra: {addr}: kind must be technical, macd or billing")
    for key in ("business_day_start", "business_day_end"):
        value = getattr(s.time, key)
        hh, _, mm = value.partition(":")
        if not (hh.isdigit() and mm.isdigit() and int(hh) < 24 and int(mm) < 60):
            raise ConfigError(f"[time] {key}: expected HH:MM, got {value!r}")


def new_secret() -> str:
    return secrets.token_hex(32)
