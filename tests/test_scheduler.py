"""The upload queue: fair turns, cooldowns, a bounded queue, and the quota (on a fake clock).

Nothing here waits on real time: the scheduler gets a clock and a sleep that only move when
a test moves them, and every step is awaited as a condition, not a delay.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from bot.imgur import Credits, ImgurRateLimited, ImgurUnavailable, Quota
from bot.ledger import Origin
from bot.quota import QuotaKeeper
from bot.scheduler import QueueFull, Scheduler

START = 1_700_000_000.0


class FakeTime:
    """A clock and a sleep that move only when ``advance`` is called."""

    def __init__(self, start: float = START) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, delay), next(self._order), future))
        await future

    @property
    def sleeping(self) -> int:
        return sum(1 for _, _, future in self._sleepers if not future.done())

    async def advance(self, seconds: float) -> None:
        """Move the clock on, waking every sleeper whose time has come, and let them run."""
        self.now += seconds
        while self._sleepers and self._sleepers[0][0] <= self.now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)
        await settle()


async def settle(rounds: int = 50) -> None:
    """Let every task that can run, run (no real time passes)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


async def until(condition: Callable[[], bool], rounds: int = 500) -> None:
    """Run the loop until ``condition`` holds; fail if it never does."""
    for _ in range(rounds):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never came true")


class FakeImgur:
    """Imgur's quota arithmetic, with what the client has seen of it in ``quota``.

    ``upload()`` is what one upload does at Imgur: it costs 10 credits and one POST, or is a
    429 when a budget cannot pay for it (counted in ``over_limit``).
    """

    def __init__(
        self,
        time: FakeTime,
        *,
        user_limit: int = 500,
        user_remaining: int | None = None,
        client_limit: int = 12500,
        client_remaining: int | None = None,
        reset_in: float = 3600.0,
        seen: bool = True,
    ) -> None:
        self.time = time
        self.user_limit = user_limit
        self.user_remaining = user_limit if user_remaining is None else user_remaining
        self.user_reset = time.now + reset_in
        self.client_limit = client_limit
        self.client_remaining = client_limit if client_remaining is None else client_remaining
        self.client_reset = time.now + 86400.0
        self.quota = Quota()
        self.uploads = 0
        self.over_limit = 0
        self.probes = 0
        self.probe_fails = 0
        if seen:
            self._answer()

    def _roll(self) -> None:
        if self.time.now >= self.user_reset:
            self.user_remaining = self.user_limit
            self.user_reset += 3600.0
        if self.time.now >= self.client_reset:
            self.client_remaining = self.client_limit
            self.client_reset += 86400.0

    def _answer(self) -> None:
        self.quota = Quota(
            user_limit=self.user_limit,
            user_remaining=self.user_remaining,
            user_reset=self.user_reset,
            client_limit=self.client_limit,
            client_remaining=self.client_remaining,
            observed_at=self.time.now,
        )

    def upload(self) -> None:
        self._roll()
        self.uploads += 1
        if self.user_remaining < 10 or self.client_remaining < 10:
            self.over_limit += 1
            self._answer()
            raise ImgurRateLimited(self.user_reset)
        self.user_remaining -= 10
        self.client_remaining -= 10
        self._answer()

    async def credits(self) -> Credits:
        self.probes += 1
        if self.probe_fails:
            self.probe_fails -= 1
            raise ImgurUnavailable("Imgur is unavailable right now; try again later.")
        self._roll()
        self._answer()
        return Credits(
            self.user_limit,
            self.user_remaining,
            self.user_reset,
            self.client_limit,
            self.client_remaining,
        )


def origin(
    guild: int | None = 1,
    member: int = 10,
    message: int | None = None,
    *,
    auto: bool = False,
    attachment: int | None = None,
) -> Origin:
    return Origin(
        door="discord",
        guild_id=guild,
        channel_id=5 if guild is not None else None,
        message_id=message,
        attachment_id=attachment,
        owner_id=member,
        requester_id=None if auto else member,
        auto=auto,
    )


@dataclass
class Job:
    """One upload holding a slot until ``done`` is set; ``entered`` once it has its turn."""

    name: str
    origin: Origin
    entered: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    error: BaseException | None = None


