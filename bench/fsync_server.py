# SPDX-License-Identifier: MIT
"""The machine's limit for durable intake: an SMTP server that only appends each message and fsyncs.

``python bench/fsync_server.py PORT FILE``. Each DATA appends the bytes to FILE and fsyncs before
answering 250, in a worker thread as maild does (so concurrent sessions' fsyncs may share a journal
commit, which is what the kernel offers any durable server). Nothing is parsed or indexed: no
durable server can answer faster on this disk with this client.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from aiosmtpd.smtp import SMTP, Envelope, Session


class AppendHandler:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def _append(self, data: bytes) -> None:
        os.write(self.fd, b"From bench\n" + data + b"\n")
        os.fsync(self.fd)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await asyncio.to_thread(self._append, envelope.original_content or b"")
        return "250 2.0.0 Ok: stored"


async def serve(port: int, path: str) -> None:
    loop = asyncio.get_running_loop()
    handler = AppendHandler(path)
    server = await loop.create_server(
        lambda: SMTP(handler, decode_data=False, hostname="fsync.bench", data_size_limit=64 * 1024 * 1024),
        "127.0.0.1", port, reuse_address=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    server.close()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), sys.argv[2]))
