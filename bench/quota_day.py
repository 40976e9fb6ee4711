"""A simulated day at twice Imgur's limits, against a stand-in that enforces them.

``python -m bench.quota_day`` prints one JSON object. The Imgur stand-in runs in this process
with Imgur's own limits (500 credits an hour per IP, 12,500 a day per application, 1,250
POSTs an hour; an upload costs 10 credits) and answers 429 when a budget cannot pay. Over 24
simulated hours, 2,500 rehost requests arrive at random moments (twice the daily application
budget, and about twice the hourly one): 10 guilds, 50 members, 60% auto-rehost, 40%
commands people run, and one in five a picture that was rehosted earlier.

Time is simulated: the stand-in, the Imgur client, the ledger and the scheduler all read one
clock, which jumps from one event (an arrival, or the moment the scheduler asked to be woken)
to the next once every request in flight has settled. The uploads themselves take no
simulated time; the HTTP, the hashing and the ledger writes are real.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import random
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bot.errors import RehostError
from bot.imgur import ImgurClient, ImgurRateLimited
from bot.ledger import Ledger, Origin
from bot.media import MediaLimits
from bot.pipeline import Pipeline
from bot.quota import QuotaKeeper
from bot.scheduler import QueueFull, Scheduler
from bot.sources import Fetcher, StreamSource
from tests import samples
from tests.imgur_standin import ImgurStandIn

DAY = 86400.0
REQUESTS = 2500
GUILDS = 10
MEMBERS = 50
AUTO_SHARE = 0.6
REPEAT_SHARE = 0.2
CLIENT_ID = "bench-quota-client"


class SimClock:
    """Simulated unix time: ``sleep`` waits until ``advance_to`` moves past its deadline."""

    def __init__(self, start: float) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, delay), next(self._order), future))
        await future

    def _prune(self) -> None:
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)

    @property
    def sleeping(self) -> int:
        return sum(1 for *_, future in self._sleepers if not future.done())

    def next_deadline(self) -> float | None:
        self._prune()
        return self._sleepers[0][0] if self._sleepers else None

    def wake_next(self) -> None:
        """Move to the earliest deadline and wake whoever sleeps until then."""
        self._prune()
        deadline, _, future = heapq.heappop(self._sleepers)
        self.now = max(self.now, deadline)
        future.set_result(None)


@dataclass
class Request:
    at: float
    index: int
    guild: int
    member: int
    auto: bool
    picture: bytes
    repeat: bool


@dataclass
class Tally:
    uploaded_manual: int = 0
    uploaded_auto: int = 0
    from_ledger: int = 0
    refused: int = 0
    rate_limited: int = 0
    failed: int = 0
    longest_told: float = 0.0
    longest_wait: float = 0.0
    later_than_told: int = 0


def picture(index: int) -> bytes:
    """A small PNG, different for every index."""
    return samples.png(width=4 + index // 256, seed=index % 256)


async def one_chunk(data: bytes) -> AsyncIterator[bytes]:
    yield data


class Day:
    def __init__(self, clock: SimClock, pipeline: Pipeline, scheduler: Scheduler) -> None:
        self.clock = clock
        self.pipeline = pipeline
        self.scheduler = scheduler
        self.tally = Tally()
        self.tasks: set[asyncio.Task[None]] = set()
        self.rehosted: list[bytes] = []

    async def handle(self, request: Request) -> None:
        origin = Origin(
            door="discord",
            guild_id=request.guild,
            channel_id=request.guild * 10,
            message_id=request.index,
            attachment_id=request.index,
            owner_id=request.member,
            requester_id=None if request.auto else request.member,
            auto=request.auto,
        )
        told: float | None = None
        if not request.repeat:
            # What a door would tell the person: "queued; starts at HH:MM".
            estimate = self.scheduler.estimate(origin)
            told = 0.0 if estimate is None else estimate - request.at
            self.tally.longest_told = max(self.tally.longest_told, told)

        source = StreamSource(one_chunk(request.picture), filename=f"p{request.index}.png")
        try:
            rehost = await self.pipeline.rehost(source, origin)
        except QueueFull:
            self.tally.refused += 1
            return
        except ImgurRateLimited:
            self.tally.rate_limited += 1
            return
        except RehostError:
            self.tally.failed += 1
            return

        waited = self.clock.now - request.at
        if rehost.reused:
            self.tally.from_ledger += 1
            return
        self.rehosted.append(request.picture)
        self.tally.longest_wait = max(self.tally.longest_wait, waited)
        if told is not None and waited > told + 60:
            self.tally.later_than_told += 1
        if request.auto:
            self.tally.uploaded_auto += 1
        else:
            self.tally.uploaded_manual += 1

    def quiet(self) -> bool:
        """Every request is finished or parked in the queue, and the queue is asleep."""
        unfinished = sum(1 for task in self.tasks if not task.done())
        status = self.scheduler.status()
        return (
            status.active == 0
            and status.fetching == 0
            and unfinished == status.waiting
            and (status.waiting == 0 or self.clock.sleeping > 0)
        )

    async def settle(self) -> None:
        deadline = time.monotonic() + 30
        while not self.quiet():
            if time.monotonic() > deadline:
                raise RuntimeError("the simulation is stuck: work waits and nothing will wake it")
            await asyncio.sleep(0.0005)
        self.tasks = {task for task in self.tasks if not task.done()}

    async def run_until(self, moment: float) -> None:
        while (deadline := self.clock.next_deadline()) is not None and deadline <= moment:
            self.clock.wake_next()
            await self.settle()
        self.clock.now = max(self.clock.now, moment)

    async def run(self, requests: list[Request]) -> float:
        for request in requests:
            await self.run_until(request.at)
            if request.repeat:
                if not self.rehosted:
                    request.repeat = False
                else:
                    request.picture = random.Random(request.index).choice(self.rehosted)
            self.tasks.add(asyncio.create_task(self.handle(request)))
            await self.settle()

        while self.tasks:
            deadline = self.clock.next_deadline()
            if deadline is None:
                raise RuntimeError("work is left but nothing will wake it")
            await self.run_until(deadline)
        return self.clock.now


def requests_of_the_day(start: float) -> list[Request]:
    rng = random.Random(2024)
    moments = sorted(start + rng.uniform(0, DAY) for _ in range(REQUESTS))
    day = []
    for index, at in enumerate(moments):
        member = rng.randrange(MEMBERS)
        day.append(
            Request(
                at=at,
                index=index,
                guild=1 + member % GUILDS,
                member=1000 + member,
                auto=rng.random() < AUTO_SHARE,
                picture=picture(index),
                repeat=rng.random() < REPEAT_SHARE,
            )
        )
    return day


async def main_async() -> dict[str, Any]:
    clock = SimClock(float(int(time.time())))
    started = time.perf_counter()
    begin = clock.now
    with tempfile.TemporaryDirectory(prefix="bench-quota-") as folder:
        async with (
            ImgurStandIn(client_id=CLIENT_ID, clock=clock.time) as standin,
            aiohttp.ClientSession() as session,
        ):
            ledger = await Ledger.open(Path(folder) / "ledger.sqlite3", clock=clock.time)
            imgur = ImgurClient(session, CLIENT_ID, api_url=standin.url, clock=clock.time)
            keeper = QuotaKeeper(imgur, reserve=100, clock=clock.time)
            scheduler = Scheduler(
                workers=4,
                queue_limit=200,
                member_cooldown=2.0,
                quota=keeper,
                clock=clock.time,
                sleep=clock.sleep,
            )
            pipeline = Pipeline(
                imgur=imgur,
                ledger=ledger,
                fetcher=Fetcher(session),
                scheduler=scheduler,
                limits=MediaLimits(),
            )
            day = Day(clock, pipeline, scheduler)
            try:
                finished = await day.run(requests_of_the_day(clock.now))
            finally:
                await scheduler.close()
                await ledger.close()
            rate_limited = standin.rate_limited
            stored = len(standin.images)

    tally = day.tally
    return {
        "requests": REQUESTS,
        "imgur_429s": rate_limited,
        "client_429s": tally.rate_limited,
        "uploads": tally.uploaded_manual + tally.uploaded_auto,
        "uploads_manual": tally.uploaded_manual,
        "uploads_auto": tally.uploaded_auto,
        "stored_by_imgur": stored,
        "from_ledger": tally.from_ledger,
        "refused_queue_full": tally.refused,
        "failed": tally.failed,
        "longest_told": tally.longest_told,
        "longest_wait": tally.longest_wait,
        "later_than_told": tally.later_than_told,
        "simulated_hours": (finished - begin) / 3600,
        "wall": time.perf_counter() - started,
    }


def main() -> None:
    result = asyncio.run(main_async())
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
