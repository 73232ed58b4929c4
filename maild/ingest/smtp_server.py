# SPDX-License-Identifier: MIT
"""The SMTP server around ``IntakeHandler``: sessions, connection cap, STARTTLS, and the drain.

``IntakeSMTP`` is aiosmtpd's protocol plus what a daemon needs: a registry of live sessions, a
connection cap, ``421`` on shutdown, and maild's reply strings instead of aiosmtpd's built-in ones.

Why ``loop.create_server`` and not aiosmtpd's ``Controller``: the Controller owns a private loop
in its own thread and ``stop()`` drops every session at once. The daemon instead serves SMTP on
its own loop, so it can stop accepting, let in-flight DATA finish and answer ``421`` to idle
sessions (RELIABILITY D9), and ping the systemd watchdog from the loop that serves SMTP, so a
wedged loop stops the pings. ``make_controller`` wraps the same server in a thread for tests.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, AnyStr

from aiosmtpd.smtp import MISSING, SMTP, syntax

from maild.config import Settings
from maild.ingest.smtp import (
    IDENT,
    MAX_CONNECTIONS,
    REPLY_BUSY,
    REPLY_NO_STORAGE,
    REPLY_SHUTDOWN,
    REPLY_TOO_BIG,
    EnqueueFn,
    IngestFn,
    IntakeHandler,
    Waker,
)
from maild.ingest.spool import Spool

if TYPE_CHECKING:
    # Types only: the listener process (maild.listener) must not load SQLAlchemy.
    from sqlalchemy.orm import Session as DbSession
    from sqlalchemy.orm import sessionmaker

    from maild.ingest.workers import IntakePool

log = logging.getLogger(__name__)

# aiosmtpd answers these itself before any hook runs; say them in maild's words.
_BUILTIN_REPLIES = {
    "552 Error: message size exceeds fixed maximum message size": REPLY_TOO_BIG,
    "552 Error: Too much mail data": REPLY_TOO_BIG,
}

class IntakeSMTP(SMTP):
    """One SMTP session: aiosmtpd's protocol plus a registry, a connection cap and shutdown."""

    def __init__(self, handler: IntakeHandler, *, sessions: set[IntakeSMTP],
                 max_connections: int, spool_dir: Path | None = None, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._spool_dir = spool_dir
        self._sessions = sessions
        self._max_connections = max_connections
        self.in_data = False  # between the DATA command and its reply: may finish on shutdown
        self.draining = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self._original_transport is None  # called again after STARTTLS
        super().connection_made(transport)
        if first:
            self._sessions.add(self)
            if len(self._sessions) > self._max_connections:
                log.warning("connection from %s refused: %d sessions",
                            transport.get_extra_info("peername"), len(self._sessions))
                self.goodbye(REPLY_BUSY)

    def connection_lost(self, error: Exception | None) -> None:
        self._sessions.discard(self)
        super().connection_lost(error)

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, str):
            await super().push(_BUILTIN_REPLIES.get(status, status))
        else:
            await super().push(status)

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        self.in_data = True
        try:
            await self._data(arg)
        finally:
            self.in_data = False
        if self.draining:
            self.goodbye(REPLY_SHUTDOWN)

    async def _data(self, arg: str) -> None:
        """aiosmtpd 1.4.6's DATA, with the lines written to a ``Spool`` instead of a list of them.

        The same protocol to the byte: a line ends only at CRLF and only ``.`` CRLF after a complete
        line ends the data (the 1.4.6 smuggling fix), a line over the stream limit or
        ``line_length_limit`` is 500 and more than ``data_size_limit`` bytes is 552, both after the
        data is read to its end and nothing of it kept; dots are unstuffed (RFC 5321 §4.5.2). Then
        ``handle_DATA`` runs with ``envelope.spool`` set and ``original_content`` holding the bytes
        when they stayed in memory (``maild.ingest.spool``). tests/test_smtp_spool.py holds the cases.
        """
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        spool = Spool(self._spool_dir)
        try:
            refusal = await self._read_data(spool)
        except BaseException:
            spool.close()
            raise
        if refusal is not None:
            spool.close()
            await self.push(refusal)
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            return
        # Not closed here once handed on: a queue insert may still be reading it in a thread after
        # this session went away; the file closes when the last reference goes.
        self.envelope.spool = spool  # type: ignore[attr-defined]
        if spool.in_memory:
            self.envelope.original_content = self.envelope.content = spool.getvalue()
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def _read_data(self, spool: Spool) -> str | None:
        """Read DATA up to its lone dot into ``spool``; the refusal to send after it, or None."""
        limit = self.data_size_limit
        refusal: str | None = None
        num_bytes = 0
        pending = False  # a line over the stream limit is being drained in pieces
        while self.transport is not None:  # pragma: nobranch
            try:
                line: bytes = await self._reader.readuntil(b"\r\n")
            except asyncio.CancelledError:
                log.info("connection lost during DATA")
                self._writer.close()
                raise
            except asyncio.LimitOverrunError as exc:
                refusal = refusal or "500 Line too long (see RFC5321 4.5.3.1.6)"
                line = await self._reader.read(exc.consumed)
            if not pending and line == b".\r\n":
                return refusal
            num_bytes += len(line)
            if refusal is None and limit and num_bytes > limit:
                refusal = "552 Error: Too much mail data"
            pending = not line.endswith(b"\r\n")
            if refusal is None and len(line) > self.line_length_limit:
                refusal = "500 Line too long (see RFC5321 4.5.3.1.6)"
            if refusal is None:
                try:
                    spool.write(memoryview(line)[1:] if line.startswith(b".") else line)
                except OSError as exc:  # the spool directory is full or gone: 452 once the data is read,
                    # never an exception here, which would leave the rest of the data to be read as commands
                    log.error("cannot spool DATA from %s: %s; answering 452 after it", self.peer, exc)
                    refusal = REPLY_NO_STORAGE
        return refusal

    @property
    def peer(self) -> Any:
        return None if self.session is None else self.session.peer

    def goodbye(self, reply: str) -> None:
        """Send ``reply`` and close, whatever the session was doing (RFC 5321 §3.8)."""
        transport = self.transport
        if isinstance(transport, asyncio.WriteTransport) and not transport.is_closing():
            transport.write(reply.encode("ascii") + b"\r\n")
            transport.close()