class Queue:
    """Starts jobs against a scheduler and records the order they get their turn."""

    def __init__(self, scheduler: Scheduler, imgur: FakeImgur | None = None) -> None:
        self.scheduler = scheduler
        self.imgur = imgur
        self.order: list[str] = []
        self.jobs: dict[str, Job] = {}

    def start(self, name: str, where: Origin) -> Job:
        job = Job(name, where)
        self.jobs[name] = job
        job.task = asyncio.create_task(self._run(job))
        return job

    async def _run(self, job: Job) -> None:
        try:
            async with self.scheduler.slot(job.origin):
                self.order.append(job.name)
                job.entered.set()
                await job.done.wait()
                if self.imgur is not None:
                    self.imgur.upload()
        except Exception as exc:
            job.error = exc

    def running(self) -> list[str]:
        def busy(job: Job) -> bool:
            return job.entered.is_set() and job.task is not None and not job.task.done()

        return [name for name, job in self.jobs.items() if busy(job)]

    async def finish(self, name: str) -> None:
        job = self.jobs[name]
        await until(job.entered.is_set)
        job.done.set()
        await until(job.task.done)  # type: ignore[union-attr]

    async def finish_all(self) -> None:
        for job in list(self.jobs.values()):
            job.done.set()
        tasks = [j.task for j in self.jobs.values() if j.task is not None]
        await asyncio.gather(*tasks, return_exceptions=True)


@pytest.fixture
def time() -> FakeTime:
    return FakeTime()


async def test_guilds_take_turns_so_one_busy_guild_cannot_starve_another() -> None:
    scheduler = Scheduler(workers=1, queue_limit=100)
    queue = Queue(scheduler)
    for n in range(6):
        queue.start(f"a{n}", origin(guild=1, member=n, message=100 + n))
    await settle()
    queue.start("b0", origin(guild=2, member=50, message=200))
    queue.start("b1", origin(guild=2, member=51, message=201))
    await settle()

    for turns in range(2, 7):
        await queue.finish(queue.order[-1])
        await until(lambda turns=turns: len(queue.order) == turns)

    assert queue.order == ["a0", "b0", "a1", "b1", "a2", "a3"]
    await queue.finish_all()


async def test_members_take_turns_within_a_guild() -> None:
    scheduler = Scheduler(workers=1, queue_limit=100)
    queue = Queue(scheduler)
    for n in range(4):
        queue.start(f"m{n}", origin(member=7, message=7, attachment=n))
    await settle()
    queue.start("other", origin(member=8, message=8))
    await settle()

    await queue.finish("m0")
    await until(lambda: len(queue.order) == 2)

    assert queue.order == ["m0", "other"]
    await queue.finish_all()


async def test_the_last_guild_waits_behind_one_upload_per_guild_not_their_backlogs() -> None:
    scheduler = Scheduler(workers=2, queue_limit=200)
    queue = Queue(scheduler)
    for guild in range(1, 11):
        for n in range(20):
            queue.start(f"g{guild}-{n}", origin(guild=guild, member=guild, message=guild))
    await settle()

    while not any(name.startswith("g10-") for name in queue.order):
        started = len(queue.order)
        await queue.finish(queue.running()[0])
        await until(lambda started=started: len(queue.order) > started)

    assert queue.order.index("g10-0") <= 10
    await queue.finish_all()


async def test_member_cooldown_delays_their_next_request_but_not_others(time: FakeTime) -> None:
    scheduler = Scheduler(
        workers=4, queue_limit=100, member_cooldown=2.0, clock=time.clock, sleep=time.sleep
    )
    queue = Queue(scheduler)
    queue.start("first", origin(member=7, message=1))
    await until(lambda: queue.order == ["first"])
    await queue.finish("first")

    queue.start("second", origin(member=7, message=2))
    queue.start("someone else", origin(member=8, message=3))
    await settle()
    assert queue.order == ["first", "someone else"]

    await time.advance(1.9)
    assert "second" not in queue.order

    await time.advance(0.1)
    await until(lambda: "second" in queue.order)
    await queue.finish_all()


async def test_attachments_of_one_message_are_one_request_for_the_cooldown(
    time: FakeTime,
) -> None:
    scheduler = Scheduler(
        workers=1, queue_limit=100, member_cooldown=60.0, clock=time.clock, sleep=time.sleep
    )
    queue = Queue(scheduler)
    for n in range(3):
        queue.start(f"attachment {n}", origin(member=7, message=1, attachment=n))
    await settle()

    await queue.finish("attachment 0")
    await queue.finish("attachment 1")
    await until(lambda: len(queue.order) == 3)

    assert queue.order == ["attachment 0", "attachment 1", "attachment 2"]
    await queue.finish_all()


