"""A plain HTTP/1.1 server on 127.0.0.1 in a thread of its own, for tests of the rehearsal's
generator without a testbed: a subclass says what each request gets (`respond`)."""

from __future__ import annotations

import asyncio
import threading


class LocalHTTP:
    """Started on a free port (`.port`); `close()` stops it. Keep-alive connections; each
    request is read whole (its body by Content-Length) and answered by `respond`."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.thread = threading.Thread(target=self._main, args=(started,), daemon=True)
        self.thread.start()
        started.wait(10)

    async def respond(self, method: str, target: str, headers: dict, body: bytes, conn: dict) -> tuple[int, bytes]:
        raise NotImplementedError

    def _main(self, started) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self.server.sockets[0].getsockname()[1]
        started.set()
        self.loop.run_forever()
        # Every connection's handler ends here, in its own loop, before the loop closes.
        tasks = asyncio.all_tasks(self.loop)
        for task in tasks:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        self.loop.close()

    async def _handle(self, reader, writer) -> None:
        conn: dict = {}  # what one connection (one simulated participant) carries between requests
        try:
            while line := await reader.readline():
                headers = {}
                while (h := await reader.readline()) not in (b"\r\n", b""):
                    k, _, v = h.decode().partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                method, target = line.decode().split()[:2]
                status, data = await self.respond(method, target, headers, body, conn)
                writer.write(b"HTTP/1.1 %d X\r\nContent-Length: %d\r\n\r\n%s" % (status, len(data), data))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