class IntakeServer:
    """A bound listener and its live sessions."""

    def __init__(self, server: asyncio.Server, sessions: set[IntakeSMTP]) -> None:
        self._server = server
        self.sessions = sessions

    @property
    def port(self) -> int:
        return int(self._server.sockets[0].getsockname()[1])

    async def serve(self) -> None:
        """Start accepting connections (a server started with ``start_serving=False``)."""
        await self._server.start_serving()

    async def shutdown(self, grace: float) -> None:
        """Stop accepting; 421 to idle sessions; give in-flight DATA ``grace`` seconds (D9)."""
        self._server.close()
        for session in list(self.sessions):
            session.draining = True
            if not session.in_data:
                session.goodbye(REPLY_SHUTDOWN)
        deadline = time.monotonic() + grace
        while any(s.in_data for s in self.sessions) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self.sessions):
            if session.in_data:
                log.warning("DATA from %s still running after %ss; answered 421",
                            session.peer, grace)
            session.goodbye(REPLY_SHUTDOWN)
        await self._server.wait_closed()
        await asyncio.sleep(0)  # let connection_lost callbacks run


def make_tls_context(settings: Settings) -> ssl.SSLContext | None:
    """A server-side context for STARTTLS when a certificate and key are configured."""
    if not (settings.smtp.tls_cert and settings.smtp.tls_key):
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)  # no client certificates asked
    context.load_cert_chain(settings.smtp.tls_cert, settings.smtp.tls_key)
    return context


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


