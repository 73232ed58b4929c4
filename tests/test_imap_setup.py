# SPDX-License-Identifier: MIT
"""IMAP set-up: the mailbox URL, TLS without downgrade, CR/LF refusal (S4), OAuth tokens, silent mailboxes."""

from __future__ import annotations

import socketserver
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import Desk, build_mail, mt, write_config
from imapclient import IMAPClient
from plugin_servers import ImapUser
from servers import DovecotServer, ServerUnavailable, require

from maild.db import transaction
from maild.ingest.imap import RULES, ImapPoller
from maild.ingest.imap_auth import ImapAuthError, ImapConfigError, TokenSource, parse_url

REPO = Path(__file__).resolve().parents[1]


def make_desk(tmp_path: Path, imap: str) -> Desk:
    tmp_path.mkdir(exist_ok=True)
    cfg = write_config(tmp_path, database_url=f"sqlite:///{tmp_path}/maild.db", extra=f"[imap]\n{imap}\n")
    desk = Desk(cfg)
    desk.import_directory(REPO / "examples" / "directory.toml")
    return desk


def alerts(desk: Desk) -> list[dict[str, Any]]:
    return [o for o in desk.cli_json("outbox", "list", "--json") if o["template"] == "staff_alert"]


def inbox_count(user: ImapUser) -> int:
    with IMAPClient(user.host, port=user.port, ssl=False, timeout=10) as client:
        client.login(user.name, user.password)
        return int(client.select_folder("INBOX", readonly=True)[b"EXISTS"])


def test_url_parts_and_defaults() -> None:
    # The CONTRACT's URL form: user, password, host, port and mailbox, with TLS by scheme.
    mb = parse_url("imaps://help%40corp.example:p%40ss@mail.corp.example/Support%20Desk?kind=macd")
    assert (mb.user, mb.password, mb.host, mb.port, mb.mailbox, mb.tls, mb.kind) == (
        "help@corp.example", "p@ss", "mail.corp.example", 993, "Support Desk", "implicit", "macd")
    assert mb.key == "help@corp.example@mail.corp.example:993/Support Desk"
    assert "p@ss" not in repr(mb)
    plain = parse_url("imap://u:p@mail.corp.example")
    assert (plain.port, plain.mailbox, plain.tls) == (143, "INBOX", "opportunistic")


@pytest.mark.parametrize("url", [
    "imap://u:p@mail.corp.example/INBOX?tls=none",  # opting out of TLS is for loopback tests only
    "imaps://u:p@mail.corp.example/INBOX?tls=none",
    "pop3://u:p@mail.corp.example/",
    "imap://mail.corp.example/INBOX",  # no user
    "imap://u:p@127.0.0.1/INBOX?tls=maybe",
    "imap://u:p@127.0.0.1/INBOX%0D%0AX1%20DELETE%20INBOX",  # S4: CR/LF smuggled into the mailbox name
    "imap://u:p%0D%0AX1%20LOGOUT@127.0.0.1/INBOX",
])
def test_unusable_urls_are_refused(url: str) -> None:
    # A URL that could downgrade TLS or inject a command is refused before any connection.
    with pytest.raises(ImapConfigError):
        parse_url(url)


def test_crlf_in_folder_name_is_refused_before_any_command(tmp_path: Path, imap_user: ImapUser) -> None:
    # S4: a processed-folder name carrying "\r\nX1 ..." never reaches the server; the mailbox is unchanged.
    with IMAPClient(imap_user.host, port=imap_user.port, ssl=False, timeout=10) as client:
        client.login(imap_user.name, imap_user.password)
        client.append("INBOX", build_mail())
    desk = make_desk(tmp_path, f'url = "{imap_user.url}"\nprocessed_folder = "Done\\r\\nX1 EXPUNGE"')
    with pytest.raises(ImapConfigError):
        ImapPoller(desk.factory, desk.settings)
    assert inbox_count(imap_user) == 1
    assert desk.cases() == []
    desk.close()


def test_required_starttls_missing_is_an_error(tmp_path: Path, imap_user: ImapUser) -> None:
    # ?tls=starttls against a server without STARTTLS: refuse, never continue in clear.
    desk = make_desk(tmp_path, f'url = "{imap_user.url}?tls=starttls"')
    with pytest.raises(ImapConfigError, match="STARTTLS"):
        ImapPoller(desk.factory, desk.settings).poll_once()
    desk.close()


@pytest.fixture(scope="module")
def tls_dovecot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DovecotServer]:
    """A second Dovecot with a self-signed certificate: imaps on its own port, STARTTLS on the plain one."""
    server = DovecotServer(tls=True, pool_size=10)
    try:
        server.start(tmp_path_factory.mktemp("dovecot-tls"))
    except ServerUnavailable as missing:
        require(missing.what, missing.reason)
    yield server
    server.close()


@pytest.mark.parametrize("tls", [True, False], ids=["imaps", "starttls"])
def test_tls_with_trusted_ca_works_and_untrusted_fails(tmp_path: Path, tls_dovecot: DovecotServer,
                                                       tls: bool) -> None:
    # Verified TLS (implicit, or STARTTLS because the server offers it) carries intake; with a certificate
    # we do not trust the poller fails instead of falling back to clear text.
    name, password = tls_dovecot.new_user()
    url = tls_dovecot.imap_url(name, password, tls=tls)
    with IMAPClient(tls_dovecot.host, port=tls_dovecot.tls_port, ssl_context=tls_dovecot.ssl_context()) as client:
        client.login(name, password)
        client.append("INBOX", build_mail())
    untrusted = make_desk(tmp_path / "untrusted", f'url = "{url}"')
    with pytest.raises(ssl.SSLError):
        ImapPoller(untrusted.factory, untrusted.settings).poll_once()
    untrusted.close()
    desk = make_desk(tmp_path, f'url = "{url}"\nca_file = "{tls_dovecot.cert_path}"')
    poller = ImapPoller(desk.factory, desk.settings)
    assert [r.outcome.value for r in poller.poll_once()] == ["new-case"]
    assert isinstance(poller.connected().socket(), ssl.SSLSocket)
    poller.close()
    desk.close()


