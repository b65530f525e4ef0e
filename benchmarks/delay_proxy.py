"""A small TCP proxy that makes every request to a server ``delay`` seconds slower.

Each chunk a client sends is held ``delay`` seconds before it goes on to the
server (in order, per connection); answers come back at once. Between a
Redis client and server this adds ``delay`` to every round trip (a pipeline
sent in one write pays it once), as a Redis in another zone or region would.
The proxy runs its own asyncio loop in a daemon thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from types import TracebackType

__all__ = ["DelayProxy"]

CHUNK = 65536


class DelayProxy:
    """Listen on ``127.0.0.1:<port>`` and forward to ``host:port`` with ``delay`` seconds added."""

    def __init__(self, host: str, port: int, delay: float) -> None:
        self.upstream = (host, port)
        self.delay = delay
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def start(self) -> DelayProxy:
        """Start listening (on a free port, then ``self.port``)."""
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        ).result(10)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        """Stop listening, drop every connection, end the loop's thread."""
        server = self._server
        if server is not None:

            async def close() -> None:
                server.close()
                for task in asyncio.all_tasks():
                    if task is not asyncio.current_task():
                        task.cancel()

            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> DelayProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pipe(reader, up_writer, self.delay),
            self._pipe(up_reader, writer, 0.0),
            return_exceptions=True,
        )

    @staticmethod
    async def _pipe(
        source: asyncio.StreamReader, target: asyncio.StreamWriter, delay: float
    ) -> None:
        try:
            while data := await source.read(CHUNK):
                if delay:
                    await asyncio.sleep(delay)
                target.write(data)
                await target.drain()
        finally:
            with contextlib.suppress(Exception):
                target.close()
