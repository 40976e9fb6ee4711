"""When an upload may call Imgur: bounded concurrency in front of the Imgur client."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from bot.errors import RehostError
from bot.ledger import Origin

log = logging.getLogger(__name__)


class QueueFull(RehostError):
    """Too much work is waiting; the request was refused rather than queued."""


class Scheduler:
    """Admits at most ``workers`` Imgur uploads at once and at most ``queue_limit`` waiting."""

    def __init__(self, *, workers: int = 4, queue_limit: int = 200) -> None:
        self._slots = asyncio.Semaphore(workers)
        self._queue_limit = queue_limit
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Uploads waiting for their turn."""
        return self._waiting

    def check_room(self, origin: Origin) -> None:
        """Refuse early, before anything is downloaded, when the queue is full."""
        if self._waiting >= self._queue_limit:
            raise QueueFull("The bot is busy with too many uploads; try again in a few minutes.")

    @contextlib.asynccontextmanager
    async def slot(self, origin: Origin) -> AsyncIterator[None]:
        """Wait for a turn to call Imgur."""
        self.check_room(origin)
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._slots.release()
