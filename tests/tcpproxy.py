"""A TCP forwarder the fault tests cut to make a server vanish; with several targets, the tiny
round-robin balancer in front of the API hosts of the hosts tier."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter


class TcpProxy:
    """A TCP forwarder on ``host`` to ``targets`` (loopback ports, or ``(address, port)``):
    each new connection goes to the next target in turn. Cut it to make the servers vanish
    (open connections reset, new ones refused), start it again to bring them back.
    ``connections`` counts the connections handed to each target."""

    def __init__(self, *targets: int | tuple[str, int], host: str = "127.0.0.1") -> None:
        self.targets = [("127.0.0.1", t) if isinstance(t, int) else t for t in targets]
        self.host = host
        self.port = 0
        self.connections: Counter[tuple[str, int]] = Counter()
        self._turn = itertools.cycle(self.targets)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._forwarding: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._forward, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()
        # each aborted connection reads its end at once: let them finish, not be cancelled
        await asyncio.gather(*self._forwarding, return_exceptions=True)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        target = next(self._turn)
        forwarding = asyncio.current_task()
        assert forwarding is not None
        self._forwarding.add(forwarding)
        forwarding.add_done_callback(self._forwarding.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.transport.abort()
            return
        self.connections[target] += 1
        self._writers.update((writer, up_writer))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))