async def start_server(factory: sessionmaker[DbSession] | None, settings: Settings, *,
                       ingest_fn: IngestFn | None = None, listen: str | None = None,
                       max_connections: int = MAX_CONNECTIONS, pool: IntakePool | None = None,
                       queue: Waker | None = None, enqueue: EnqueueFn | None = None,
                       start_serving: bool = True) -> IntakeServer:
    """Bind the listener on the running loop (``listen`` defaults to ``[smtp] listen``). With
    ``queue``, mail is committed to the queue (by ``enqueue``, or on ``factory``'s engine) and
    ``queue`` is woken after each commit; ``factory`` may then be None. With ``start_serving=False``
    the port is bound (taken, or refused now) but connections wait for ``IntakeServer.serve``."""
    host, port = split_listen(listen or settings.smtp.listen)
    handler = IntakeHandler(factory, settings, ingest_fn=ingest_fn, pool=pool, queue=queue, enqueue=enqueue)
    tls = make_tls_context(settings)
    loop = asyncio.get_running_loop()
    # aiosmtpd would resolve the FQDN for every session; once is enough.
    hostname = await asyncio.to_thread(socket.getfqdn)
    sessions: set[IntakeSMTP] = set()

    def protocol() -> IntakeSMTP:
        return IntakeSMTP(
            handler, sessions=sessions, max_connections=max_connections,
            data_size_limit=settings.smtp.max_message_size, enable_SMTPUTF8=True,
            spool_dir=settings.data_dir / "spool",
            decode_data=False, hostname=hostname, ident=IDENT, tls_context=tls,
            require_starttls=settings.smtp.require_tls, timeout=settings.smtp.data_timeout,
            auth_exclude_mechanism=("LOGIN", "PLAIN"), loop=loop)

    server = await loop.create_server(protocol, host, port, reuse_address=True, start_serving=start_serving)
    log.info("SMTP intake listening on %s:%s", host, server.sockets[0].getsockname()[1])
    return IntakeServer(server, sessions)


class ThreadedIntake:
    """The listener on its own event loop in a thread (tests, embedding in synchronous code)."""

    def __init__(self, factory: sessionmaker[DbSession], settings: Settings, *,
                 ingest_fn: IngestFn | None = None, listen: str | None = None, queue: bool = False) -> None:
        self._args = (factory, settings, ingest_fn, listen)
        self._queue = queue
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name="smtp-intake", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._grace = 0.0
        self.server: IntakeServer | None = None
        self.error: BaseException | None = None

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start()
            self.error = exc
            self._ready.set()

    async def _serve(self) -> None:
        factory, settings, ingest_fn, listen = self._args
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runner = None
        if self._queue:
            from maild.ingest.queue_run import make_runner

            runner = make_runner(factory, settings)
            runner.start()
        self.server = await start_server(factory, settings, ingest_fn=ingest_fn, listen=listen, queue=runner)
        self._ready.set()
        await self._stop.wait()
        await self.server.shutdown(self._grace)
        if runner is not None:
            await runner.stop(self._grace)

    def start(self) -> ThreadedIntake:
        self._thread.start()
        self._ready.wait(30)
        if self.error is not None or self.server is None:
            raise RuntimeError("SMTP intake did not start") from self.error
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    def stop(self, grace: float = 0.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._grace = grace
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(grace + 30)


def make_controller(factory: sessionmaker[DbSession], settings: Settings, *,
                    ingest_fn: IngestFn | None = None, listen: str | None = None,
                    queue: bool = False) -> ThreadedIntake:
    """A not-yet-started threaded listener; ``listen="127.0.0.1:0"`` picks a free port. With ``queue``,
    it answers from the SMTP queue and processes it as ``maild run`` does (``maild.ingest.queue``)."""
    return ThreadedIntake(factory, settings, ingest_fn=ingest_fn, listen=listen, queue=queue)
