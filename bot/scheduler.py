"""When an upload may call Imgur: a bounded, fair queue in front of the Imgur client.

Every upload that needs Imgur waits for a *slot*. Slots are handed out

- to at most ``workers`` uploads at once;
- round-robin across guilds, and within a guild round-robin across members, so one busy
  server or one busy member is served turn about with the others, never ahead of them;
- to a member no sooner than ``member_cooldown`` seconds after their previous request began
  (the attachments of one message are one request);
- only while Imgur's quota allows (``QuotaKeeper``): auto-rehost pauses at the reserve,
  people's own commands go on until it is gone; when nothing may go, the queue waits for the
  reset and resumes by itself. A 429 that comes anyway pauses every upload until its reset.

At most ``queue_limit`` uploads wait (and at most ``guild_limit`` from one guild); more are
refused with ``QueueFull`` and a sentence saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Final

from bot.errors import RehostError
from bot.imgur import ImgurRateLimited
from bot.ledger import Origin
from bot.quota import Allowance, QuotaKeeper

log = logging.getLogger(__name__)

UNKNOWN_RESET_PAUSE: Final = 900.0  # a 429 without a reset time pauses this long
TURNS_KEPT: Final = 4096  # guilds and members whose last turn is remembered for fairness


class QueueFull(RehostError):
    """Too much work is waiting; the request was refused rather than queued."""


@dataclass(frozen=True)
class QueueStatus:
    """A snapshot for ``/imgur-status``."""

    waiting: int
    active: int
    workers: int
    queue_limit: int
    waiting_by_guild: dict[int | None, int]
    resume_at: float | None  # people's own uploads are paused until then (None: not paused)
    auto_resume_at: float | None  # auto-rehost is paused until then (None: not paused)
    paused_reason: str | None  # why anything is paused, for people


@dataclass(eq=False)
class _Ticket:
    """One upload waiting for, or holding, a slot."""

    origin: Origin
    lane: Hashable
    member: Hashable | None
    request: Hashable | None
    manual: bool
    enqueued_at: float
    granted: asyncio.Future[None]


@dataclass
class _Member:
    tickets: deque[_Ticket] = field(default_factory=deque)


@dataclass
class _Lane:
    """One guild's (or one door's) waiting uploads, by member."""

    members: OrderedDict[Hashable | None, _Member] = field(default_factory=OrderedDict)
    count: int = 0


@dataclass
class _Cooldown:
    started_at: float
    request: Hashable | None


class Scheduler:
    """Admits uploads to Imgur fairly, within the quota, at most ``workers`` at a time.

    Args:
        workers: uploads that may run at once.
        queue_limit: uploads that may wait; more are refused.
        guild_limit: uploads one guild may have waiting (default a quarter of the queue).
        member_cooldown: seconds between the starts of one member's requests.
        quota: the quota keeper; None lets every upload through as far as the slots allow.
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
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if workers < 1 or queue_limit < 1:
            raise ValueError("workers and queue_limit must be at least 1")
        self._workers = workers
        self._queue_limit = queue_limit
        self._guild_limit = guild_limit if guild_limit is not None else max(1, queue_limit // 4)
        self._cooldown = member_cooldown
        self._quota = quota
        self._clock = clock
        self._sleep = sleep

        self._lanes: OrderedDict[Hashable, _Lane] = OrderedDict()
        self._waiting = 0
        self._active = 0
        self._cooldowns: dict[Hashable, _Cooldown] = {}
        self._turn = 0
        self._lane_turns: dict[Hashable, int] = {}
        self._member_turns: dict[Hashable | None, int] = {}
        self._blocked_until: float | None = None
        self._changed = asyncio.Event()
        self._dispatcher: asyncio.Task[None] | None = None
        self._closed = False

    # --- what the doors see -----------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Uploads waiting for their turn."""
        return self._waiting

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
        """Uploads from ``guild_id`` waiting for their turn."""
        return sum(
            lane.count
            for key, lane in self._lanes.items()
            if (key if isinstance(key, int) else None) == guild_id
        )

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
        by_guild: dict[int | None, int] = {}
        for key, lane in self._lanes.items():
            guild = key if isinstance(key, int) else None
            by_guild[guild] = by_guild.get(guild, 0) + lane.count
        manual = self._pause(manual=True)
        auto = self._pause(manual=False)
        return QueueStatus(
            waiting=self._waiting,
            active=self._active,
            workers=self._workers,
            queue_limit=self._queue_limit,
            waiting_by_guild=by_guild,
            resume_at=manual.resume_at,
            auto_resume_at=auto.resume_at,
            paused_reason=manual.reason or auto.reason,
        )

    def estimate(self, origin: Origin) -> float | None:
        """When a new upload from ``origin`` would probably start; None if at once.

        Counts the uploads the fair order would serve before it, the member's cooldown and
        the quota; it cannot know how long uploads take, so it is a lower bound while the
        quota is not the limit.
        """
        now = self._clock()
        manual = not origin.auto
        lane_key = _lane_key(origin)
        own = self._lanes[lane_key].count if lane_key in self._lanes else 0
        ahead = own + sum(
            min(lane.count, own + 1) for key, lane in self._lanes.items() if key != lane_key
        )

        start = now
        if self._blocked_until is not None:
            start = max(start, self._blocked_until)
        if self._quota is not None:
            by_quota = self._quota.forecast(ahead, manual=manual, in_flight=self._active)
            if by_quota is None:
                pause = self._pause(manual=manual)
                by_quota = pause.resume_at if pause.resume_at is not None else now
            start = max(start, by_quota)
        member = _member_key(origin)
        cooldown = self._cooldowns.get(member) if member is not None else None
        if cooldown is not None and self._cooldown > 0:
            own_requests = len(
                {t.request for t in self._member_tickets(lane_key, member)} - {cooldown.request}
            )
            start = max(start, cooldown.started_at + self._cooldown * (own_requests + 1))
        if ahead < self._workers - self._active and start <= now:
            return None
        return start

    # --- admission --------------------------------------------------------------------------

    def check_room(self, origin: Origin) -> None:
        """Refuse early, before anything is downloaded, when the queue is full."""
        if self._waiting >= self._queue_limit:
            raise QueueFull(
                f"The bot already has {self._waiting} uploads waiting; try again in a few minutes."
            )
        lane = self._lanes.get(_lane_key(origin))
        if lane is not None and lane.count >= self._guild_limit:
            where = "this server" if origin.guild_id is not None else "you"
            raise QueueFull(
                f"There are already {lane.count} uploads waiting from {where}; "
                "try again when some have finished."
            )

    @contextlib.asynccontextmanager
    async def slot(self, origin: Origin) -> AsyncIterator[None]:
        """Wait for a turn to call Imgur; hold it for the body of the ``async with``.

        Raises:
            QueueFull: the queue (or this guild's share of it) is full.
        """
        if self._closed:
            raise QueueFull("The bot is shutting down; try again in a moment.")
        self.check_room(origin)
        ticket = self._enqueue(origin)
        self._pump()
        if not ticket.granted.done():
            self._ensure_dispatcher()
            try:
                await ticket.granted
            except BaseException:
                if ticket.granted.done() and not ticket.granted.cancelled():
                    self._release()  # granted just as the waiter was cancelled
                else:
                    self._withdraw(ticket)
                raise
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
        """Refuse new work, fail what waits, and stop the background timer."""
        self._closed = True
        for lane in self._lanes.values():
            for member in lane.members.values():
                for ticket in member.tickets:
                    if not ticket.granted.done():
                        ticket.granted.set_exception(
                            QueueFull("The bot is shutting down; try again in a moment.")
                        )
        self._lanes.clear()
        self._waiting = 0
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
            self._dispatcher = None

    # --- the queue --------------------------------------------------------------------------

    def _enqueue(self, origin: Origin) -> _Ticket:
        lane_key = _lane_key(origin)
        ticket = _Ticket(
            origin=origin,
            lane=lane_key,
            member=_member_key(origin),
            request=_request_key(origin),
            manual=not origin.auto,
            enqueued_at=self._clock(),
            granted=asyncio.get_running_loop().create_future(),
        )
        lane = self._lanes.setdefault(lane_key, _Lane())
        lane.members.setdefault(ticket.member, _Member()).tickets.append(ticket)
        lane.count += 1
        self._waiting += 1
        self._changed.set()
        return ticket

    def _withdraw(self, ticket: _Ticket) -> None:
        """Take a ticket out of the queue (its waiter was cancelled)."""
        lane = self._lanes.get(ticket.lane)
        if lane is None:
            return
        member = lane.members.get(ticket.member)
        if member is None or ticket not in member.tickets:
            return
        member.tickets.remove(ticket)
        self._forget(ticket, lane, member)
        self._changed.set()

    def _forget(self, ticket: _Ticket, lane: _Lane, member: _Member) -> None:
        lane.count -= 1
        self._waiting -= 1
        if not member.tickets:
            del lane.members[ticket.member]
        if not lane.members:
            del self._lanes[ticket.lane]

    def _release(self) -> None:
        self._active -= 1
        self._pump()
        self._changed.set()

    def _member_tickets(self, lane_key: Hashable, member: Hashable | None) -> list[_Ticket]:
        lane = self._lanes.get(lane_key)
        if lane is None or member not in lane.members:
            return []
        return list(lane.members[member].tickets)

    def _pump(self) -> float | None:
        """Grant every slot that may be granted now; the next time to look again, if any."""
        if self._quota is not None and self._waiting and self._quota.probe_due():
            return self._clock()  # the dispatcher asks Imgur first
        wake: float | None = None
        while self._waiting and self._active < self._workers:
            ticket, wake = self._pick()
            if ticket is None:
                break
            self._start(ticket)
        return wake

    def _pick(self) -> tuple[_Ticket | None, float | None]:
        """The next ticket in fair order that may start now; else when one may.

        The fair order: the guild served longest ago first (a guild never served before goes
        first), within it the member served longest ago, within the member first come.
        """
        now = self._clock()
        wake: list[float] = []
        if self._blocked_until is not None:
            if now < self._blocked_until:
                return None, self._blocked_until
            self._blocked_until = None

        allowances: dict[bool, Allowance] = {}
        for lane_key in sorted(self._lanes, key=lambda key: self._lane_turns.get(key, -1)):
            lane = self._lanes[lane_key]
            members = sorted(lane.members, key=lambda key: self._member_turns.get(key, -1))
            for member_key in members:
                member = lane.members[member_key]
                for ticket in member.tickets:
                    ready_at = self._cooldown_ends(ticket, now)
                    if ready_at is not None:
                        wake.append(ready_at)
                        continue  # a later ticket may be part of the request under way
                    allowance = allowances.get(ticket.manual)
                    if allowance is None:
                        allowance = self._allowance(manual=ticket.manual)
                        allowances[ticket.manual] = allowance
                    if allowance.uploads > 0:
                        member.tickets.remove(ticket)
                        self._forget(ticket, lane, member)
                        return ticket, None
                    if allowance.resume_at is not None:
                        wake.append(allowance.resume_at)

        if self._quota is not None:
            probe_at = self._quota.probe_at()
            if probe_at is not None:
                wake.append(probe_at)
        return None, min(wake) if wake else None

    def _start(self, ticket: _Ticket) -> None:
        self._active += 1
        self._turn += 1
        self._lane_turns[ticket.lane] = self._turn
        self._member_turns[ticket.member] = self._turn
        if len(self._lane_turns) > TURNS_KEPT or len(self._member_turns) > TURNS_KEPT:
            self._forget_old_turns()
        if ticket.member is not None:
            self._cooldowns[ticket.member] = _Cooldown(self._clock(), ticket.request)
            self._forget_old_cooldowns()
        ticket.granted.set_result(None)

    def _forget_old_turns(self) -> None:
        """Drop turns of lanes and members long idle; they count as never served again."""
        horizon = self._turn - TURNS_KEPT // 2
        for turns in (self._lane_turns, self._member_turns):
            for key in [k for k, turn in turns.items() if turn < horizon]:
                del turns[key]

    def _cooldown_ends(self, ticket: _Ticket, now: float) -> float | None:
        """When the ticket's member may start it, if not now."""
        if ticket.member is None or self._cooldown <= 0:
            return None
        last = self._cooldowns.get(ticket.member)
        if last is None or (ticket.request is not None and ticket.request == last.request):
            return None
        ends = last.started_at + self._cooldown
        return ends if now < ends else None

    def _forget_old_cooldowns(self) -> None:
        if len(self._cooldowns) < 1024:
            return
        horizon = self._clock() - self._cooldown
        for key in [k for k, c in self._cooldowns.items() if c.started_at < horizon]:
            del self._cooldowns[key]

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
        while self._waiting and not self._closed:
            if self._quota is not None and self._quota.probe_due():
                await self._quota.probe()
            self._changed.clear()
            wake = self._pump()
            if not self._waiting:
                break
            if self._quota is not None and self._quota.probe_due():
                continue
            await self._wait(wake)

    async def _wait(self, until: float | None) -> None:
        """Until ``until`` (unix time) or until the queue changes, whichever comes first."""
        changed: asyncio.Future[object] = asyncio.ensure_future(self._changed.wait())
        waits = {changed}
        if until is not None:
            delay = until - self._clock()
            if delay <= 0:
                changed.cancel()
                await asyncio.sleep(0)
                return
            waits.add(asyncio.ensure_future(self._sleep(delay)))
            log.debug("upload queue waits %.1fs (%d waiting)", delay, self._waiting)
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
    member = origin.requester_id if origin.requester_id is not None else origin.owner_id
    return member


def _request_key(origin: Origin) -> Hashable | None:
    """The attachments of one message form one request (None: each upload is its own)."""
    if origin.message_id is None:
        return None
    return (origin.door, origin.channel_id, origin.message_id)
