"""Imgur's quota as the bot sees it: what is left, what is kept back, and when it refills.

Imgur counts three budgets (see IMGUR_API.md): credits per IP per hour (the *user* budget,
its reset sent as a unix time), credits per application per day (the *client* budget, sent
with no reset time at all) and POST requests per IP per hour. An upload costs about ten
credits and one POST. Running out of the daily budget five times in a month blocks the
application for the rest of it, so the bot stops *before* a budget is spent instead of
learning from a 429.

``QuotaKeeper`` reads the latest headers (``ImgurClient.quota``), subtracts the uploads still
in flight, keeps ``reserve`` credits back from auto-rehost, and says how many uploads may
start now and, if none, when more may.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final, Protocol

from bot.imgur import Credits, ImgurError, Quota

log = logging.getLogger(__name__)

UPLOAD_CREDITS: Final = 10  # what Imgur charges for one upload
HOUR: Final = 3600.0
DAY: Final = 86400.0


class QuotaSource(Protocol):
    """What the keeper needs of the Imgur client."""

    @property
    def quota(self) -> Quota: ...

    async def credits(self) -> Credits: ...


@dataclass(frozen=True)
class Allowance:
    """How many uploads may start now; if none, when more may (None: not known)."""

    uploads: int
    resume_at: float | None = None
    reason: str | None = None  # a phrase for people: "Imgur's hourly upload quota is spent"


@dataclass(frozen=True)
class _Budget:
    """One of Imgur's budgets, as far as it is known, in the unit it is counted in."""

    name: str
    remaining: int
    limit: int | None
    reset_at: float | None  # when it refills; an estimate for the daily budget
    period: float
    cost: int  # per upload
    reserve: int  # kept back from auto-rehost
    floor: int  # kept back from every upload
    trusted_reset: bool  # whether ``reset_at`` came from Imgur (else it is only an estimate)


