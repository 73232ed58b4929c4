# SPDX-License-Identifier: MIT
"""IMAP intake: poll a mailbox (IDLE where offered) and feed each new message to the pipeline.

Always UIDs, never sequence numbers (RFC 3501 §2.3.1.1). Messages are fetched with ``BODY.PEEK[]`` so
nothing is marked ``\\Seen`` before the commit; only after ``run_ingest`` has committed is a message
flagged and moved to the processed (or, when unprocessable, the failed) folder, with RFC 6851 MOVE
or else COPY + ``\\Deleted`` + UID EXPUNGE (RFC 4315), never a plain EXPUNGE that would also remove
other people's deleted mail (RELIABILITY rule 3). A crash anywhere re-fetches the message; the
pipeline's ``source_key`` (mailbox, UIDVALIDITY, UID) and content-hash dedupe absorb the copy
(rows D6, D7); a UIDVALIDITY change resets the cursor and alerts the operator (D8).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from imapclient import IMAPClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from tenacity import RetryCallState, Retrying, retry_if_not_exception_type, sleep_using_event, wait_exponential

from maild import clock
from maild.config import Settings
from maild.db import transaction
from maild.enums import Outcome
from maild.faults import fault_point
from maild.ingest.imap_auth import (
    ImapAuthError,
    ImapConfigError,
    MailboxUrl,
    TokenSource,
    alert,
    check_safe,
    connect,
    discard,
    mailbox_urls,
    parse_url,
    report_auth_failure,
    silent_mailbox_rule,
)
from maild.ingest.pipeline import IngestResult, run_ingest
from maild.ingest.raw import RawMail
from maild.models import ImapState, RawMessage

log = logging.getLogger(__name__)

IDLE_CHECK = 2.0  # seconds per idle_check, so a stop request is noticed promptly (SIGTERM, D9)
FETCH_BYTES = 32 * 1024 * 1024  # bodies fetched per round trip (one message more if it alone is bigger)
SEEN, DELETED = b"\\Seen", b"\\Deleted"
_wait_connection = wait_exponential(multiplier=1, min=1, max=60)
_wait_auth = wait_exponential(multiplier=10, min=10, max=900)  # a refused login gets far fewer tries


class ImapPoller:
    """One mailbox: ``poll_once`` drains it once; ``run`` loops (IDLE or poll) until told to stop."""

    def __init__(self, factory: sessionmaker[Session], settings: Settings, mailbox_url: str | None = None,
                 kind: str | None = None) -> None:
        self.factory, self.settings = factory, settings
        self.mb: MailboxUrl = parse_url(mailbox_url or settings.imap.url.split()[0])
        self.kind = kind or self.mb.kind or settings.imap.kind
        self.processed = check_safe("[imap] processed_folder", settings.imap.processed_folder)
        self.failed = check_safe("[imap] failed_folder", settings.imap.failed_folder)
        # The mailbox stands for one intake address: a non-default kind becomes the envelope recipient,
        # which the pipeline reads before To/Cc (pipeline.intake_kind).
        rcpt = [a for a, k in settings.intake_kinds.items() if k == self.kind and k != "technical"]
        self.rcpt_tos = tuple(rcpt[:1])
        self.tokens = TokenSource.from_settings(settings)
        self.stop_event = threading.Event()
        self._client: IMAPClient | None = None
        self._uidvalidity = 0
        self.incomplete = False  # the last drain stopped on an ingest error: retry on the next poll

    # -- connection ------------------------------------------------------------------------------
    def connected(self, now: datetime | None = None) -> IMAPClient:
        """The open, selected connection, making one if needed."""
        if self._client is None:
            try:
                client = connect(self.mb, self.settings, self.tokens)
            except ImapAuthError as exc:
                report_auth_failure(self.factory, self.settings, self.mb, exc, now or clock.now())
                raise
            try:
                self._select(client, now or clock.now())
                idle = client.has_capability("IDLE")
            except BaseException:
                discard(client)
                raise
            self._client = client
            log.info("imap %s: connected (IDLE %s)", self.mb.key, "yes" if idle else "no")
        return self._client

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.logout()
            except Exception:  # already gone: nothing to tidy
                discard(client)

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            discard(client)

    def _select(self, client: IMAPClient, now: datetime) -> None:
        """SELECT the mailbox and reconcile UIDVALIDITY with the stored cursor (RFC 3501 §2.3.1.1)."""
        for folder in (self.processed, self.failed):
            if not client.folder_exists(folder):
                client.create_folder(folder)
        info = client.select_folder(self.mb.mailbox)
        uidvalidity = int(info[b"UIDVALIDITY"])
        with transaction(self.factory) as session:
            state = session.get(ImapState, self.mb.key)
            if state is None:
                session.add(ImapState(mailbox=self.mb.key, uidvalidity=uidvalidity, last_uid=0,
                                      last_message_at=now))
            elif state.uidvalidity != uidvalidity:
                log.warning("imap %s: UIDVALIDITY changed %s -> %s; rescanning the whole mailbox",
                            self.mb.key, state.uidvalidity, uidvalidity)
                alert(session, self.settings, now, key=f"imap-uidvalidity:{self.mb.tag}:{uidvalidity}",
                      title=f"IMAP mailbox {self.mb.mailbox} was recreated (UIDVALIDITY changed)",
                      detail=f"{self.mb.key}: UIDVALIDITY {state.uidvalidity} -> {uidvalidity}. maild rescans "
                             "the mailbox; messages it already has are recognised by content and not "
                             "processed twice.")
                state.uidvalidity, state.last_uid = uidvalidity, 0
        self._uidvalidity = uidvalidity

    # -- one drain -------------------------------------------------------------------------------
    def poll_once(self, now: datetime | None = None) -> list[IngestResult]:
        """Ingest every message above the cursor, batch by batch; returns their results."""
        client = self.connected(now)
        try:
            client.noop()  # let the server report new mail before we search (RFC 3501 §6.1.2)
            return self._drain(client, now)
        except (OSError, IMAPClient.Error):
            self._drop()
            raise

    def _last_uid(self) -> int:
        with transaction(self.factory) as session:
            state = session.get(ImapState, self.mb.key)
            return state.last_uid if state is not None else 0

    def _drain(self, client: IMAPClient, now: datetime | None) -> list[IngestResult]:
        results: list[IngestResult] = []
        self.incomplete = False
        while not self.stop_event.is_set():
            last = self._last_uid()
            # "n:*" always matches the highest UID even when it is below n (RFC 3501 §6.4.8): filter.
            uids = sorted(u for u in client.search(["UID", f"{last + 1}:*"]) if u > last)
            if not uids:
                break
            for start in range(0, len(uids), self.settings.imap.batch):
                if not self._batch(client, uids[start:start + self.settings.imap.batch], now, results):
                    return results
        return results

    def _batch(self, client: IMAPClient, uids: list[int], now: datetime | None,
               results: list[IngestResult]) -> bool:
        """One batch of UIDs in order; False when the drain must stop (stop request or ingest error)."""
        sizes = {uid: int(d[b"RFC822.SIZE"]) for uid, d in client.fetch(uids, ["RFC822.SIZE"]).items()}
        for group in _groups([u for u in uids if u in sizes], sizes, self.settings.smtp.max_message_size):
            if not self._group(client, group, sizes, now, results):
                return False
        return True

    def _group(self, client: IMAPClient, uids: list[int], sizes: dict[int, int], now: datetime | None,
               results: list[IngestResult]) -> bool:
        limit = self.settings.smtp.max_message_size
        wanted = [u for u in uids if sizes[u] <= limit]
        bodies = {u: d[b"BODY[]"] for u, d in client.fetch(wanted, ["BODY.PEEK[]"]).items()} if wanted else {}
        fault_point("after_fetch")
        done: dict[int, str] = {}  # uid -> destination folder, in commit order
        ok = True
        for uid in uids:
            if self.stop_event.is_set():  # finish what is committed, start nothing new (D9)
                ok = False
                break
            when = now or clock.now()
            if sizes[uid] > limit:
                self._too_big(uid, sizes[uid], when)
                done[uid] = self.failed
                continue
            if uid not in bodies:
                continue  # expunged by someone else since the search
            try:
                result = self._ingest(uid, bodies.pop(uid), when)
            except Exception:
                log.exception("imap %s: ingest of UID %s failed; left on the server for the next poll",
                              self.mb.key, uid)
                self.incomplete, ok = True, False
                break
            fault_point("after_commit_before_move")
            results.append(result)
            done[uid] = self.failed if self._unprocessable(result, uid) else self.processed
        self._file(client, done, now or clock.now())
        return ok and not self.stop_event.is_set()

    def _source_key(self, uid: int) -> str:
        return f"{self.mb.key}/{self._uidvalidity}/{uid}"

    def _ingest(self, uid: int, data: bytes, now: datetime) -> IngestResult:
        raw = RawMail(data=data, source="imap", source_key=self._source_key(uid), rcpt_tos=self.rcpt_tos,
                      received_at=now, extra={"imap_kind": self.kind})
        return run_ingest(self.factory, self.settings, raw, now=now)

    def _unprocessable(self, result: IngestResult, uid: int) -> bool:
        if result.outcome is Outcome.DUPLICATE:  # a re-fetch after a crash: look at the first verdict
            with transaction(self.factory) as session:
                row = session.scalars(select(RawMessage).where(
                    RawMessage.source_key == self._source_key(uid))).first()
                return row is not None and row.outcome == Outcome.HELD.value and row.reason.startswith(
                    "unprocessable")
        return result.outcome is Outcome.HELD and result.reason.startswith("unprocessable")

    def _too_big(self, uid: int, size: int, now: datetime) -> None:
        log.warning("imap %s: UID %s is %s bytes, over the %s-byte limit; moving it to %s unread",
                    self.mb.key, uid, size, self.settings.smtp.max_message_size, self.failed)
        with transaction(self.factory) as session:
            alert(session, self.settings, now, key=f"imap-too-big:{self.mb.tag}:{self._uidvalidity}:{uid}",
                  title=f"Oversized mail moved to {self.failed}",
                  detail=f"{self.mb.key} UID {uid} ({size} bytes) is over [smtp] max_message_size "
                         f"({self.settings.smtp.max_message_size}); it was not read and is in {self.failed}.")

    def _file(self, client: IMAPClient, done: dict[int, str], now: datetime) -> None:
        """After the commits: flag, move, then advance the cursor in its own small transaction."""
        if not done:
            return
        for folder in (self.processed, self.failed):
            uids = [u for u, f in done.items() if f == folder]
            if uids:
                self._move(client, uids, folder)
        with transaction(self.factory) as session:
            state = session.get(ImapState, self.mb.key)
            assert state is not None  # written by _select
            state.last_uid = max(state.last_uid, *done)
            state.last_message_at = now

    def _move(self, client: IMAPClient, uids: list[int], folder: str) -> None:
        if folder == self.processed:  # what lands in the failed folder stays unread: someone must look
            client.add_flags(uids, [SEEN], silent=True)
        if client.has_capability("MOVE"):
            client.move(uids, folder)  # RFC 6851: atomic
            return
        client.copy(uids, folder)
        client.add_flags(uids, [DELETED], silent=True)
        if client.has_capability("UIDPLUS"):
            client.uid_expunge(uids)  # RFC 4315 §2.1: only these UIDs
        else:
            log.warning("imap %s: no MOVE or UIDPLUS; UIDs %s stay flagged \\Deleted for the owner to expunge",
                        self.mb.key, uids)

    # -- the loop --------------------------------------------------------------------------------
    def run(self, stop_event: threading.Event) -> None:
        """Drain, then wait (IDLE or poll) and drain again, until ``stop_event``; reconnect with back-off.

        Never raises: every failure is logged and retried, refused logins and unsafe TLS set-ups with a
        long back-off, so a daemon thread survives a server restart, a DB outage or a credential fix.
        """
        self.stop_event = stop_event
        retrying = Retrying(sleep=sleep_using_event(stop_event), wait=self._backoff, reraise=True,
                            retry=retry_if_not_exception_type(_Stopped), before_sleep=self._log_retry)
        try:
            while not stop_event.is_set():
                try:
                    retrying(self._open_and_drain)
                    self._serve(stop_event)
                except _Stopped:
                    break
                except Exception as exc:
                    log.warning("imap %s: %s: %s; reconnecting", self.mb.key, type(exc).__name__, exc)
                    self._drop()
                    stop_event.wait(1.0)
        finally:
            self.close()

    def _open_and_drain(self) -> None:
        if self.stop_event.is_set():
            raise _Stopped
        try:
            self.poll_once()
        except BaseException:
            self._drop()
            raise

    def _backoff(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        slow = isinstance(exc, (ImapAuthError, ImapConfigError))  # an operator must act: don't hammer
        return (_wait_auth if slow else _wait_connection)(state)

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        level = logging.ERROR if isinstance(exc, ImapConfigError) else logging.WARNING
        log.log(level, "imap %s: %s: %s; retrying in %.0fs", self.mb.key, type(exc).__name__, exc, wait)

    def _serve(self, stop_event: threading.Event) -> None:
        while not stop_event.is_set():
            client = self.connected()
            if self.incomplete or not client.has_capability("IDLE"):
                stop_event.wait(self.settings.imap.poll_seconds)
            else:
                self._idle(client, stop_event)
            if not stop_event.is_set():
                self.poll_once()

    def _idle(self, client: IMAPClient, stop_event: threading.Event) -> None:
        """Wait in IDLE (RFC 2177) for new mail; re-issue it every idle_seconds (servers drop it at 30 min).

        IDLE also ends after poll_seconds, for a UID SEARCH: a message that arrived between the last
        search and the IDLE command may have been announced (EXISTS) before IDLE began, and then
        IDLE never mentions it again. The periodic search bounds that window to poll_seconds.
        """
        client.idle()
        imap = self.settings.imap
        deadline = time.monotonic() + min(imap.idle_seconds, 29 * 60, max(imap.poll_seconds, 1))
        try:
            while not stop_event.is_set() and time.monotonic() < deadline:
                started = time.monotonic()
                responses: list[Any] = client.idle_check(timeout=IDLE_CHECK)
                if any(r[:1] == (b"BYE",) for r in responses):
                    raise IMAPClient.AbortError("server said BYE")
                if any(len(r) > 1 and r[1] == b"EXISTS" for r in responses):
                    break
                if not responses and time.monotonic() - started < IDLE_CHECK / 2:
                    break  # woke early with nothing: possibly EOF, which DONE will reveal
        finally:
            client.idle_done()


class _Stopped(Exception):
    """The stop event was set between reconnect attempts."""


def _groups(uids: list[int], sizes: dict[int, int], limit: int) -> Iterator[list[int]]:
    """UIDs in order, grouped so one round trip fetches at most FETCH_BYTES (oversized ones are not fetched)."""
    group: list[int] = []
    total = 0
    for uid in uids:
        size = sizes[uid] if sizes[uid] <= limit else 0
        if group and total + size > FETCH_BYTES:
            yield group
            group, total = [], 0
        group.append(uid)
        total += size
    if group:
        yield group


def start_pollers(factory: sessionmaker[Session], settings: Settings,
                  stop_event: threading.Event) -> list[threading.Thread]:
    """One daemon thread per configured mailbox, each running ``ImapPoller.run`` until ``stop_event``.

    Every URL is checked before any thread starts: a bad one raises ImapConfigError here.
    """
    pollers = [ImapPoller(factory, settings, url) for url in mailbox_urls(settings)]
    threads = []
    for i, poller in enumerate(pollers):
        thread = threading.Thread(target=poller.run, args=(stop_event,), name=f"maild-imap-{i}", daemon=True)
        thread.start()
        threads.append(thread)
    return threads


def poll_forever(factory: sessionmaker[Session], settings: Settings, stop_event: threading.Event) -> None:
    """The daemon's entry point: poll every configured mailbox until ``stop_event``, then return after
    each poller has finished its current commit and move (RELIABILITY D9)."""
    threads = start_pollers(factory, settings, stop_event)
    stop_event.wait()
    for thread in threads:
        thread.join()


__all__ = ["RULES", "ImapPoller", "poll_forever", "silent_mailbox_rule", "start_pollers"]

RULES = (silent_mailbox_rule,)
