# SPDX-License-Identifier: MIT
"""The SMTP intake listener: mail handed over by the organisation's MTA (SPEC §2, STYLE §2).

``IntakeHandler`` decides every reply: RCPT accepts only intake and reply addresses, MAIL checks
SIZE, DATA bounds the message cheaply and then commits it in a worker thread, answering ``250`` only
after the commit (RELIABILITY rule 1). With a queue (``[smtp] queue = true``, the default) the commit
holds the raw bytes and envelope and the case work runs right after (``maild.ingest.queue``); without
one it holds the whole decision (``run_ingest``, in a thread or an intake worker process,
``maild.ingest.workers``) and the reply names the case. The server around it (sessions, connection
cap, STARTTLS, shutdown drain) is ``smtp_server``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from aiosmtpd.smtp import SMTP, Envelope, Session

from maild import clock
from maild.config import Settings
from maild.faults import fault_point
from maild.ingest.batch import Batcher
from maild.ingest.raw import RawMail
from maild.ingest.stamp import intake_stamp
from maild.logs import MESSAGE_LINE

if TYPE_CHECKING:
    # Types only: the listener process (maild.listener) imports this module and must not load SQLAlchemy.
    from sqlalchemy.orm import Session as DbSession
    from sqlalchemy.orm import sessionmaker

    from maild.ingest.intake_store import Queued
    from maild.ingest.pipeline import IngestResult
    from maild.ingest.spool import Spool
    from maild.ingest.workers import IntakePool

log = logging.getLogger(__name__)

IngestFn = Callable[["sessionmaker[DbSession]", Settings, RawMail], "IngestResult"]
# Commits a batch of messages to the queue and returns after the commit: one answer per message.
EnqueueFn = Callable[[Sequence[RawMail]], "Sequence[Queued | Exception]"]


class Waker(Protocol):
    """What runs the queue: told after each commit that there is mail to process (``QueueRunner``, or
    ``maild.workproc.WorkProcess``, the pipe to the work process beside the listener)."""

    def wake(self) -> None: ...

# Reply strings (RFC 5321 §4.2 codes with RFC 3463 enhanced status codes). Never exception text.
REPLY_MAIL_OK = "250 2.1.0 Ok"
REPLY_RCPT_OK = "250 2.1.5 Ok"
REPLY_QUEUED = "250 2.0.0 Ok: queued as {ref}"
REPLY_SHUTDOWN = "421 4.3.2 Service shutting down"
REPLY_BUSY = "421 4.7.0 Too many connections, try again later"
REPLY_LOCAL_ERROR = "451 4.3.0 Requested action aborted: local error in processing"
REPLY_NO_STORAGE = "452 4.3.1 Insufficient system storage"
REPLY_TOO_MANY_RCPTS = "452 4.5.3 Too many recipients"
REPLY_BAD_RCPT = "550 5.1.1 <{addr}>: recipient not accepted here"
REPLY_TOO_BIG = "552 5.3.4 Message size exceeds fixed limit"
REPLY_HEADER_TOO_BIG = "552 5.3.4 Message header exceeds fixed limit"
REPLY_TOO_MANY_HOPS = "554 5.4.0 Too many hops"

IDENT = "ESMTP"  # the greeting names no software or version
MAX_HEADER_BYTES = 1024 * 1024  # RELIABILITY R3: a header flood is refused before parsing
MAX_CONNECTIONS = 200  # RELIABILITY R7: a connection cap; the MTA queues and retries on 421
# Batches in flight without worker processes: one commits while the next is parsed and waits.
THREAD_SLOTS = 2
# Queue inserts in flight: one. A queue insert has nothing to do outside SQLite's one write lock, so a
# second batch would only wait for it; instead everything that arrives meanwhile joins the next batch
# (at 8 connections: 645-675 -> 690-850 msgs/s).
QUEUE_SLOTS = 1
DISK_HEADROOM = 1.5  # RELIABILITY D4: 452 4.3.1 at MAIL when free space < 1.5 x max size

_RECEIVED = re.compile(rb"^received[ \t]*:", re.IGNORECASE | re.MULTILINE)
_MESSAGE_ID = re.compile(rb"^message-id[ \t]*:[ \t]*([^\r\n]*)", re.IGNORECASE | re.MULTILINE)


def header_block(data: bytes) -> bytes:
    """The bytes before the first empty line (RFC 5322 §2.1), or all of them if there is none."""
    if data.startswith((b"\r\n", b"\n")):
        return b""
    ends = [i for i in (data.find(b"\r\n\r\n"), data.find(b"\n\n")) if i >= 0]
    return data[: min(ends)] if ends else data


def sniff_message_id(header: bytes) -> str:
    """The first Message-ID header, for log lines only: printable ASCII, at most 200 characters."""
    found = _MESSAGE_ID.search(header[:MAX_HEADER_BYTES])
    if found is None:
        return "-"
    text = found.group(1).strip().decode("ascii", "replace")[:200]
    return "".join(c if c.isprintable() and c.isascii() else "?" for c in text) or "-"


def _reply_address_pattern(intake: Iterable[str]) -> re.Pattern[str]:
    # support+case-12-<token>@domain: RCPT checks only the shape; threading checks the token.
    shapes = []
    for address in intake:
        local, _, domain = address.rpartition("@")
        shapes.append(
            rf"{re.escape(local)}\+case-[0-9]{{1,12}}(?:-[A-Za-z0-9_-]{{1,64}})?@{re.escape(domain)}"
        )
    return re.compile("|".join(shapes), re.IGNORECASE)


def _size_param(mail_options: Iterable[str]) -> int | None:
    for option in mail_options:
        key, _, value = option.partition("=")
        if key.upper() == "SIZE" and value.isdigit():
            return int(value)
    return None


def _peer_host(peer: Any) -> str | None:
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return None if peer is None else str(peer)


class IntakeHandler:
    """aiosmtpd handler hooks for the intake addresses; one instance serves every session."""

    def __init__(self, factory: sessionmaker[DbSession] | None, settings: Settings,
                 ingest_fn: IngestFn | None = None,
                 disk_free: Callable[[], int | None] | None = None,
                 pool: IntakePool | None = None, queue: Waker | None = None,
                 enqueue: EnqueueFn | None = None) -> None:
        self.factory = factory  # None in the listener process: it only queues (``enqueue``)
        self.pool = pool
        self.queue = queue
        self.settings = settings
        self._enqueue_fn = enqueue
        # A replacement ingest_fn (tests) runs per message in a thread; maild's own pipeline runs in
        # batches (group commit): queued in threads of the daemon, or processed before the reply,
        # in worker processes when there is a pool.
        self.ingest_fn: IngestFn | None = ingest_fn
        slots = pool.processes if pool is not None and queue is None else THREAD_SLOTS
        self._batcher: Batcher[IngestResult] = Batcher(self._run_batch, slots=slots)
        self._queuer: Batcher[Queued] = Batcher(self._enqueue_batch, slots=QUEUE_SLOTS)
        self._stamp = intake_stamp(settings)
        self._intake = frozenset(settings.intake_kinds)
        self._reply_address = _reply_address_pattern(self._intake)
        self._disk_free = disk_free or self._data_dir_free

    def _data_dir_free(self) -> int | None:
        try:
            return shutil.disk_usage(self.settings.data_dir).free
        except OSError:
            return None

    def accepts(self, address: str) -> bool:
        """True for an intake address or a reply address built on one (case-insensitive)."""
        return address.lower() in self._intake or self._reply_address.fullmatch(address) is not None

    async def handle_EHLO(self, server: SMTP, session: Session, envelope: Envelope,
                          hostname: str, responses: list[str]) -> list[str]:
        # The new-style hook must record the client's name itself; maild offers no AUTH: the MTA
        # hands mail over on loopback or a trusted network.
        session.host_name = hostname
        return [r for r in responses if not r.startswith("250-AUTH")]

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, mail_options: list[str]) -> str:
        limit = self.settings.smtp.max_message_size
        size = _size_param(mail_options)
        if size is not None and size > limit:  # RFC 1870 §6.1
            return REPLY_TOO_BIG
        free = self._disk_free()
        if free is not None and free < DISK_HEADROOM * limit:
            log.warning("refusing mail from %s: %s bytes free in %s", address, free,
                        self.settings.data_dir)
            return REPLY_NO_STORAGE
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return REPLY_MAIL_OK

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if not self.accepts(address):
            # Refused now, so the MTA tells the sender; maild never bounces later (STYLE §2.1).
            return REPLY_BAD_RCPT.format(addr=address[:256])
        if len(envelope.rcpt_tos) >= self.settings.smtp.max_recipients:
            return REPLY_TOO_MANY_RCPTS  # RFC 5321 §4.5.3.1.10: the client sends the rest later
        if address.lower() not in (r.lower() for r in envelope.rcpt_tos):
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(rcpt_options)
        return REPLY_RCPT_OK

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        spool: Spool | None = getattr(envelope, "spool", None)  # set by IntakeSMTP's DATA
        large = spool is not None and not spool.in_memory
        data = b"" if large else envelope.original_content or b""
        header = header_block(spool.head() if spool is not None and large else data)
        message_id = sniff_message_id(header)
        if len(header) > MAX_HEADER_BYTES:
            log.warning("refused %s: header block of %d bytes", message_id, len(header))
            return REPLY_HEADER_TOO_BIG
        hops = len(_RECEIVED.findall(header))
        if hops > self.settings.intake.max_received:  # a mail loop (RFC 5321 §6.3)
            log.warning("refused %s: %d Received headers", message_id, hops)
            return REPLY_TOO_MANY_HOPS
        raw = RawMail(data=data, source="smtp", mail_from=envelope.mail_from,
                      rcpt_tos=tuple(envelope.rcpt_tos), peer=_peer_host(session.peer),
                      helo=session.host_name, tls=session.ssl is not None,
                      received_at=clock.now(), spool=spool if large else None)
        started = time.monotonic()
        if self.queue is not None and self.ingest_fn is None:
            return await self._enqueue(raw, message_id, started)  # a spooled message stays spooled
        raw = raw.loaded()
        try:
            result = await self._ingest(raw)
        except Exception:
            # RELIABILITY rule 1 / D4: a storage failure is 4yz so the MTA retries; no details out.
            log.exception("intake of %s from %s failed; answered 451", message_id, raw.peer)
            return REPLY_LOCAL_ERROR
        fault_point("after_commit_before_reply")  # tests only (MAILD_FAULT): committed, no 250 yet (D2)
        duration_ms = int((time.monotonic() - started) * 1000)
        # run_ingest logs the message's INFO line itself; this one adds the SMTP side.
        log.debug(MESSAGE_LINE + " peer=%s", result.message_id, result.outcome, result.case,
                  duration_ms, "smtp", raw.peer)
        ref = f"case-{result.case}" if result.case is not None else str(result.outcome)
        return REPLY_QUEUED.format(ref=ref)

    async def _enqueue(self, raw: RawMail, message_id: str, started: float) -> str:
        try:
            queued = await self._queuer.ingest(raw)
        except Exception:
            log.exception("queueing %s from %s failed; answered 451", message_id, raw.peer)
            return REPLY_LOCAL_ERROR
        fault_point("after_commit_before_reply")
        if queued.duplicate:  # an MTA's resend after a lost 250 (RELIABILITY D2), or a true repeat
            log.info("message %s from %s: a copy of raw-%d, counted there, not stored again", message_id,
                     raw.peer, queued.raw_id)
        else:
            log.debug("message %s queued as raw-%d in %d ms (smtp, peer=%s)", message_id, queued.raw_id,
                      (time.monotonic() - started) * 1000, raw.peer)
        return REPLY_QUEUED.format(ref=f"raw-{queued.raw_id}")

    async def _enqueue_batch(self, raws: Sequence[RawMail]) -> Sequence[Queued | Exception]:
        enqueue = self._enqueue_fn
        if enqueue is None:  # in the daemon's own process: its engine's connection
            from functools import partial

            from maild.ingest.queue import enqueue_batch

            enqueue = self._enqueue_fn = partial(enqueue_batch, self._store())
        self._stamp.touch()  # the queue's processing holds back while intake commits (IntakeStamp)
        try:
            return await asyncio.to_thread(enqueue, raws)
        finally:
            self._stamp.touch()
            if self.queue is not None:
                self.queue.wake()

    def _store(self) -> sessionmaker[DbSession]:
        if self.factory is None:
            raise RuntimeError("this listener only queues mail: it has no store session factory")
        return self.factory

    async def _ingest(self, raw: RawMail) -> IngestResult:
        # The pipeline runs off the event loop, so the loop keeps serving other sessions.
        if self.ingest_fn is not None:
            return await asyncio.to_thread(self.ingest_fn, self._store(), self.settings, raw)
        return await self._batcher.ingest(raw)

    async def _run_batch(self, raws: Sequence[RawMail]) -> Sequence[IngestResult | Exception]:
        if self.pool is not None:
            return await self.pool.ingest_batch(raws)
        # Imported here so the listener module does not pull in the whole pipeline at import.
        from maild.ingest.pipeline import run_ingest_batch

        return await asyncio.to_thread(run_ingest_batch, self._store(), self.settings, raws)

    async def handle_exception(self, error: Exception) -> str:
        # aiosmtpd's default answers "500 Error: (<class>) <text>": a 5yz makes the MTA bounce
        # the mail and the text leaks internals. Anything unexpected is a local, temporary error.
        log.error("SMTP session error; answered 451", exc_info=error)
        return REPLY_LOCAL_ERROR
