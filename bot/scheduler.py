"""When a rehost may fetch its source and when it may call Imgur: a bounded, fair queue.

Work passes two gates, both served in fair order (round-robin across guilds, and within a
guild across members, so one busy server or member is served turn about with the others,
never ahead of them):

1. ``admit``: a turn to fetch and hash the source (at most ``fetchers`` at once). Until its
   hash is known nobody can tell whether the bytes are on Imgur already, so this gate has
   no quota to wait for; it only keeps a burst from fetching everything at once and keeps
   the guild that posted last from waiting behind everyone's downloads.
2. ``slot``: a turn to call Imgur, for uploads the ledger could not answer. At most
   ``workers`` at once; a member's next request no sooner than ``member_cooldown`` seconds
   after their previous one began (the attachments of one message are one request); and
   only while Imgur's quota allows (``QuotaKeeper``): auto-rehost pauses at the reserve,
   people's own commands go on until it is gone. When nothing may go, the queue waits for
   the reset and resumes by itself; a 429 that comes anyway pauses every upload until its
   reset.

At most ``queue_limit`` rehosts wait (and at most ``guild_limit`` from one guild); more are
refused with ``QueueFull`` and a sentence saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Final

from bot.errors import RehostError
from bot.imgur import ImgurRateLimited
from bot.ledger import Origin
from bot.quota import Allowance, QuotaKeeper

log = logging.getLogger(__name__)

UNKNOWN_RESET_PAUSE: Final = 900.0  # a 429 without a reset time pauses this long
TURNS_KEPT: Final = 4096  # guilds and members whose last turn is remembered for fairness
SHUTTING_DOWN: Final = "The bot is shutting down; try again in a moment."


class QueueFull(RehostError):
    """Too much work is waiting; the request was refused rather than queued."""


@dataclass(frozen=True)
class QueueStatus:
    """A snapshot for ``/imgur-status``."""

    waiting: int  # rehosts waiting to fetch or to upload
    active: int  # uploads talking to Imgur now
    fetching: int  # sources being fetched and hashed now
    workers: int
    queue_limit: int
    waiting_by_guild: dict[int | None, int]
    resume_at: float | None  # people's own uploads are paused until then (None: not paused)
    auto_resume_at: float | None  # auto-rehost is paused until then (None: not paused)
    paused_reason: str | None  # why anything is paused, for people


@dataclass(eq=False)
class _Ticket:
    """One rehost waiting at a gate."""

    origin: Origin
    lane: Hashable
    member: Hashable | None
    request: Hashable | None
    manual: bool
    enqueued_at: float
    granted: asyncio.Future[None]


@dataclass
class _Lane:
    """One guild's (or one door's) waiting tickets, by member."""

    members: dict[Hashable | None, deque[_Ticket]] = field(default_factory=dict)
    count: int = 0


class _FairQueue:
    """Tickets in fair order: the guild served longest ago first (one never served goes
    first), within it the member served longest ago, within the member first come."""

    def __init__(self) -> None:
        self.lanes: dict[Hashable, _Lane] = {}
        self.count = 0
        self._turn = 0
        self._lane_turns: dict[Hashable, int] = {}
        self._member_turns: dict[Hashable | None, int] = {}

    def add(self, ticket: _Ticket) -> None:
        lane = self.lanes.setdefault(ticket.lane, _Lane())
        lane.members.setdefault(ticket.member, deque()).append(ticket)
        lane.count += 1
        self.count += 1

    def remove(self, ticket: _Ticket) -> bool:
        lane = self.lanes.get(ticket.lane)
        tickets = lane.members.get(ticket.member) if lane is not None else None
        if lane is None or tickets is None or ticket not in tickets:
            return False
        tickets.remove(ticket)
        lane.count -= 1
        self.count -= 1
        if not tickets:
            del lane.members[ticket.member]
        if not lane.members:
            del self.lanes[ticket.lane]
        return True

    def take(self, ticket: _Ticket) -> None:
        """Remove ``ticket`` as served: its guild and member go to the back of the order."""
        self.remove(ticket)
        self._turn += 1
        self._lane_turns[ticket.lane] = self._turn
        self._member_turns[ticket.member] = self._turn
        if len(self._lane_turns) > TURNS_KEPT or len(self._member_turns) > TURNS_KEPT:
            horizon = self._turn - TURNS_KEPT // 2
            for turns in (self._lane_turns, self._member_turns):
                for key in [k for k, turn in turns.items() if turn < horizon]:
                    del turns[key]

    def in_order(self) -> Iterator[_Ticket]:
        for lane_key in sorted(self.lanes, key=lambda key: self._lane_turns.get(key, -1)):
            members = self.lanes[lane_key].members
            for member_key in sorted(members, key=lambda key: self._member_turns.get(key, -1)):
                yield from list(members[member_key])

    def in_lane(self, lane_key: Hashable) -> int:
        lane = self.lanes.get(lane_key)
        return 0 if lane is None else lane.count

    def member_tickets(self, lane_key: Hashable, member: Hashable | None) -> list[_Ticket]:
        lane = self.lanes.get(lane_key)
        if lane is None:
            return []
        return list(lane.members.get(member, ()))

    def drain(self) -> list[_Ticket]:
        tickets = [t for lane in self.lanes.values() for ts in lane.members.values() for t in ts]
        self.lanes.clear()
        self.count = 0
        return tickets


@dataclass
class _Cooldown:
    started_at: float
    request: Hashable | None


class Scheduler:
    """Admits rehosts fairly, and lets uploads call Imgur within the quota, a few at a time.

    Args:
        workers: uploads that may talk to Imgur at once.
        queue_limit: rehosts that may wait; more are refused.
        guild_limit: rehosts one guild may have waiting (default a quarter of the queue).
        member_cooldown: seconds between the starts of one member's requests.
        quota: the quota keeper; None lets every upload through as far as the slots allow.
        fetchers: sources fetched and hashed at once (default twice ``workers``).
        clock: unix time (quota resets are unix times).
        sleep: awaited to wait for a cooldown or a quota reset.
    """

    def __init__(
        self,
        *,
        workers: int = 4,
        queue_limit: int = 200,
        guild_limit: int | None = None,
        member_cooldown: float = 0.0,
        quota: QuotaKeeper | None = None,
        fetchers: int | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if workers < 1 or queue_limit < 1 or (fetchers is not None and fetchers < 1):
            raise ValueError("workers, fetchers and queue_limit must be at least 1")
        self._workers = workers
        self._fetchers = fetchers if fetchers is not None else 2 * workers
        self._queue_limit = queue_limit
        self._guild_limit = guild_limit if guild_limit is not None else max(1, queue_limit // 4)
        self._cooldown = member_cooldown
        self._quota = quota
        self._clock = clock
        self._sleep = sleep

        self._entry = _FairQueue()  # waiting to fetch
        self._uploads = _FairQueue()  # waiting to call Imgur
        self._fetching = 0
        self._active = 0
        self._cooldowns: dict[Hashable, _Cooldown] = {}
        self._blocked_until: float | None = None
        self._changed = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._closed = False

    # --- what the doors see -----------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Rehosts waiting for their turn (to fetch, or to upload)."""
        return self._entry.count + self._uploads.count

    @property
    def active(self) -> int:
        """Uploads talking to Imgur right now."""
        return self._active

    @property
    def workers(self) -> int:
        return self._workers

    @property
    def queue_limit(self) -> int:
        return self._queue_limit

    def waiting_in(self, guild_id: int | None) -> int:
        """Rehosts from ``guild_id`` (None: from outside any guild) waiting for their turn."""
        return self._by_guild().get(guild_id, 0)

    @property
    def resume_at(self) -> float | None:
        """When uploads people asked for resume, if the quota has paused them; else None."""
        return self._pause(manual=True).resume_at

    @property
    def auto_resume_at(self) -> float | None:
        """When auto-rehost resumes, if the quota (or its reserve) has paused it; else None."""
        return self._pause(manual=False).resume_at

    def status(self) -> QueueStatus:
        """Counts and pauses, for ``/imgur-status``."""
        manual = self._pause(manual=True)
        auto = self._pause(manual=False)
        return QueueStatus(
            waiting=self.waiting,
            active=self._active,
            fetching=self._fetching,
            workers=self._workers,
            queue_limit=self._queue_limit,
            waiting_by_guild=self._by_guild(),
            resume_at=manual.resume_at,
            auto_resume_at=auto.resume_at,
            paused_reason=manual.reason or auto.reason,
        )

    def estimate(self, origin: Origin) -> float | None:
        """When a new upload from ``origin`` would probably start; None if at once.

        Guilds take turns, so before it go its own guild's waiting uploads and, in each of
        those turns, one upload of every other guild with work waiting (assumed to stay
        busy); before auto-rehost, also every command waiting; then the member's cooldown
        and the quota. How long uploads take is not
        counted: while the quota is not what holds work back, it is a lower bound.
        """
        now = self._clock()
        lane_key = _lane_key(origin)
        own = self._uploads.in_lane(lane_key)
        others = sum(1 for key in self._uploads.lanes if key != lane_key)
        ahead = own + (own + 1) * others
        if origin.auto:
            # Past the reserve only people's own commands go: every one waiting goes first.
            ahead += sum(1 for ticket in self._uploads.in_order() if ticket.manual)

        start = now
        if self._blocked_until is not None:
            start = max(start, self._blocked_until)
        if self._quota is not None:
            manual = not origin.auto
            by_quota = self._quota.forecast(ahead, manual=manual, in_flight=self._active)
            if by_quota is None:
                pause = self._pause(manual=manual)
                by_quota = pause.resume_at if pause.resume_at is not None else now
            start = max(start, by_quota)
        member = _member_key(origin)
        cooldown = self._cooldowns.get(member) if member is not None else None
        if cooldown is not None and self._cooldown > 0:
            queued = self._uploads.member_tickets(lane_key, member)
            requests = len({t.request for t in queued} - {cooldown.request})
            start = max(start, cooldown.started_at + self._cooldown * (requests + 1))
        if ahead < self._workers - self._active and start <= now:
            return None
        return start

    # --- the gates --------------------------------------------------------------------------

    def check_room(self, origin: Origin) -> None:
        """Refuse early, before anything is downloaded, when the queue is full."""
        if self._closed:
            raise QueueFull(SHUTTING_DOWN)
        waiting = self.waiting
        if waiting >= self._queue_limit:
            raise QueueFull(
                f"The bot already has {waiting} uploads waiting; try again in a few minutes."
            )
        lane_key = _lane_key(origin)
        in_lane = self._entry.in_lane(lane_key) + self._uploads.in_lane(lane_key)
        if in_lane >= self._guild_limit:
            where = "this server" if origin.guild_id is not None else "you"
            raise QueueFull(
                f"There are already {in_lane} uploads waiting from {where}; "
                "try again when some have finished."
            )

    @contextlib.asynccontextmanager
    async def admit(self, origin: Origin) -> AsyncIterator[None]:
        """Wait for a turn to fetch and hash a source; hold it for the ``async with`` body.

        Raises:
            QueueFull: the queue (or this guild's share of it) is full.
        """
        self.check_room(origin)
        ticket = self._ticket(origin)
        self._entry.add(ticket)
        self._admit_next()
        if not ticket.granted.done():
            await self._granted(ticket, self._entry, self._admit_done)
        try:
            yield
        finally:
            self._admit_done()

    @contextlib.asynccontextmanager
    async def slot(self, origin: Origin) -> AsyncIterator[None]:
        """Wait for a turn to call Imgur; hold it for the body of the ``async with``.

        Work admitted through ``admit`` is not refused here; other callers are, when the
        queue is full.

        Raises:
            QueueFull: the queue is full (or the bot is shutting down).
        """
        if self._closed:
            raise QueueFull(SHUTTING_DOWN)
        if self.waiting >= self._queue_limit + self._fetchers:
            self.check_room(origin)
        ticket = self._ticket(origin)
        self._uploads.add(ticket)
        self._changed.set()
        self._pump()
        if not ticket.granted.done():
            self._ensure_dispatcher()
            await self._granted(ticket, self._uploads, self._release)
            log.debug(
                "upload for %s waited %.2fs for its turn",
                origin.door,
                self._clock() - ticket.enqueued_at,
            )

        try:
            yield
        except ImgurRateLimited as exc:
            self._pause_all(exc.reset_at)
            raise
        finally:
            self._release()

    async def close(self) -> None:
        """Refuse new work, turn away what waits, and stop the background timer."""
        self._closed = True
        for ticket in self._entry.drain() + self._uploads.drain():
            if not ticket.granted.done():
                ticket.granted.set_exception(QueueFull(SHUTTING_DOWN))
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
            self._dispatcher = None

    # --- tickets ----------------------------------------------------------------------------

    def _ticket(self, origin: Origin) -> _Ticket:
        return _Ticket(
            origin=origin,
            lane=_lane_key(origin),
            member=_member_key(origin),
            request=_request_key(origin),
            manual=not origin.auto,
            enqueued_at=self._clock(),
            granted=asyncio.get_running_loop().create_future(),
        )

    async def _granted(
        self, ticket: _Ticket, queue: _FairQueue, give_back: Callable[[], None]
    ) -> None:
        """Wait for ``ticket``; if the waiter is cancelled, leave the queue (or the turn)."""
        try:
            await ticket.granted
        except BaseException:
            if ticket.granted.done() and not ticket.granted.cancelled():
                if ticket.granted.exception() is None:
                    give_back()  # granted just as the waiter was cancelled
            elif queue.remove(ticket):
                self._changed.set()
            raise

    def _by_guild(self) -> dict[int | None, int]:
        counts: dict[int | None, int] = {}
        for queue in (self._entry, self._uploads):
            for key, lane in queue.lanes.items():
                guild = key if isinstance(key, int) else None
                counts[guild] = counts.get(guild, 0) + lane.count
        return counts

    # --- the fetch gate ---------------------------------------------------------------------

    def _admit_next(self) -> None:
        while self._entry.count and self._fetching < self._fetchers:
            ticket = next(self._entry.in_order())
            self._entry.take(ticket)
            self._fetching += 1
            ticket.granted.set_result(None)

    def _admit_done(self) -> None:
        self._fetching -= 1
        self._admit_next()

    # --- the upload gate --------------------------------------------------------------------

    def _release(self) -> None:
        self._active -= 1
        self._pump()
        self._changed.set()

    def _pump(self) -> float | None:
        """Grant every slot that may be granted now; the next time to look again, if any."""
        if self._quota is not None and self._uploads.count and self._quota.probe_due():
            return self._clock()  # the dispatcher asks Imgur first
        wake: float | None = None
        while self._uploads.count and self._active < self._workers:
            ticket, wake = self._pick()
            if ticket is None:
                break
            self._start(ticket)
        return wake

    def _pick(self) -> tuple[_Ticket | None, float | None]:
        """The next ticket in fair order that may start now; else when one may."""
        now = self._clock()
        wake: list[float] = []
        if self._blocked_until is not None:
            if now < self._blocked_until:
                return None, self._blocked_until
            self._blocked_until = None

        allowances: dict[bool, Allowance] = {}
        for ticket in self._uploads.in_order():
            ready_at = self._cooldown_ends(ticket, now)
            if ready_at is not None:
                wake.append(ready_at)
                continue  # a later ticket may be part of the request under way
            allowance = allowances.get(ticket.manual)
            if allowance is None:
                allowance = self._allowance(manual=ticket.manual)
                allowances[ticket.manual] = allowance
            if allowance.uploads > 0:
                return ticket, None
            if allowance.resume_at is not None:
                wake.append(allowance.resume_at)

        if self._quota is not None:
            probe_at = self._quota.probe_at()
            if probe_at is not None:
                wake.append(probe_at)
        return None, min(wake) if wake else None

    def _start(self, ticket: _Ticket) -> None:
        self._uploads.take(ticket)
        self._active += 1
        if ticket.member is not None:
            self._cooldowns[ticket.member] = _Cooldown(self._clock(), ticket.request)
            if len(self._cooldowns) > TURNS_KEPT:
                horizon = self._clock() - self._cooldown
                for key in [k for k, c in self._cooldowns.items() if c.started_at < horizon]:
                    del self._cooldowns[key]
        ticket.granted.set_result(None)

    def _cooldown_ends(self, ticket: _Ticket, now: float) -> float | None:
        """When the ticket's member may start it, if not now."""
        if ticket.member is None or self._cooldown <= 0:
            return None
        last = self._cooldowns.get(ticket.member)
        if last is None or (ticket.request is not None and ticket.request == last.request):
            return None
        ends = last.started_at + self._cooldown
        return ends if now < ends else None

    def _allowance(self, *, manual: bool) -> Allowance:
        if self._quota is None:
            return Allowance(self._workers)
        return self._quota.allowance(manual=manual, in_flight=self._active)

    def _pause(self, *, manual: bool) -> Allowance:
        """Whether the quota (or a 429) holds uploads of this class back, and until when."""
        now = self._clock()
        if self._blocked_until is not None and now < self._blocked_until:
            return Allowance(0, self._blocked_until, "Imgur asked the bot to slow down")
        if self._quota is None:
            return Allowance(self._workers)
        allowance = self._quota.allowance(manual=manual, in_flight=0)
        if allowance.uploads > 0:
            return Allowance(allowance.uploads)
        if allowance.resume_at is None and allowance.reason is not None:
            daily = self._quota.daily_reset_estimate()
            return Allowance(0, daily, allowance.reason)
        return allowance

    def _pause_all(self, reset_at: float | None) -> None:
        now = self._clock()
        until = reset_at if reset_at is not None and reset_at > now else now + UNKNOWN_RESET_PAUSE
        if self._blocked_until is None or until > self._blocked_until:
            self._blocked_until = until
        if self._quota is not None:
            self._quota.rate_limited(reset_at)
        log.warning("Imgur rate limited an upload; uploads pause for %.0fs", until - now)
        self._changed.set()

    # --- the timer --------------------------------------------------------------------------

    def _ensure_dispatcher(self) -> None:
        if self._dispatcher is None or self._dispatcher.done():
            self._dispatcher = asyncio.get_running_loop().create_task(
                self._dispatch(), name="upload-scheduler"
            )

    async def _dispatch(self) -> None:
        """While uploads wait: ask Imgur for the quota when due, and wake at each reset."""
        while self._uploads.count and not self._closed:
            if self._quota is not None and self._quota.probe_due():
                try:
                    await self._quota.probe()
                except Exception:
                    # The timer must outlive any failure, or waiting uploads would hang.
                    log.exception("checking Imgur's quota failed unexpectedly")
            self._changed.clear()
            wake = self._pump()
            if not self._uploads.count:
                break
            if self._quota is not None and self._quota.probe_due():
                continue
            await self._wait(wake)

    async def _wait(self, until: float | None) -> None:
        """Until ``until`` (unix time) or until the queue changes, whichever comes first."""
        if until is None:
            # The common case in a burst (every worker busy): no timer, and no task to race.
            await self._changed.wait()
            return
        delay = until - self._clock()
        if delay <= 0:
            await asyncio.sleep(0)
            return
        changed: asyncio.Future[object] = asyncio.ensure_future(self._changed.wait())
        waits = {changed}
        waits.add(asyncio.ensure_future(self._sleep(delay)))
        log.debug("upload queue waits %.1fs (%d waiting)", delay, self._uploads.count)
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
            await asyncio.gather(*waits, return_exceptions=True)


def _lane_key(origin: Origin) -> Hashable:
    """Guilds take turns; work from outside a guild takes turns by door and person."""
    if origin.guild_id is not None:
        return origin.guild_id
    return (origin.door, origin.requester_id or origin.owner_id)


def _member_key(origin: Origin) -> Hashable | None:
    """Who the cooldown applies to: whoever asked, or whoever posted (auto-rehost)."""
    return origin.requester_id if origin.requester_id is not None else origin.owner_id


def _request_key(origin: Origin) -> Hashable | None:
    """The attachments of one message form one request (None: each upload is its own)."""
    if origin.message_id is None:
        return None
    return (origin.door, origin.channel_id, origin.message_id)