class QuotaKeeper:
    """Decides whether an upload may call Imgur now without running into a 429.

    Args:
        imgur: the Imgur client (its ``quota`` and ``credits()``).
        reserve: credits kept back for commands people run themselves; auto-rehost pauses
            when no more than this is left.
        upload_cost: credits one upload costs.
        floor: credits never spent on uploads, so deleting stays possible.
        clock: unix time, the same clock the Imgur client uses.
        reset_margin: seconds to wait past an announced reset, for clock differences.
        probe_interval: how often to ask ``GET /3/credits`` while the daily budget is spent
            (Imgur does not say when it refills).
    """

    def __init__(
        self,
        imgur: QuotaSource,
        *,
        reserve: int = 100,
        upload_cost: int = UPLOAD_CREDITS,
        floor: int = UPLOAD_CREDITS,
        clock: Callable[[], float] = time.time,
        reset_margin: float = 5.0,
        probe_interval: float = 900.0,
    ) -> None:
        if reserve < 0 or floor < 0 or upload_cost < 1:
            raise ValueError("reserve and floor must not be negative; upload_cost at least 1")
        self._imgur = imgur
        self._reserve = reserve
        self._cost = upload_cost
        self._floor = floor
        self._clock = clock
        self._margin = reset_margin
        self._probe_interval = probe_interval

        self._probed: Quota | None = None  # the last GET /3/credits, as a Quota
        self._last_probe_at: float | None = None
        self._probe_wanted = False
        self._probe_after: float | None = None
        self._retry_interval = min(60.0, probe_interval)

        # What is learnt about the daily budget, which comes with no reset time.
        self._seen_at: float | None = None
        self._seen_client: int | None = None
        self._client_spending_since: float | None = None
        self._client_refilled_at: float | None = None

    @property
    def reserve(self) -> int:
        return self._reserve

    # --- what may start ---------------------------------------------------------------------

    def allowance(self, *, manual: bool, in_flight: int = 0) -> Allowance:
        """How many more uploads (of a person's command if ``manual``, else auto) may start.

        ``in_flight`` uploads have started and not been answered; each is counted as spent.
        """
        view = self.view()
        now = self._clock()
        if view.observed_at is None:
            # Nothing is known yet: one upload at a time until Imgur's headers tell more.
            return Allowance(max(0, 1 - in_flight))

        uploads: int | None = None
        waits: list[tuple[float | None, str]] = []
        refilled_unseen = False
        for budget in self._budgets(view, now):
            usable = self._usable(budget, manual=manual, now=now)
            if budget.trusted_reset and self._assumed_refilled(budget, now):
                refilled_unseen = True
            fits = max(0, (usable - in_flight * budget.cost) // budget.cost)
            uploads = fits if uploads is None else min(uploads, fits)
            if usable < budget.cost:
                waits.append((self._next_refill(budget, now), _spent_phrase(budget.name)))

        if uploads is None:
            uploads = max(0, 1 - in_flight) if refilled_unseen else 1_000_000
        if refilled_unseen:
            # A reset has passed but no answer since confirms it: try one, then believe it.
            uploads = min(uploads, max(0, 1 - in_flight))
        if uploads > 0 or not waits:
            return Allowance(uploads)

        times = [at for at, _ in waits]
        if any(at is None for at in times):
            reason = next(phrase for at, phrase in waits if at is None)
            return Allowance(0, None, reason)
        latest, reason = max(((at, phrase) for at, phrase in waits if at is not None))
        return Allowance(0, latest, reason)

    def forecast(self, ahead: int, *, manual: bool, in_flight: int = 0) -> float | None:
        """When the upload with ``ahead`` others before it may start, by the budgets alone.

        The current time when it fits now; None when no estimate can be made.
        """
        view = self.view()
        now = self._clock()
        if view.observed_at is None:
            return now

        start = now
        for budget in self._budgets(view, now):
            usable = self._usable(budget, manual=manual, now=now)
            fits_now = max(0, (usable - in_flight * budget.cost) // budget.cost)
            if ahead < fits_now:
                continue
            per_period = self._usable_of(budget.limit, budget, manual) // budget.cost
            refill = self._next_refill(budget, now)
            if per_period <= 0 or refill is None:
                return None
            periods = math.ceil((ahead + 1 - fits_now) / per_period)
            start = max(start, refill + (periods - 1) * budget.period)
        return start

    # --- what is known ----------------------------------------------------------------------

    def view(self) -> Quota:
        """The newest quota known: the client's headers, or a newer ``GET /3/credits``."""
        seen = self._imgur.quota
        probed = self._probed
        newer = (
            probed is not None
            and probed.observed_at is not None
            and (seen.observed_at is None or probed.observed_at > seen.observed_at)
        )
        if newer:
            assert probed is not None
            seen = replace(
                seen,
                user_limit=probed.user_limit,
                user_remaining=probed.user_remaining,
                user_reset=probed.user_reset,
                client_limit=probed.client_limit,
                client_remaining=probed.client_remaining,
                observed_at=probed.observed_at,
            )
        self._learn_daily_budget(seen)
        return seen

    def rate_limited(self, reset_at: float | None) -> None:
        """Imgur answered 429 after all: ask it for the budgets once ``reset_at`` is past."""
        self._probe_wanted = True
        self._probe_after = reset_at

    def probe_at(self) -> float | None:
        """When ``probe()`` should next run before uploads go on; None when not needed.

        Wanted after a 429, and every ``probe_interval`` while the daily budget is spent,
        since Imgur does not say when it refills. Before the first answer nothing is known,
        and uploads go one at a time until an answer tells the budgets.
        """
        last = self._last_probe_at
        if self._probe_wanted:
            due = self._clock() if last is None else last + self._retry_interval
            return max(due, self._probe_after or 0.0)
        view = self.view()
        if view.client_remaining is not None and view.client_remaining - self._floor < self._cost:
            return self._clock() if last is None else last + self._probe_interval
        return None

    def probe_due(self) -> bool:
        """Whether ``probe()`` should run now."""
        at = self.probe_at()
        return at is not None and at <= self._clock()

    async def probe(self) -> None:
        """Ask Imgur for the credits left (``GET /3/credits`` costs none)."""
        now = self._clock()
        self._last_probe_at = now
        try:
            credits = await self._imgur.credits()
        except ImgurError as exc:
            log.warning("could not check Imgur's quota: %s", exc)
            return
        self._probe_wanted = False
        self._probed = Quota(
            user_limit=credits.user_limit,
            user_remaining=credits.user_remaining,
            user_reset=credits.user_reset,
            client_limit=credits.client_limit,
            client_remaining=credits.client_remaining,
            observed_at=now,
        )
        log.info(
            "Imgur quota: %d of %d hourly credits, %d of %d daily credits left",
            credits.user_remaining,
            credits.user_limit,
            credits.client_remaining,
            credits.client_limit,
        )

    # --- the arithmetic ---------------------------------------------------------------------

    def _budgets(self, view: Quota, now: float) -> list[_Budget]:
        budgets = []
        if view.user_remaining is not None:
            budgets.append(
                _Budget(
                    name="hourly",
                    remaining=view.user_remaining,
                    limit=view.user_limit,
                    reset_at=view.user_reset,
                    period=HOUR,
                    cost=self._cost,
                    reserve=self._reserve,
                    floor=self._floor,
                    trusted_reset=True,
                )
            )
        if view.client_remaining is not None:
            budgets.append(
                _Budget(
                    name="daily",
                    remaining=view.client_remaining,
                    limit=view.client_limit,
                    reset_at=self.daily_reset_estimate(),
                    period=DAY,
                    cost=self._cost,
                    reserve=self._reserve,
                    floor=self._floor,
                    trusted_reset=False,
                )
            )
        if view.post_remaining is not None:
            # The POST limit counts requests, so the reserve is kept in uploads there.
            budgets.append(
                _Budget(
                    name="post",
                    remaining=view.post_remaining,
                    limit=view.post_limit,
                    reset_at=view.post_reset,
                    period=HOUR,
                    cost=1,
                    reserve=math.ceil(self._reserve / self._cost),
                    floor=math.ceil(self._floor / self._cost),
                    trusted_reset=True,
                )
            )
        return budgets

    def _assumed_refilled(self, budget: _Budget, now: float) -> bool:
        """An announced reset has passed since the budget was last seen."""
        if budget.reset_at is None or budget.limit is None:
            return False
        return now >= budget.reset_at + self._margin

    def _usable(self, budget: _Budget, *, manual: bool, now: float) -> int:
        """Units this class of upload may still spend from ``budget``, in flight not counted."""
        remaining = budget.remaining
        if budget.trusted_reset and self._assumed_refilled(budget, now):
            remaining = budget.limit or remaining
        return self._usable_of(remaining, budget, manual)

    @staticmethod
    def _usable_of(remaining: int | None, budget: _Budget, manual: bool) -> int:
        if remaining is None:
            return 0
        kept = budget.floor if manual else max(budget.floor, budget.reserve)
        return max(0, remaining - kept)

    def _next_refill(self, budget: _Budget, now: float) -> float | None:
        """The next time ``budget`` refills after ``now`` (with the margin), if known."""
        if budget.reset_at is None:
            return None
        at = budget.reset_at + (self._margin if budget.trusted_reset else 0.0)
        if at <= now:
            at += budget.period * (math.floor((now - at) / budget.period) + 1)
        return at

    def daily_reset_estimate(self) -> float | None:
        """The latest time the daily budget can refill, from when spending was first seen.

        Imgur sends no reset time for it; the day began no later than the first answer that
        showed it below its limit, so it ends no later than a day after that.
        """
        candidates = [
            at + DAY
            for at in (self._client_spending_since, self._client_refilled_at)
            if at is not None
        ]
        return min(candidates) if candidates else None

    def _learn_daily_budget(self, view: Quota) -> None:
        if view.observed_at is None or view.client_remaining is None:
            return
        if self._seen_at is not None and view.observed_at <= self._seen_at:
            return

        previous = self._seen_client
        if previous is not None and view.client_remaining > previous:
            self._client_refilled_at = view.observed_at
            self._client_spending_since = None
            log.info("Imgur's daily quota has been refilled")
        limit = view.client_limit
        if (
            limit is not None
            and view.client_remaining < limit
            and self._client_spending_since is None
        ):
            self._client_spending_since = view.observed_at
        self._seen_at = view.observed_at
        self._seen_client = view.client_remaining


def _spent_phrase(budget: str) -> str:
    if budget == "post":
        return "Imgur's hourly limit on uploads is reached"
    return f"Imgur's {budget} upload quota is used up"
