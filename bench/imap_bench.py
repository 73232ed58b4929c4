# SPDX-License-Identifier: MIT
"""IMAP intake throughput: fill a mailbox on a throw-away Dovecot and time one drain.

Run from the repository root: ``python bench/imap_bench.py [--count 2000] [--batch 100]``. It needs
the Debian package dovecot-imapd (it reuses the test harness in tests/servers.py) and prints how
long APPEND and the drain took, and messages per second. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from helpers import Desk, build_mail, write_config  # noqa: E402
from imapclient import IMAPClient  # noqa: E402
from servers import DovecotServer  # noqa: E402

from maild.ingest.imap import ImapPoller  # noqa: E402


def fill(server: DovecotServer, name: str, password: str, count: int) -> float:
    """APPEND ``count`` distinct mails from an MPOC; returns the seconds it took."""
    started = time.monotonic()
    with IMAPClient(server.host, port=server.port, ssl=False, timeout=30) as client:
        client.login(name, password)
        for n in range(count):
            data = build_mail(subject=f"Bench problem {n}", message_id=f"<bench-{n}@initech.example>",
                              body=f"Problem {n}.\nX-Test-Nonce bench-{n}\n" + "Details line.\n" * 40)
            client.append("INBOX", data)
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="maild-imap-bench-") as tmp:
        root = Path(tmp)
        server = DovecotServer(pool_size=1)
        server.start(root / "dovecot")
        try:
            name, password = server.new_user()
            appended = fill(server, name, password, args.count)
            print(f"appended {args.count} messages in {appended:.1f} s")
            cfg = write_config(root, database_url=f"sqlite:///{root}/maild.db",
                               extra=f'[imap]\nurl = "{server.imap_url(name, password)}"\nbatch = {args.batch}\n')
            desk = Desk(cfg)
            desk.import_directory(REPO / "examples" / "directory.toml")
            poller = ImapPoller(desk.factory, desk.settings)
            started = time.monotonic()
            results = poller.poll_once()
            took = time.monotonic() - started
            poller.close()
            desk.close()
        finally:
            server.close()
    outcomes: dict[str, int] = {}
    for r in results:
        outcomes[r.outcome.value] = outcomes.get(r.outcome.value, 0) + 1
    print(f"drained {len(results)} messages in {took:.1f} s: {len(results) / took:.1f} messages/s {outcomes}")
    return 0 if len(results) == args.count else 1


if __name__ == "__main__":
    sys.exit(main())
