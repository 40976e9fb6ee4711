"""Quota stewardship: the keeper's arithmetic, and the whole pipeline against a stand-in that
enforces Imgur's limits on a clock the test moves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from bot.imgur import ImgurClient, Quota
from bot.ledger import Ledger, Origin
from bot.media import MediaLimits
from bot.pipeline import Pipeline
from bot.quota import QuotaKeeper
from bot.scheduler import Scheduler
from bot.sources import Fetcher, StreamSource
from tests import samples
from tests.imgur_standin import ImgurStandIn
from tests.test_scheduler import FakeImgur, FakeTime

MARGIN = 5.0


@pytest.fixture
def time() -> FakeTime:
    return FakeTime()


def keeper(imgur: FakeImgur, time: FakeTime, *, reserve: int = 100) -> QuotaKeeper:
    return QuotaKeeper(imgur, reserve=reserve, clock=time.clock, reset_margin=MARGIN)


# --- the arithmetic ----------------------------------------------------------------------------


def test_auto_rehost_keeps_the_reserve_back_and_commands_only_the_floor(time: FakeTime) -> None:
    quota = keeper(FakeImgur(time, user_remaining=150), time)

    assert quota.allowance(manual=False).uploads == 5  # (150 - 100) / 10
    assert quota.allowance(manual=True).uploads == 14  # (150 - 10) / 10


def test_uploads_in_flight_count_as_spent(time: FakeTime) -> None:
    quota = keeper(FakeImgur(time, user_remaining=50), time)

    assert quota.allowance(manual=True, in_flight=3).uploads == 1
    waiting = quota.allowance(manual=True, in_flight=4)
    assert waiting.uploads == 0
    assert waiting.resume_at is None  # more may go when an answer comes, not at a reset


def test_a_spent_hour_resumes_at_its_reset_plus_a_margin(time: FakeTime) -> None:
    imgur = FakeImgur(time, user_remaining=10, reset_in=900)
    quota = keeper(imgur, time)

    paused = quota.allowance(manual=True)
    assert paused.uploads == 0
    assert paused.resume_at == imgur.user_reset + MARGIN
    assert paused.reason == "Imgur's hourly upload quota is used up"


def test_after_a_reset_one_upload_goes_first_to_confirm_it(time: FakeTime) -> None:
    imgur = FakeImgur(time, user_remaining=0, reset_in=60)
    quota = keeper(imgur, time)
    time.now += 60 + MARGIN

    assert quota.allowance(manual=True).uploads == 1
    assert quota.allowance(manual=True, in_flight=1).uploads == 0
    imgur.upload()  # its answer shows the refilled budget
    assert quota.allowance(manual=True).uploads == 48


def test_the_post_limit_counts_requests_not_credits(time: FakeTime) -> None:
    imgur = FakeImgur(time)
    imgur.quota = Quota(
        user_limit=500,
        user_remaining=500,
        user_reset=time.now + 3600,
        post_limit=1250,
        post_remaining=4,
        post_reset=time.now + 120,
        observed_at=time.now,
    )
    quota = keeper(imgur, time)

    assert quota.allowance(manual=True).uploads == 3  # one POST kept back for deleting
    assert quota.allowance(manual=False).uploads == 0  # the reserve: 10 uploads' worth
    assert quota.allowance(manual=False).resume_at == time.now + 120 + MARGIN


def test_nothing_known_lets_one_upload_go_at_a_time(time: FakeTime) -> None:
    quota = keeper(FakeImgur(time, seen=False), time)

    assert quota.allowance(manual=True).uploads == 1
    assert quota.allowance(manual=True, in_flight=1).uploads == 0


def test_the_daily_budget_is_estimated_to_refill_a_day_after_spending_began(
    time: FakeTime,
) -> None:
    imgur = FakeImgur(time)
    quota = keeper(imgur, time)
    quota.view()
    assert quota.daily_reset_estimate() is None  # nothing spent yet

    time.now += 100
    imgur.upload()
    quota.view()

    assert quota.daily_reset_estimate() == time.now + 86400


def test_forecast_counts_the_hours_needed(time: FakeTime) -> None:
    imgur = FakeImgur(time, user_remaining=40, reset_in=600)  # 3 uploads left this hour
    quota = keeper(imgur, time)

    assert quota.forecast(2, manual=True) == time.now
    assert quota.forecast(3, manual=True) == imgur.user_reset + MARGIN
    assert quota.forecast(3 + 49, manual=True) == imgur.user_reset + MARGIN + 3600


# --- the pipeline against an Imgur that enforces its limits ------------------------------------


@dataclass
class Bot:
    pipeline: Pipeline
    scheduler: Scheduler
    standin: ImgurStandIn
    time: FakeTime


@pytest.fixture
async def bot(time: FakeTime, tmp_path: Path) -> AsyncIterator[Bot]:
    """The pipeline and a stand-in allowing 6 uploads an hour, both on the fake clock."""
    async with (
        ImgurStandIn(user_limit=60, clock=time.clock) as standin,
        aiohttp.ClientSession() as session,
    ):
        ledger = await Ledger.open(tmp_path / "ledger.sqlite3", clock=time.clock)
        imgur = ImgurClient(session, standin.client_id, api_url=standin.url, clock=time.clock)
        scheduler = Scheduler(
            workers=2,
            queue_limit=50,
            quota=QuotaKeeper(imgur, reserve=30, clock=time.clock, reset_margin=MARGIN),
            clock=time.clock,
            sleep=time.sleep,
        )
        pipeline = Pipeline(
            imgur=imgur,
            ledger=ledger,
            fetcher=Fetcher(session),
            scheduler=scheduler,
            limits=MediaLimits(),
        )
        yield Bot(pipeline, scheduler, standin, time)
        await scheduler.close()
        await ledger.close()


async def eventually(condition: Callable[[], bool], within: float = 30.0) -> None:
    """Wait (in real time, for real HTTP and SQLite) until ``condition`` holds."""
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(0.01)


async def rehost(bot: Bot, seed: int, *, auto: bool = False, member: int = 1) -> bool:
    """Rehost a small PNG; whether it was answered from the ledger."""
    data = samples.png(seed=seed)

    async def chunks() -> AsyncIterator[bytes]:
        yield data

    origin = Origin(
        door="discord",
        guild_id=1 + seed % 3,
        channel_id=5,
        message_id=1000 + seed,
        owner_id=member,
        requester_id=None if auto else member,
        auto=auto,
    )
    result = await bot.pipeline.rehost(StreamSource(chunks(), filename="p.png"), origin)
    return result.reused


def settled(bot: Bot, tasks: list[asyncio.Task[bool]], uploads: int) -> Callable[[], bool]:
    def check() -> bool:
        status = bot.scheduler.status()
        unfinished = sum(1 for task in tasks if not task.done())
        return (
            bot.standin.upload_calls == uploads
            and status.active == 0
            and status.fetching == 0
            and unfinished == status.waiting
        )

    return check


async def test_uploads_wait_for_imgurs_reset_instead_of_running_into_a_429(bot: Bot) -> None:
    tasks = [asyncio.create_task(rehost(bot, seed)) for seed in range(8)]

    await eventually(settled(bot, tasks, uploads=5))  # 60 credits, 10 kept for deleting
    assert bot.scheduler.waiting == 3
    assert bot.standin.rate_limited == 0
    reset = bot.standin.user_reset
    assert bot.scheduler.resume_at == reset + MARGIN

    await bot.time.advance(reset + MARGIN - bot.time.now)
    await eventually(lambda: all(task.done() for task in tasks))

    assert bot.standin.upload_calls == 8
    assert bot.standin.rate_limited == 0
    assert len(bot.standin.images) == 8


async def test_auto_rehost_pauses_at_the_reserve_and_commands_go_on(bot: Bot) -> None:
    autos = [asyncio.create_task(rehost(bot, seed, auto=True)) for seed in range(5)]
    await eventually(settled(bot, autos, uploads=3))  # (60 - 30) / 10
    assert bot.scheduler.auto_resume_at == bot.standin.user_reset + MARGIN
    assert bot.scheduler.resume_at is None

    commands = [asyncio.create_task(rehost(bot, 10 + n, member=2)) for n in range(3)]
    await eventually(settled(bot, autos + commands, uploads=5))

    assert [task.done() for task in commands] == [True, True, False]
    assert not any(task.done() for task in autos[3:])
    assert bot.standin.rate_limited == 0

    await bot.time.advance(bot.standin.user_reset + MARGIN - bot.time.now)
    await eventually(lambda: all(task.done() for task in autos + commands))
    assert bot.standin.rate_limited == 0


async def test_a_repeated_image_is_answered_from_the_ledger_without_imgur(bot: Bot) -> None:
    assert not await rehost(bot, 1)
    calls = bot.standin.upload_calls
    requests = len(bot.standin.requests)

    assert await rehost(bot, 1, member=7)

    assert bot.standin.upload_calls == calls
    assert len(bot.standin.requests) == requests  # no Imgur call of any kind


async def test_repeats_are_answered_while_new_uploads_wait_for_the_quota(bot: Bot) -> None:
    assert not await rehost(bot, 0)
    waiting = [asyncio.create_task(rehost(bot, seed)) for seed in range(1, 8)]
    await eventually(settled(bot, waiting, uploads=5))
    assert bot.scheduler.waiting == 3

    assert await asyncio.wait_for(rehost(bot, 0, member=9), 30)

    assert bot.standin.upload_calls == 5
    await bot.time.advance(bot.standin.user_reset + MARGIN - bot.time.now)
    await eventually(lambda: all(task.done() for task in waiting))