async def test_a_full_queue_refuses_with_a_clear_answer() -> None:
    scheduler = Scheduler(workers=1, queue_limit=2, guild_limit=10, fetchers=1)
    queue = Queue(scheduler)
    queue.start("running", origin(guild=1, member=1))
    queue.start("waiting 1", origin(guild=2, member=2))
    queue.start("waiting 2", origin(guild=3, member=3))
    await until(lambda: scheduler.waiting == 2)

    with pytest.raises(QueueFull, match="2 uploads waiting; try again in a few minutes"):
        scheduler.check_room(origin(guild=4, member=4))
    with pytest.raises(QueueFull):
        async with scheduler.admit(origin(guild=4, member=4)):
            pytest.fail("a full queue admitted more work")

    await queue.finish("running")
    await until(lambda: scheduler.waiting == 1)
    scheduler.check_room(origin(guild=4, member=4))
    await queue.finish_all()


async def test_the_slot_keeps_room_for_work_fetched_while_the_queue_filled() -> None:
    scheduler = Scheduler(workers=1, queue_limit=1, fetchers=1)
    queue = Queue(scheduler)
    queue.start("running", origin(guild=1, member=1))
    queue.start("waiting", origin(guild=2, member=2))
    await until(lambda: scheduler.waiting == 1)

    late = queue.start("fetched while the queue filled", origin(guild=3, member=3))
    await until(lambda: scheduler.waiting == 2)
    assert late.error is None
    with pytest.raises(QueueFull):
        async with scheduler.slot(origin(guild=4, member=4)):
            pytest.fail("the slot let the queue grow without bound")
    await queue.finish_all()
    assert queue.order[-1] == "fetched while the queue filled"


async def test_fetch_turns_are_bounded_and_fair_across_guilds() -> None:
    scheduler = Scheduler(workers=1, queue_limit=100, fetchers=2)
    admitted: list[str] = []
    gates = {name: asyncio.Event() for name in ["a0", "a1", "a2", "a3", "b0"]}

    async def fetch(name: str, where: Origin) -> None:
        async with scheduler.admit(where):
            admitted.append(name)
            await gates[name].wait()

    tasks = [
        asyncio.create_task(fetch(f"a{n}", origin(guild=1, member=n, message=n))) for n in range(4)
    ]
    await settle()
    tasks.append(asyncio.create_task(fetch("b0", origin(guild=2, member=9, message=9))))
    await settle()
    assert admitted == ["a0", "a1"]
    assert scheduler.waiting == 3
    assert scheduler.status().fetching == 2

    gates["a0"].set()
    await until(lambda: len(admitted) == 3)
    assert admitted[2] == "b0"

    for gate in gates.values():
        gate.set()
    await asyncio.gather(*tasks)
    assert scheduler.waiting == 0


async def test_one_guild_cannot_take_the_whole_queue() -> None:
    scheduler = Scheduler(workers=1, queue_limit=10, guild_limit=2)
    queue = Queue(scheduler)
    queue.start("running", origin(guild=9, member=9))
    queue.start("a", origin(guild=1, member=1))
    queue.start("b", origin(guild=1, member=2))
    await until(lambda: scheduler.waiting == 2)

    with pytest.raises(QueueFull, match="already 2 uploads waiting from this server"):
        scheduler.check_room(origin(guild=1, member=3))
    scheduler.check_room(origin(guild=2, member=3))
    await queue.finish_all()


async def test_waiting_work_is_counted_per_guild() -> None:
    scheduler = Scheduler(workers=1, queue_limit=10)
    queue = Queue(scheduler)
    queue.start("running", origin(guild=1, member=1))
    queue.start("a", origin(guild=1, member=2))
    queue.start("b", origin(guild=2, member=3))
    queue.start("c", origin(guild=2, member=4))
    queue.start("cli", Origin(door="cli"))
    await until(lambda: scheduler.waiting == 4)

    status = scheduler.status()
    assert (status.waiting, status.active, status.workers) == (4, 1, 1)
    assert status.waiting_by_guild == {1: 1, 2: 2, None: 1}
    assert scheduler.waiting_in(2) == 2
    assert scheduler.waiting_in(None) == 1
    await queue.finish_all()
    assert scheduler.waiting == 0
    assert scheduler.active == 0


