# SPDX-License-Identifier: MIT
"""Real servers for the test suite: PostgreSQL, Dovecot IMAP and an SMTP capture relay.

STYLE.md habit 10: tests drive real protocols on loopback. This module starts each server on
127.0.0.1 in a temporary directory and tears it down again; ``plugin_servers`` wraps it in pytest
fixtures. A server whose Debian package is missing raises ``ServerUnavailable``, which the fixtures
turn into a skip, or into a failure when ``CI=true`` (see ``require``).

As root (CI), PostgreSQL runs as the ``postgres`` system user and Dovecot's mail processes run as
``nobody``, because neither server runs mail or data processes as root. Their directories then
live under the system temp directory (pytest's own tmp tree is mode 0700 and closed to them); a
``server-dir`` symlink in the pytest tmp dir points there, and the logs are copied back on close.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import grp
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

from aiosmtpd.controller import Controller

HOST = "127.0.0.1"
START_TIMEOUT = 30.0


class ServerUnavailable(Exception):
    """A server cannot run here because something is not installed."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what} not available: {reason}")
        self.what = what
        self.reason = reason


def in_ci() -> bool:
    """True when the environment says CI=true, where a missing server is a failure."""
    return os.environ.get("CI", "").strip().lower() == "true"


def require(what: str, reason: str) -> NoReturn:
    """Skip the current test because ``what`` is missing, or fail it when CI=true."""
    import pytest

    message = f"{what} not available: {reason}"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` different such ports. Asked one after another, the kernel may hand out the same
    port twice (it was free again once the first probe closed): Dovecot then refused to start with
    "duplicate listener". All probes stay bound until every port is chosen."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((HOST, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


@dataclass(frozen=True)
class Account:
    """The system user a server process runs as."""

    name: str
    uid: int
    gid: int

    @classmethod
    def current(cls) -> Account:
        return cls(pwd.getpwuid(os.getuid()).pw_name, os.getuid(), os.getgid())

    @classmethod
    def system(cls, name: str, what: str, package: str) -> Account:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            reason = f"system user {name!r} missing (install Debian package {package})"
            raise ServerUnavailable(what, reason) from None
        return cls(name, entry.pw_uid, entry.pw_gid)

    def popen_kwargs(self) -> dict[str, Any]:
        """Arguments for subprocess.Popen that drop root privileges to this account (no-op otherwise)."""
        if os.geteuid() != 0 or self.uid == 0:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def server_dir(tmpdir: Path, prefix: str) -> tuple[Path, bool]:
    """A directory other users can traverse: ``tmpdir`` itself, or a fresh one under /tmp.

    Returns the directory and whether it is a private one that ``close()`` must delete.
    """
    tmpdir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or all(p.stat().st_mode & stat.S_IXOTH for p in [tmpdir, *tmpdir.parents]):
        return tmpdir, False
    private = Path(tempfile.mkdtemp(prefix=prefix))
    private.chmod(0o755)
    link = tmpdir / "server-dir"
    link.unlink(missing_ok=True)
    link.symlink_to(private)
    return private, True


def chown_tree(path: Path, account: Account) -> None:
    if os.geteuid() == 0:
        os.chown(path, account.uid, account.gid)
        for child in path.rglob("*"):
            os.chown(child, account.uid, account.gid, follow_symlinks=False)


def terminate(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float = 30.0) -> None:
    """Send ``sig`` and wait; SIGKILL if the process outlives ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- PostgreSQL


class LocalServer:
    """What the throw-away servers share: a process, a private directory, restart and clean-up."""

    STOP_SIGNAL = signal.SIGTERM
    LOGS: tuple[str, ...] = ()

    def __init__(self) -> None:
        self.host = HOST
        self.port = 0
        self.root: Path | None = None
        self._tmpdir: Path | None = None
        self._private = False
        self._proc: subprocess.Popen[bytes] | None = None

    def _launch(self) -> None:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        terminate(self._proc, self.STOP_SIGNAL)

    def restart(self) -> None:
        """Stop (if running) and start again on the same port(s) with the same data."""
        self.stop()
        self._launch()

    def ensure_running(self) -> None:
        """Start the server again if a test left it stopped."""
        if not self.running and self.root is not None:
            self._launch()

    def close(self) -> None:
        """Stop for good, copy the logs next to the pytest tmp dir and delete a private data dir."""
        self.stop()
        if self._private and self.root is not None and self._tmpdir is not None:
            for name in self.LOGS:
                if (self.root / name).exists():
                    shutil.copy(self.root / name, self._tmpdir / name)
            shutil.rmtree(self.root, ignore_errors=True)


class PostgresServer(LocalServer):
    """A throw-away PostgreSQL cluster: initdb into a temp dir, postgres on 127.0.0.1:PORT."""

    WHAT = "PostgreSQL server"
    LOGS = ("postgres.log",)

    def __init__(self) -> None:
        super().__init__()
        self.user = ""
        self._account: Account | None = None
        self._bindir = Path()

    @staticmethod
    def find_bindir() -> Path:
        """The directory of initdb/postgres: ``pg_config --bindir`` or /usr/lib/postgresql/*/bin."""
        candidates: list[Path] = []
        if pg_config := shutil.which("pg_config"):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
            candidates.append(Path(out.stdout.strip()))
        versions = glob.glob("/usr/lib/postgresql/*/bin")
        candidates += sorted((Path(p) for p in versions), key=lambda p: int(p.parent.name), reverse=True)
        for bindir in candidates:
            if (bindir / "postgres").is_file() and (bindir / "initdb").is_file():
                return bindir
        raise ServerUnavailable(
            PostgresServer.WHAT,
            "/usr/lib/postgresql/*/bin/postgres missing (install Debian package postgresql)",
        )

    def start(self, tmpdir: Path) -> None:
        """Create the cluster in ``tmpdir`` and start the server."""
        bindir = self.find_bindir()
        self._account = (
            Account.system("postgres", self.WHAT, "postgresql") if os.geteuid() == 0 else Account.current()
        )
        self.user = self._account.name
        self._tmpdir = tmpdir
        self.root, self._private = server_dir(tmpdir, "maild-pg-")
        (self.root / "sock").mkdir()
        chown_tree(self.root, self._account)
        initdb = [
            str(bindir / "initdb"), "-D", str(self.root / "data"), "-U", self.user, "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        ]  # fmt: skip
        kwargs = self._account.popen_kwargs()
        done = subprocess.run(initdb, capture_output=True, text=True, check=False, **kwargs)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        (self.root / "data" / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 trust\n"
        )
        self._bindir = bindir
        self.port = free_port()
        self._launch()

    def _launch(self) -> None:
        assert self.root is not None and self._account is not None
        cmd = [
            str(self._bindir / "postgres"), "-D", str(self.root / "data"), "-p", str(self.port),
            "-k", str(self.root / "sock"), "-c", f"listen_addresses={HOST}", "-c", "fsync=on",
            "-c", "synchronous_commit=on", "-c", "full_page_writes=on", "-c", "max_connections=200",
        ]  # fmt: skip
        with open(self.root / "postgres.log", "ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                **self._account.popen_kwargs(),
            )  # fmt: skip
        self._wait_ready()

    def _wait_ready(self) -> None:
        import psycopg

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self._proc is not None and self.root is not None
            if self._proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self._proc.returncode}:\n{self._log_tail()}")
            try:
                psycopg.connect(self._dsn("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    message = f"postgres not ready after {START_TIMEOUT}s:\n{self._log_tail()}"
                    raise RuntimeError(message) from exc
                time.sleep(0.1)

    def _log_tail(self) -> str:
        return log_tail(self.root / "postgres.log") if self.root else ""

    def _dsn(self, dbname: str) -> str:
        return f"host={HOST} port={self.port} user={self.user} dbname={dbname}"

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (SIGINT, clean) or ``immediate`` (SIGQUIT, crash recovery next start)."""
        terminate(self._proc, {"fast": signal.SIGINT, "immediate": signal.SIGQUIT}[mode])

    def url(self, name: str) -> str:
        """SQLAlchemy URL of database ``name`` on this server."""
        return f"postgresql+psycopg://{self.user}@{HOST}:{self.port}/{name}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its SQLAlchemy URL."""
        self._admin(f'CREATE DATABASE "{_identifier(name)}"')
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name``, disconnecting anyone still connected to it."""
        self._admin(f'DROP DATABASE IF EXISTS "{_identifier(name)}" WITH (FORCE)')

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            conn.execute(sql.encode())


def _identifier(name: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
        raise ValueError(f"bad database name {name!r}")
    return name


# --------------------------------------------------------------------------- Dovecot

DOVECOT_CONF = """\
# Written by tests/servers.py for Dovecot {version}; see DovecotServer.
protocols = imap
listen = {host}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
instance_name = maild-test-{port}
default_login_user = {login_user}
default_internal_user = {internal_user}
{internal_group}
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
last_valid_gid = {gid}
auth_mechanisms = plain login
auth_verbose = yes
auth_failure_delay = 0
disable_plaintext_auth = no
ssl = {ssl}
{ssl_files}
mail_location = maildir:{root}/mail/%u
protocol imap {{
  mail_max_userip_connections = 100
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {root}/users
}}
{unchroot}
service imap-login {{
  inet_listener imap {{
    address = {host}
    port = {port}
  }}
  inet_listener imaps {{
    address = {host}
    port = {tls_port}
    ssl = yes
  }}
}}
"""


# Not root: chroot() is not permitted, so every service that chroots by default must not.
UNCHROOT = "\n".join(
    f"service {name} {{\n  chroot =\n}}"
    for name in ("imap-login", "imap-urlauth-login", "anvil", "ipc", "old-stats", "aggregator")
)


def _dovecot_binary() -> str:
    found = shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/usr/local/sbin")
    imap = [*glob.glob("/usr/lib/dovecot/imap"), *glob.glob("/usr/libexec/dovecot/imap")]
    if found is None or not imap:
        missing = "dovecot binary" if found is None else "/usr/lib/dovecot/imap"
        reason = f"{missing} missing (install Debian package dovecot-imapd)"
        raise ServerUnavailable(DovecotServer.WHAT, reason)
    return found


class DovecotServer(LocalServer):
    """A throw-away Dovecot 2.3 IMAP server (``dovecot -F``) with passwd-file users and maildirs.

    ``pool_size`` users are written before start so ``new_user()`` is instant; ``add_user()``
    works while running but takes up to a second to become visible.
    """

    WHAT = "Dovecot IMAP server"
    LOGS = ("dovecot.log", "dovecot.stdout", "dovecot.conf")  # SIGTERM to the master stops its children

    def __init__(self, *, tls: bool = False, pool_size: int = 200) -> None:
        super().__init__()
        self.pool_size = pool_size
        self._pool: list[tuple[str, str]] = []
        self.tls = tls
        self.tls_port = 0
        self.cert_path: Path | None = None
        self.version = ""
        self._mail: Account | None = None
        self._binary = "dovecot"
        self._lock = threading.Lock()

    def start(self, tmpdir: Path) -> None:
        """Write the config into ``tmpdir`` and start Dovecot in the foreground."""
        self._binary = _dovecot_binary()
        out = subprocess.run([self._binary, "--version"], capture_output=True, text=True, check=False)
        self.version = out.stdout.strip().split(" ")[0]
        if not self.version.startswith("2.3."):
            reason = f"Dovecot {self.version!r} found; the harness writes 2.3 config"
            raise ServerUnavailable(self.WHAT, reason)
        root = os.geteuid() == 0
        self._mail = Account.system("nobody", self.WHAT, "base-passwd") if root else Account.current()
        if root:  # Debian's dovecot-core creates both accounts
            login = Account.system("dovenull", self.WHAT, "dovecot-core").name
            internal = Account.system("dovecot", self.WHAT, "dovecot-core").name
        else:  # everything runs as us, and unix sockets get our group
            login = internal = Account.current().name
        self._tmpdir = tmpdir
        self.root, self._private = server_dir(tmpdir, "maild-dovecot-")
        for sub in ("run", "state", "mail", "home"):
            (self.root / sub).mkdir()
        for sub in ("mail", "home"):
            chown_tree(self.root / sub, self._mail)
        (self.root / "users").touch(mode=0o644)
        self._pool = [(f"u{secrets.token_hex(5)}", secrets.token_hex(8)) for _ in range(self.pool_size)]
        self._write_users(self._pool)
        self.port, self.tls_port = free_ports(2) if self.tls else (free_port(), 0)
        ssl_files = self._make_cert() if self.tls else ""
        conf = DOVECOT_CONF.format(
            version=self.version, host=HOST, root=self.root, port=self.port, tls_port=self.tls_port,
            login_user=login, internal_user=internal, uid=self._mail.uid, gid=self._mail.gid,
            ssl="yes" if self.tls else "no", ssl_files=ssl_files, unchroot="" if root else UNCHROOT,
            internal_group="" if root else f"default_internal_group = {grp.getgrgid(os.getgid()).gr_name}",
        )  # fmt: skip
        (self.root / "dovecot.conf").write_text(conf)
        self._launch()

    def _make_cert(self) -> str:
        assert self.root is not None
        openssl = shutil.which("openssl")
        if openssl is None:
            raise ServerUnavailable("openssl", "openssl binary missing (install Debian package openssl)")
        self.cert_path, key = self.root / "cert.pem", self.root / "key.pem"
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
             "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
             "-keyout", str(key), "-out", str(self.cert_path)],
            check=True, capture_output=True,
        )  # fmt: skip
        return f"ssl_cert = <{self.cert_path}\nssl_key = <{key}"

    def _launch(self) -> None:
        assert self.root is not None
        with open(self.root / "dovecot.stdout", "ab") as log:
            self._proc = subprocess.Popen(
                [self._binary, "-F", "-c", str(self.root / "dovecot.conf")],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while not self._greets():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                logs = log_tail(self.root / "dovecot.stdout") + "\n" + log_tail(self.root / "dovecot.log")
                raise RuntimeError(f"dovecot did not start (exit {self._proc.returncode}):\n{logs}")
            time.sleep(0.1)

    def _greets(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=2) as sock:
                return sock.recv(200).startswith(b"* OK")
        except OSError:
            return False

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts this server's self-signed certificate (``tls=True`` only)."""
        assert self.cert_path is not None, "DovecotServer(tls=True) needed"
        return ssl.create_default_context(cafile=str(self.cert_path))

    def add_user(self, name: str, password: str) -> None:
        """Add an IMAP user to the running server and return once Dovecot can see it.

        passwd-file is re-read when it changes, but checked at most once per second
        (db-passwd-file.c ``passwd_file_sync``), so this waits into the next second.
        """
        self._write_users([(name, password)])
        time.sleep(1.05 - time.time() % 1)

    def new_user(self) -> tuple[str, str]:
        """A never-used (name, password): from the pool written before start, else ``add_user``."""
        with self._lock:
            if self._pool:
                return self._pool.pop()
        name, password = f"u{secrets.token_hex(5)}", secrets.token_hex(8)
        self.add_user(name, password)
        return name, password

    def _write_users(self, users: list[tuple[str, str]]) -> None:
        assert self.root is not None and self._mail is not None
        lines = []
        for name, password in users:
            for value in (name, password):
                if not value or any(c in value for c in ":\r\n\0"):
                    raise ValueError(f"unusable user name or password {value!r}")
            home = self.root / "home" / name
            lines.append(f"{name}:{{PLAIN}}{password}:{self._mail.uid}:{self._mail.gid}::{home}::\n")
        with self._lock, open(self.root / "users", "a") as file:
            file.writelines(lines)

    def maildir(self, user: str) -> Path:
        """Where ``user``'s Maildir lives (created by Dovecot on first login)."""
        assert self.root is not None
        return self.root / "mail" / user

    def imap_url(self, user: str, password: str, mailbox: str = "INBOX", *, tls: bool = False) -> str:
        """``imap://user:pass@127.0.0.1:PORT/INBOX`` (or ``imaps://`` on the TLS port)."""
        scheme, port = ("imaps", self.tls_port) if tls else ("imap", self.port)
        return f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{HOST}:{port}/{quote(mailbox)}"


# --------------------------------------------------------------------------- SMTP capture relay


@dataclass(frozen=True)
class CapturedMessage:
    """One DATA transaction the relay saw, with the reply it gave."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    raw: bytes
    message: EmailMessage
    mail_options: tuple[str, ...]
    reply: str
    peer: Any = None  # the client's (host, port): one value per SMTP connection


DROP = "DROP"  # a DATA "reply" that closes the connection without answering (RFC 5321 §3.8)


class _Handler:
    """aiosmtpd handler: every reply comes from the owning relay's script."""

    def __init__(self, relay: CaptureRelay) -> None:
        self.relay = relay

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self.relay._scripted("MAIL")
        if reply is not None:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        reply = self.relay._scripted("RCPT", address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw: bytes = envelope.original_content
        delay, reply = self.relay._data_action(raw)
        if delay:
            await asyncio.sleep(delay)
        if reply == DROP:
            server.transport.close()
        message = message_from_bytes(raw, policy=policy.default)
        assert isinstance(message, EmailMessage)
        self.relay._record(
            CapturedMessage(envelope.mail_from, tuple(envelope.rcpt_tos), raw, message,
                            tuple(envelope.mail_options), reply, session.peer)
        )  # fmt: skip
        return reply


class CaptureRelay:
    """An SMTP relay on 127.0.0.1 that captures what it accepts and fails when told to.

    Faults: ``fail_next(n, reply, at=...)`` answers the next n MAIL/RCPT/DATA commands with
    ``reply``; ``reject_rcpt`` refuses one address until ``clear()``; ``set_data_reply`` changes
    the DATA answer for good; ``drop_next(n)`` closes the connection after the final dot without a
    reply; ``delay_next(n, seconds)`` stalls before answering DATA; ``reject_bare_lf`` refuses DATA
    with a bare LF or CR. ``stop()``/``start()`` take the relay down and up on the same port.
    """

    def __init__(self, port: int = 0) -> None:
        self.host = HOST
        self.port = port or free_port()
        self.reject_bare_lf = False
        self._cond = threading.Condition()
        self._controller: Controller | None = None
        self.clear()

    def start(self) -> None:
        assert self._controller is None, "relay already running"
        self._controller = Controller(
            _Handler(self), hostname=HOST, port=self.port, ready_timeout=10,
            server_hostname="relay.test", enable_SMTPUTF8=True,
        )  # fmt: skip
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    @property
    def running(self) -> bool:
        return self._controller is not None

    def __enter__(self) -> CaptureRelay:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def clear(self) -> None:
        """Forget captured messages and every scripted fault."""
        with self._cond:
            self._accepted: list[CapturedMessage] = []
            self._refused: list[CapturedMessage] = []
            self._script: dict[str, deque[str]] = {"MAIL": deque(), "RCPT": deque(), "DATA": deque()}
            self._delays: deque[float] = deque()
            self._rejected_rcpts: dict[str, str] = {}
            self._data_reply = "250 OK"
            self.reject_bare_lf = False

    def fail_next(self, n: int, reply: str = "451 4.3.0 try later", at: str = "DATA") -> None:
        """Answer the next ``n`` commands ``at`` (MAIL, RCPT or DATA) with ``reply``."""
        with self._cond:
            self._script[at.upper()].extend([reply] * n)

    def drop_next(self, n: int = 1) -> None:
        """Close the connection after the next ``n`` DATA bodies without replying."""
        self.fail_next(n, DROP)

    def delay_next(self, n: int, seconds: float) -> None:
        """Wait ``seconds`` before answering each of the next ``n`` DATA commands."""
        with self._cond:
            self._delays.extend([seconds] * n)

    def reject_rcpt(self, address: str, reply: str = "550 5.1.1 no such user") -> None:
        """Refuse RCPT TO ``address`` (case-insensitive) with ``reply`` until ``clear()``."""
        with self._cond:
            self._rejected_rcpts[address.lower()] = reply

    def set_data_reply(self, reply: str | None) -> None:
        """Answer every DATA with ``reply`` from now on; ``None`` restores ``250 OK``."""
        with self._cond:
            self._data_reply = reply or "250 OK"

    def _scripted(self, stage: str, address: str = "") -> str | None:
        with self._cond:
            if stage == "RCPT" and address.lower() in self._rejected_rcpts:
                return self._rejected_rcpts[address.lower()]
            queue = self._script[stage]
            return queue.popleft() if queue else None

    def _data_action(self, raw: bytes) -> tuple[float, str]:
        with self._cond:
            delay = self._delays.popleft() if self._delays else 0.0
            reply = self._scripted("DATA") or self._data_reply
            if self.reject_bare_lf and re.search(rb"(?<!\r)\n|\r(?!\n)", raw):
                reply = "550 5.6.2 bare LF or CR not allowed"
            return delay, reply

    def _record(self, captured: CapturedMessage) -> None:
        with self._cond:
            (self._accepted if captured.reply.startswith("2") else self._refused).append(captured)
            self._cond.notify_all()

    @property
    def messages(self) -> list[CapturedMessage]:
        """Messages answered with 2yz, oldest first (a copy)."""
        with self._cond:
            return list(self._accepted)

    @property
    def refused(self) -> list[CapturedMessage]:
        """DATA transactions answered with a fault or dropped, oldest first (a copy)."""
        with self._cond:
            return list(self._refused)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[CapturedMessage]:
        """Block until at least ``count`` messages were accepted; AssertionError on timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._accepted) >= count, timeout):
                got = len(self._accepted)
                raise AssertionError(f"relay got {got} message(s), wanted {count} in {timeout}s")
            return list(self._accepted)