def test_oauth_token_is_cached_for_its_ttl_and_reread_after(tmp_path: Path) -> None:
    # XOAUTH2 tokens come from a command; it runs once per TTL, again after a refusal, and its failure is an
    # authentication error (no token in any message).
    counter = tmp_path / "count"
    script = (f"import pathlib; p = pathlib.Path({str(counter)!r}); n = int(p.read_text() or 0) + 1 "
              "if p.exists() else 1; p.write_text(str(n)); print(f'token-{n}')")
    source = TokenSource(f"{sys.executable} -c \"{script}\"", None, ttl=0.5)
    assert source.get() == "token-1"
    assert source.get() == "token-1"
    time.sleep(0.6)
    assert source.get() == "token-2"
    source.invalidate()
    assert source.get() == "token-3"
    with pytest.raises(ImapAuthError):
        TokenSource(f"{sys.executable} -c \"raise SystemExit(3)\"", None).get()
    bad = tmp_path / "token"
    bad.write_text("abc\r\nX1 LOGOUT\n")
    with pytest.raises(ImapConfigError):
        TokenSource("", bad).get()


def test_silent_mailbox_alerts_once_per_silence(tmp_path: Path, imap_user: ImapUser) -> None:
    # No mail for longer than silent_alert_hours: staff are told once; after mail and a new silence, again.
    desk = make_desk(tmp_path, f'url = "{imap_user.url}"\nsilent_alert_hours = 2')
    t0 = mt(2026, 11, 20, 8, 0)
    poller = ImapPoller(desk.factory, desk.settings)
    poller.poll_once(now=t0)

    def tick(hours: float) -> None:
        with transaction(desk.factory) as session:
            for rule in RULES:
                rule(session, desk.settings, t0 + timedelta(hours=hours))

    tick(1)
    assert alerts(desk) == []
    tick(3)
    tick(4)
    first = alerts(desk)
    assert first and {a["subject"] for a in first} == {"[maild] No mail in INBOX for 2 hours"}
    with IMAPClient(imap_user.host, port=imap_user.port, ssl=False, timeout=10) as client:
        client.login(imap_user.name, imap_user.password)
        client.append("INBOX", build_mail())
    poller.poll_once(now=t0 + timedelta(hours=5))
    poller.close()
    tick(6)
    assert len(alerts(desk)) == len(first)
    tick(8)
    assert len(alerts(desk)) == 2 * len(first)
    desk.close()


def test_mailbox_kind_sets_the_case_kind(tmp_path: Path, imap_user: ImapUser) -> None:
    # A mailbox URL with ?kind=billing stands for the billing intake address: its mail opens billing cases.
    with IMAPClient(imap_user.host, port=imap_user.port, ssl=False, timeout=10) as client:
        client.login(imap_user.name, imap_user.password)
        client.append("INBOX", build_mail(subject="Invoice question"))
    desk = make_desk(tmp_path, f'url = "{imap_user.url}?kind=billing"')
    poller = ImapPoller(desk.factory, desk.settings)
    poller.poll_once()
    poller.close()
    assert [(c["subject"], c["kind"]) for c in desk.cases()] == [("Invoice question", "billing")]
    desk.close()


class HostileImap(socketserver.StreamRequestHandler):
    """An IMAP server that announces a 10 GB literal in answer to the first FETCH (RELIABILITY R8)."""

    def handle(self) -> None:
        self.wfile.write(b"* OK [CAPABILITY IMAP4rev1] hostile ready\r\n")
        for line in self.rfile:
            tag, _, rest = line.decode().partition(" ")
            command = [*rest.strip().split(" ", 2), ""][:2]
            if command[0].upper() == "UID" and command[1].upper() == "SEARCH":
                self.wfile.write(b"* SEARCH 1\r\n")
            elif command[0].upper() == "UID" and command[1].upper() == "FETCH":
                self.wfile.write(b"* 1 FETCH (UID 1 RFC822.SIZE 10 BODY[] {9999999999}\r\n")
                self.wfile.flush()
                time.sleep(1)
                return
            elif command[0].upper() == "LIST":
                self.wfile.write(b'* LIST () "." x\r\n')
            elif command[0].upper() == "CAPABILITY":
                self.wfile.write(b"* CAPABILITY IMAP4rev1\r\n")
            elif command[0].upper() == "SELECT":
                self.wfile.write(b"* 0 EXISTS\r\n* OK [UIDVALIDITY 7] ok\r\n")
            self.wfile.write(f"{tag} OK done\r\n".encode())


def test_hostile_literal_is_refused_without_reading_it(tmp_path: Path) -> None:
    # R8: a server that announces a 10 GB literal gets its connection dropped; nothing is stored.
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), HostileImap)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        desk = make_desk(tmp_path, f'url = "imap://u:p@127.0.0.1:{server.server_address[1]}/INBOX?tls=none"')
        with pytest.raises(IMAPClient.AbortError, match="cap"):
            ImapPoller(desk.factory, desk.settings).poll_once()
        assert desk.cases() == [] and desk.held() == []
        desk.close()
    finally:
        server.shutdown()
        server.server_close()