async def test_a_cancelled_upload_leaves_the_queue() -> None:
    scheduler = Scheduler(workers=1, queue_limit=10)
    queue = Queue(scheduler)
    queue.start("running", origin(guild=1, member=1))
    gone = queue.start("gone", origin(guild=2, member=2))
    queue.start("next", origin(guild=3, member=3))
    await until(lambda: scheduler.waiting == 2)

    assert gone.task is not None
    gone.task.cancel()
    await until(lambda: scheduler.waiting == 1)
    await queue.finish("running")
    await until(lambda: "next" in queue.order)

    assert "gone" not in queue.order
    await queue.finish_all()


async def test_close_turns_away_waiting_and_new_uploads() -> None:
    scheduler = Scheduler(workers=1, queue_limit=10)
    queue = Queue(scheduler)
    queue.start("running", origin(guild=1, member=1))
    waiting = queue.start("waiting", origin(guild=2, member=2))
    await until(lambda: scheduler.waiting == 1)

    await scheduler.close()
    await until(lambda: waiting.task is not None and waiting.task.done())

    assert isinstance(waiting.error, QueueFull)
    with pytest.raises(QueueFull, match="shutting down"):
        async with scheduler.slot(origin(guild=3, member=3)):
            pytest.fail("a closed scheduler let an upload through")
    await queue.finish_all()


# --- the quota ---------------------------------------------------------------------------------


def quota_scheduler(
    time: FakeTime, imgur: FakeImgur, *, workers: int = 4, reserve: int = 100
) -> Scheduler:
    keeper = QuotaKeeper(imgur, reserve=reserve, clock=time.clock, reset_margin=5.0)
    return Scheduler(
        workers=workers, queue_limit=100, quota=keeper, clock=time.clock, sleep=time.sleep
    )


async def test_auto_rehost_pauses_at_the_reserve_while_commands_go_on(time: FakeTime) -> None:
    imgur = FakeImgur(time, user_remaining=130)  # 3 uploads above the reserve of 100
    scheduler = quota_scheduler(time, imgur)
    queue = Queue(scheduler, imgur)
    for n in range(5):
        queue.start(f"auto {n}", origin(guild=1, member=n, message=n, auto=True))
    await until(lambda: len(queue.order) == 3)
    await settle()
    assert queue.order == ["auto 0", "auto 1", "auto 2"]

    for name in list(queue.order):
        await queue.finish(name)
    assert imgur.user_remaining == 100
    assert scheduler.auto_resume_at == imgur.user_reset + 5.0
    assert scheduler.resume_at is None

    for n in range(3):
        queue.start(f"command {n}", origin(guild=2, member=20 + n, message=20 + n))
        await queue.finish(f"command {n}")
    await settle()

    assert [name for name in queue.order if name.startswith("auto")] == [
        "auto 0",
        "auto 1",
        "auto 2",
    ]
    assert imgur.over_limit == 0
    await time.advance(3605)
    await queue.finish_all()
    assert queue.order[-2:] == ["auto 3", "auto 4"]
    assert imgur.over_limit == 0


async def test_commands_stop_short_of_a_429_and_wait_for_the_reset(time: FakeTime) -> None:
    imgur = FakeImgur(time, user_remaining=40, reset_in=1800)  # floor 10 leaves 3 uploads
    scheduler = quota_scheduler(time, imgur)
    queue = Queue(scheduler, imgur)
    for n in range(5):
        queue.start(f"command {n}", origin(guild=n, member=n, message=n))
    await until(lambda: len(queue.order) == 3)
    for name in list(queue.order):
        await queue.finish(name)
    await settle()

    assert len(queue.order) == 3
    assert imgur.uploads == 3
    assert scheduler.resume_at == imgur.user_reset + 5.0
    status = scheduler.status()
    assert status.waiting == 2
    assert status.paused_reason == "Imgur's hourly upload quota is used up"

    await time.advance(1800)  # the reset, but not yet the margin past it
    assert len(queue.order) == 3
    await time.advance(5)
    await until(lambda: len(queue.order) == 4)  # resumed by itself, one to test the refill
    await queue.finish(queue.order[-1])
    await until(lambda: len(queue.order) == 5)
    await queue.finish_all()

    assert imgur.uploads == 5
    assert imgur.over_limit == 0


