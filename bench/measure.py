"""What the benchmark measures in a process: peak memory, event-loop stalls, bytes sent.

- Memory: Linux keeps a process's peak resident set (``VmHWM``) and lets the process reset it
  (``echo 5 > /proc/self/clear_refs``). ``PeakMemory`` resets it just before the measured
  work and reads it just after: the extra peak is ``VmHWM`` after minus ``VmRSS`` before. It
  sees every allocation (Python, C libraries, thread stacks), not a sample of them.
- Stalls: a ticker task asks to wake every millisecond and records how late it wakes; the
  largest lateness is the longest time the event loop was kept from running other tasks.
- Bytes sent: every ``send``/``sendall``/``sendmsg`` of every TCP socket in the process is
  counted (HTTP headers and multipart framing included), so encodings that inflate the file
  show up as what they really put on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from pathlib import Path
from types import TracebackType
from typing import Any

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1))


class PeakMemory:
    """The extra peak resident memory of the process during a ``with`` block, in bytes."""

    def __init__(self) -> None:
        self.before = 0
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        _CLEAR_REFS.write_text("5")  # reset VmHWM to the current RSS
        self.before = _status_kib("VmRSS") * 1024
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.peak = _status_kib("VmHWM") * 1024

    @property
    def extra(self) -> int:
        return max(0, self.peak - self.before)


class StallMeter:
    """The largest lateness of a 1 ms ticker on the running loop, in seconds."""

    def __init__(self, interval: float = 0.001) -> None:
        self.interval = interval
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> StallMeter:
        self._task = asyncio.create_task(self._tick())
        await asyncio.sleep(0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._task is not None
        await asyncio.sleep(self.interval * 2)  # one more tick sees a stall that just ended
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _tick(self) -> None:
        while True:
            due = time.perf_counter() + self.interval
            await asyncio.sleep(self.interval)
            self.worst = max(self.worst, time.perf_counter() - due)


class SentBytes:
    """Counts the bytes every socket of this process sends, while installed."""

    def __init__(self) -> None:
        self.total = 0
        self._saved: dict[str, Any] = {}

    def install(self) -> SentBytes:
        counter = self
        original_send = socket.socket.send
        original_sendall = socket.socket.sendall
        original_sendmsg = socket.socket.sendmsg
        self._saved = {"send": original_send, "sendall": original_sendall}
        self._saved["sendmsg"] = original_sendmsg

        def send(sock: socket.socket, data: Any, *args: Any) -> int:
            sent = original_send(sock, data, *args)
            counter.count(sock, sent)
            return sent

        def sendall(sock: socket.socket, data: Any, *args: Any) -> None:
            original_sendall(sock, data, *args)
            counter.count(sock, memoryview(data).nbytes)

        def sendmsg(sock: socket.socket, buffers: Any, *args: Any) -> int:
            sent = original_sendmsg(sock, buffers, *args)
            counter.count(sock, sent)
            return sent

        socket.socket.send = send  # type: ignore[method-assign,assignment]
        socket.socket.sendall = sendall  # type: ignore[method-assign,assignment]
        socket.socket.sendmsg = sendmsg  # type: ignore[method-assign,assignment]
        return self

    def count(self, sock: socket.socket, sent: int) -> None:
        # Only the network: asyncio wakes its loop through a local socket pair as well.
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            self.total += sent

    def add(self, count: int) -> None:
        """Bytes sent another way (``os.sendfile``), told by the code that sent them."""
        self.total += count