async def test_a_429_pauses_every_upload_until_its_reset(time: FakeTime) -> None:
    imgur = FakeImgur(time)
    scheduler = quota_scheduler(time, imgur, workers=1)
    reset_at = time.now + 600

    async def refused() -> None:
        async with scheduler.slot(origin(guild=1, member=1)):
            raise ImgurRateLimited(reset_at)

    with pytest.raises(ImgurRateLimited):
        await refused()

    queue = Queue(scheduler, imgur)
    queue.start("after", origin(guild=2, member=2))
    await settle()
    assert queue.order == []
    assert scheduler.resume_at == reset_at
    assert scheduler.status().paused_reason == "Imgur asked the bot to slow down"

    await time.advance(599)
    assert queue.order == []
    probes = imgur.probes
    await time.advance(1)
    await until(lambda: queue.order == ["after"])
    assert imgur.probes == probes + 1  # the quota was checked with Imgur before going on
    await queue.finish_all()


async def test_a_spent_quota_unknown_at_start_costs_one_429_at_most(time: FakeTime) -> None:
    imgur = FakeImgur(time, user_remaining=0, seen=False)  # spent, and the bot does not know
    scheduler = quota_scheduler(time, imgur)
    queue = Queue(scheduler, imgur)
    for n in range(3):
        queue.start(f"upload {n}", origin(guild=n, member=n))
    await until(lambda: len(queue.order) == 1)
    await settle()
    assert len(queue.order) == 1  # nothing known: one upload alone finds out

    await queue.finish(queue.order[0])
    await settle()
    assert isinstance(queue.jobs[queue.order[0]].error, ImgurRateLimited)
    assert len(queue.order) == 1
    assert scheduler.resume_at == imgur.user_reset

    await time.advance(imgur.user_reset - time.now)
    await queue.finish_all()
    assert len(queue.order) == 3
    assert imgur.over_limit == 1


async def test_unknown_quota_lets_one_upload_through_at_a_time(time: FakeTime) -> None:
    imgur = FakeImgur(time, seen=False)
    imgur.probe_fails = 1
    scheduler = quota_scheduler(time, imgur)
    queue = Queue(scheduler, imgur)
    queue.start("one", origin(guild=1, member=1))
    queue.start("two", origin(guild=2, member=2))
    await until(lambda: len(queue.order) == 1)
    await settle()
    assert len(queue.order) == 1

    await queue.finish("one")  # its answer carries the quota headers
    await until(lambda: len(queue.order) == 2)
    await queue.finish_all()


async def test_a_spent_daily_budget_is_checked_until_it_refills(time: FakeTime) -> None:
    imgur = FakeImgur(time, client_remaining=20)  # one upload left above the floor
    scheduler = quota_scheduler(time, imgur)
    queue = Queue(scheduler, imgur)
    queue.start("one", origin(guild=1, member=1))
    queue.start("two", origin(guild=2, member=2))
    await until(lambda: queue.order == ["one"])
    await queue.finish("one")
    await settle()

    assert queue.order == ["one"]
    assert scheduler.status().paused_reason == "Imgur's daily upload quota is used up"
    probes = imgur.probes

    await time.advance(900)
    assert imgur.probes == probes + 1
    assert queue.order == ["one"]

    await time.advance(86400 - 900)  # Imgur's day ends
    await until(lambda: queue.order == ["one", "two"])
    await queue.finish_all()
    assert imgur.over_limit == 0


async def test_estimate_names_the_reset_when_the_quota_is_the_limit(time: FakeTime) -> None:
    imgur = FakeImgur(time, user_remaining=10, reset_in=1200)
    scheduler = quota_scheduler(time, imgur)

    assert scheduler.estimate(origin()) == imgur.user_reset + 5.0
    assert scheduler.estimate(origin(auto=True)) == imgur.user_reset + 5.0


async def test_estimate_is_none_when_an_upload_would_start_at_once(time: FakeTime) -> None:
    imgur = FakeImgur(time)
    scheduler = quota_scheduler(time, imgur)

    assert scheduler.estimate(origin()) is None
