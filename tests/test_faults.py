"""Imgur failing in every way it is known to, through the real pipeline and the command line.

Each fault in ``FAULTS`` is injected into the Imgur stand-in and one rehost runs through the
services as production wires them (pipeline, scheduler with its quota keeper, ledger). Each
must end in a link or in one sentence for the person who asked; retries stay bounded; a
refusal is never retried; and the books must balance afterwards: no upload left pending,
every image Imgur holds either on record with its deletehash or traceable to a failed row
with the same bytes (an *unconfirmed* copy, only possible where Imgur stored the file but its
answer never arrived).
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from bench.crash import Accounting, account, digests_of, ledger_rows
from bot.errors import RehostError
from bot.imgur import (
    ImgurAuthError,
    ImgurError,
    ImgurNotFound,
    ImgurRateLimited,
    ImgurRejected,
    ImgurUnavailable,
)
from bot.ledger import Origin
from bot.services import Services
from bot.sources import StreamSource
from tests import samples
from tests.imgur_standin import ImgurStandIn

ROOT = Path(__file__).resolve().parent.parent
ORIGIN = Origin(door="http")
LINK = "link"


@dataclass(frozen=True)
class Fault:
    """One way Imgur fails, and what the person who asked must see."""

    id: str
    fault: str
    outcome: type[ImgurError] | str  # LINK, or the error they get
    calls: int  # upload requests Imgur receives in all: retries are bounded
    times: int = 1
    status: int | None = None
    shape: str | None = None
    delay: float = 2.0
    big: bool = False  # a file large enough that a dropped connection cuts it mid-way
    unconfirmed: int = 0  # copies Imgur may keep without the bot ever seeing the deletehash
    read_timeout: float | None = None  # the client's read timeout, if not the production one
    why: str = ""


FAULTS = [
    Fault("429-errors-shape", "rate_limited", ImgurRateLimited, 1, shape="errors",
          why="429 with Imgur's {errors: [...]} body: not retried"),
    Fault("429-nested-shape", "rate_limited", ImgurRateLimited, 1, shape="nested",
          why="429 with the {data: {error: {message}}} body"),
    Fault("429-html", "rate_limited", ImgurRateLimited, 1, shape="html",
          why="429 as an HTML page"),
    Fault("5xx-then-ok", "server_error", LINK, 3, times=2, why="two 500s, then success"),
    Fault("5xx-persistent", "server_error", ImgurUnavailable, 3, times=9,
          why="500 every time: three attempts, then one sentence"),
    Fault("over-capacity-403", "over_capacity_403", LINK, 2,
          why="over capacity on 403: not mistaken for a bad client id"),
    Fault("over-capacity-500", "over_capacity_500", LINK, 3, times=2,
          why="over capacity on 500, twice"),
    Fault("over-capacity-persistent", "over_capacity_500", ImgurUnavailable, 3, times=9,
          why="over capacity for longer than the retries"),
    Fault("html-500", "html", LINK, 2, why="a 500 HTML page instead of JSON"),
    Fault("html-403", "html", LINK, 2, status=403, why="the over-capacity page on 403"),
    Fault("empty-502", "empty", LINK, 2, why="a 502 with no body"),
    Fault("cut-json-502", "invalid_json", LINK, 2, status=502, why="a 502 with cut-off JSON"),
    Fault("empty-200", "empty", ImgurUnavailable, 1, status=200,
          why="a 200 with no body: Imgur stored it, so it is not sent again"),
    Fault("cut-json-200", "invalid_json", ImgurUnavailable, 1,
          why="a 200 with JSON cut off: not sent again"),
    Fault("invalid-client", "invalid_client", ImgurAuthError, 1,
          why="the client id refused: an operator's problem, not retried"),
    Fault("rejected", "reject", ImgurRejected, 1, why="a 400 refusal: never retried"),
    Fault("drop-mid-upload", "drop", LINK, 2, big=True,
          why="the connection cut while the file is still going out: sent again"),
    Fault("timeout", "slow", ImgurUnavailable, 1, delay=1.5, unconfirmed=1, read_timeout=0.5,
          why="no answer within the read timeout: Imgur stored it, the bot never learns how "
              "to delete it, and the attempt stays on record as failed with its digest"),
    Fault("very-slow-answer", "slow", LINK, 1, delay=0.8,
          why="an answer slower than usual but inside the timeout"),
    Fault("malformed-link", "bad_link", ImgurUnavailable, 1,
          why="stored, but answered with a link that is no address: nothing to record or "
              "show, so the upload is deleted again through the deletehash it did carry"),
]  # fmt: skip


@pytest.fixture
def fast(services: Services) -> Services:
    """The production services, with retries that do not wait."""

    async def no_wait(seconds: float) -> None:
        return None

    services.imgur._sleep = no_wait  # type: ignore[attr-defined]
    return services


def books(services: Services, imgur: ImgurStandIn, sent: Sequence[bytes]) -> Accounting:
    rows = ledger_rows(services.settings.database_path)
    return account(imgur.images.values(), rows, digests_of(sent))


async def assert_books_balance(
    services: Services, imgur: ImgurStandIn, *, unconfirmed: int = 0, sent: Sequence[bytes] = ()
) -> Accounting:
    """Every image on Imgur is on record, deleted again, or (at most ``unconfirmed``) one of
    the files ``sent`` whose attempt is on record without an answer."""
    result = books(services, imgur, sent)
    assert await services.ledger.pending_uploads() == []
    assert result.lost == [], "an image on Imgur with no trace in the ledger"
    assert len(result.unconfirmed) <= unconfirmed
    return result


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 256 * 1024):
        yield data[start : start + 256 * 1024]


def _file(fault: Fault) -> bytes:
    seed = FAULTS.index(fault) + 1
    # Larger than the socket buffers, so the cut comes while the client is still sending.
    return samples.big_png(12_000_000, seed=seed) if fault.big else samples.png(seed=seed)


@pytest.mark.parametrize("fault", FAULTS, ids=[f.id for f in FAULTS])
async def test_imgur_fault_ends_in_a_link_or_one_sentence(
    fault: Fault, fast: Services, imgur: ImgurStandIn
) -> None:
    imgur.fail_next(
        fault.fault,  # type: ignore[arg-type]
        times=fault.times,
        path="/3/image",
        status=fault.status,
        shape=fault.shape,  # type: ignore[arg-type]
        delay=fault.delay,
    )
    data = _file(fault)
    if fault.read_timeout is not None:
        fast.imgur._upload_timeout = aiohttp.ClientTimeout(  # type: ignore[attr-defined]
            total=None, sock_connect=5, sock_read=fault.read_timeout
        )

    try:
        rehost = await fast.pipeline.rehost(StreamSource(_chunks(data), "cat.png"), ORIGIN)
    except RehostError as exc:
        outcome: object = exc
    else:
        outcome = rehost

    assert imgur.upload_calls == fault.calls, fault.why
    if fault.outcome == LINK:
        assert not isinstance(outcome, Exception), f"{fault.why}: {outcome!r}"
        image = imgur.images[outcome.upload.imgur_id]  # type: ignore[attr-defined]
        assert outcome.upload.deletehash == image.deletehash  # type: ignore[attr-defined]
    else:
        assert type(outcome) is fault.outcome, f"{fault.why}: {outcome!r}"
        text = str(outcome)
        assert text
        assert "\n" not in text
        assert len(text) < 200
        assert imgur.client_id not in text
    if fault.fault == "slow":
        # Let the late answer go out so the stand-in's record is complete.
        await imgur.wait_for(lambda: all(r.status for r in imgur.uploads()), within=10)
    result = await assert_books_balance(fast, imgur, unconfirmed=fault.unconfirmed, sent=[data])
    assert len(result.unconfirmed) == fault.unconfirmed


async def test_a_connection_cut_around_the_last_byte_is_resent_only_if_unfinished(
    fast: Services, imgur: ImgurStandIn
) -> None:
    # The stand-in cuts the connection once it has read some of a small request: whether
    # the client had sent the last byte by then is a race, and the client must act on what
    # it knows. Unfinished: sent again. Finished: not sent again (Imgur may hold it).
    imgur.fail_next("drop", path="/3/image")

    try:
        outcome: object = await fast.pipeline.rehost(
            StreamSource(_chunks(samples.png(seed=60)), "a.png"), ORIGIN
        )
    except RehostError as exc:
        outcome = exc

    if imgur.upload_calls == 1:
        assert isinstance(outcome, ImgurUnavailable)
        assert "did not confirm" in str(outcome)
    else:
        assert imgur.upload_calls == 2
        assert not isinstance(outcome, Exception)
    await assert_books_balance(fast, imgur)


async def test_a_spent_quota_holds_the_next_upload_back_instead_of_calling_imgur(
    fast: Services, imgur: ImgurStandIn
) -> None:
    imgur.user_remaining = 10  # one upload's worth: the answer's headers then say 0

    first = await fast.pipeline.rehost(StreamSource(_chunks(samples.png(seed=70)), "a.png"), ORIGIN)
    second = asyncio.ensure_future(
        fast.pipeline.rehost(StreamSource(_chunks(samples.png(seed=71)), "b.png"), ORIGIN)
    )
    done, _ = await asyncio.wait({second}, timeout=0.5)
    scheduler = fast.pipeline.scheduler
    resume_at = scheduler.resume_at
    second.cancel()
    await asyncio.gather(second, return_exceptions=True)

    assert first.upload.state == "done"
    assert not done, "the second upload must wait for the quota, not fail or go through"
    assert imgur.upload_calls == 1, "Imgur said the quota is spent; nothing may hammer it"
    assert resume_at is not None
    assert abs(resume_at - imgur.user_reset) < 120
    await assert_books_balance(fast, imgur)


async def test_a_429_pauses_every_later_upload_until_its_reset(
    fast: Services, imgur: ImgurStandIn
) -> None:
    imgur.fail_next("rate_limited", path="/3/image")

    with pytest.raises(ImgurRateLimited):
        await fast.pipeline.rehost(StreamSource(_chunks(samples.png(seed=72)), "a.png"), ORIGIN)
    later = asyncio.ensure_future(
        fast.pipeline.rehost(StreamSource(_chunks(samples.png(seed=73)), "b.png"), ORIGIN)
    )
    done, _ = await asyncio.wait({later}, timeout=0.5)
    later.cancel()
    await asyncio.gather(later, return_exceptions=True)

    assert not done
    assert imgur.upload_calls == 1
    assert fast.pipeline.scheduler.resume_at is not None


# --- taking down: the deletehash is never lost because Imgur said no ------------------------


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("rate_limited", ImgurRateLimited),
        ("server_error", ImgurUnavailable),
        ("over_capacity_500", ImgurUnavailable),
        ("drop", ImgurUnavailable),
        ("invalid_client", ImgurAuthError),
    ],
)
async def test_a_failed_delete_keeps_the_record_live_for_another_try(
    fault: str, error: type[ImgurError], fast: Services, imgur: ImgurStandIn
) -> None:
    rehost = await fast.pipeline.rehost(
        StreamSource(_chunks(samples.png(seed=80)), "a.png"), ORIGIN
    )
    imgur.fail_next(fault, times=9, method="DELETE")  # type: ignore[arg-type]

    with pytest.raises(error):
        await fast.pipeline.delete_upload(rehost.upload, by=1, reason="test")

    kept = await fast.ledger.get_upload(rehost.upload.imgur_id)  # type: ignore[arg-type]
    assert kept is not None
    assert kept.state == "done"
    assert kept.deletehash == rehost.upload.deletehash
    deletes = [r for r in imgur.requests if r.method == "DELETE"]
    # Three attempts at most; aiohttp itself resends a DELETE once on a dropped connection.
    assert 1 <= len(deletes) <= (6 if fault == "drop" else 3)
    if fault in {"rate_limited", "invalid_client"}:
        assert len(deletes) == 1, "a refusal is never retried"

    imgur.clear_faults()
    await fast.pipeline.delete_upload(kept, by=1, reason="test")
    assert imgur.images[kept.imgur_id].deleted  # type: ignore[index]


async def test_deleting_what_imgur_already_lost_closes_the_record(
    fast: Services, imgur: ImgurStandIn
) -> None:
    rehost = await fast.pipeline.rehost(
        StreamSource(_chunks(samples.png(seed=81)), "a.png"), ORIGIN
    )
    del imgur.images[rehost.upload.imgur_id]  # type: ignore[arg-type]

    await fast.pipeline.delete_upload(rehost.upload, by=1, reason="test")

    gone = await fast.ledger.get_upload(rehost.upload.imgur_id)  # type: ignore[arg-type]
    assert gone is not None
    assert gone.state == "deleted"


async def test_a_malformed_deletehash_is_refused_before_any_request(
    fast: Services, imgur: ImgurStandIn
) -> None:
    with pytest.raises(ImgurNotFound):
        await fast.imgur.delete_image("no/such hash")

    assert not [r for r in imgur.requests if r.method == "DELETE"]


async def test_an_upload_imgur_no_longer_knows_is_closed_on_record(
    fast: Services, imgur: ImgurStandIn
) -> None:
    rehost = await fast.pipeline.rehost(
        StreamSource(_chunks(samples.png(seed=82)), "a.png"), ORIGIN
    )
    del imgur.images[rehost.upload.imgur_id]  # type: ignore[arg-type]

    await fast.pipeline.delete_upload(rehost.upload, by=1, reason="test")

    stored = await fast.ledger.get_upload(rehost.upload.imgur_id)  # type: ignore[arg-type]
    assert stored is not None
    assert stored.state == "deleted"
    assert len([r for r in imgur.requests if r.method == "DELETE"]) == 1


# --- a burst with faults mixed in ------------------------------------------------------------


async def test_a_burst_with_mixed_faults_answers_everyone_and_balances(
    fast: Services, imgur: ImgurStandIn
) -> None:
    chooser = random.Random(6)
    mix = ["server_error", "over_capacity_500", "html", "empty", "drop", "reject"]
    for _ in range(12):
        imgur.fail_next(chooser.choice(mix), path="/3/image")  # type: ignore[arg-type]

    async def one(seed: int) -> object:
        source = StreamSource(_chunks(samples.png(seed=200 + seed)), f"{seed}.png")
        try:
            return await fast.pipeline.rehost(source, Origin(door="http", requester_id=seed))
        except RehostError as exc:
            return exc

    outcomes = await asyncio.wait_for(asyncio.gather(*(one(s) for s in range(24))), 60)

    links = [o for o in outcomes if not isinstance(o, Exception)]
    errors = [o for o in outcomes if isinstance(o, RehostError)]
    assert len(links) + len(errors) == 24, "every request gets an answer"
    assert links
    assert imgur.upload_calls <= 24 * 3
    result = await assert_books_balance(fast, imgur)
    assert result.recorded == len(links)


# --- the same through the command line, as a process -----------------------------------------


def cli_env(imgur: ImgurStandIn, tmp_path: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "IMGUR_CLIENT_ID": imgur.client_id,
        "IMGUR_API_URL": imgur.url,
        "DATABASE_PATH": str(tmp_path / "ledger.sqlite3"),
    }


async def upload(env: dict[str, str], cwd: Path, *paths: Path) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "upload", *map(str, paths), cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def pngs(folder: Path, count: int, seed: int) -> list[Path]:
    paths = []
    for index in range(count):
        path = folder / f"file{index}.png"
        path.write_bytes(samples.png(seed=seed + index))
        paths.append(path)
    return paths


async def test_command_line_names_every_file_a_spent_quota_kept_back(
    imgur: ImgurStandIn, tmp_path: Path
) -> None:
    imgur.user_remaining = 10
    paths = pngs(tmp_path, 4, seed=90)

    code, out, err = await upload(cli_env(imgur, tmp_path), tmp_path, *paths)

    lines = err.splitlines()
    assert code == 1
    assert len(out.split()) == 1
    assert len(lines) == 3, err
    assert all("quota is spent" in line for line in lines)
    assert imgur.upload_calls == 1


async def test_command_line_stops_calling_imgur_after_a_429(
    imgur: ImgurStandIn, tmp_path: Path
) -> None:
    imgur.fail_next("rate_limited", path="/3/image")
    paths = pngs(tmp_path, 3, seed=95)

    code, out, err = await upload(cli_env(imgur, tmp_path), tmp_path, *paths)

    assert code == 1
    assert out == ""
    assert len(err.splitlines()) == 3, err
    assert "quota is spent" in err.splitlines()[0]
    assert imgur.upload_calls == 1
    rows = ledger_rows(tmp_path / "ledger.sqlite3")
    assert [row["state"] for row in rows] == ["failed"]


async def test_command_line_retries_through_server_errors_and_records_the_upload(
    imgur: ImgurStandIn, tmp_path: Path
) -> None:
    imgur.fail_next("over_capacity_500", path="/3/image")
    (path,) = pngs(tmp_path, 1, seed=99)

    code, out, err = await upload(cli_env(imgur, tmp_path), tmp_path, path)

    assert code == 0, err
    assert imgur.upload_calls == 2
    (row,) = ledger_rows(tmp_path / "ledger.sqlite3")
    (image,) = imgur.images.values()
    assert (row["state"], row["imgur_id"], row["deletehash"]) == (
        "done",
        image.id,
        image.deletehash,
    )
    assert out.strip() == f"https://i.imgur.com/{image.id}.png"


async def test_command_line_dates_a_quota_that_refills_on_another_day(
    imgur: ImgurStandIn, tmp_path: Path
) -> None:
    # The daily budget is spent after one upload, and Imgur sends no reset for it: the bot
    # reckons a day from the first spending seen, so "until about 04:40" would read as today.
    imgur.client_remaining = 10
    paths = pngs(tmp_path, 2, seed=97)
    started = time.time()

    code, out, err = await upload(cli_env(imgur, tmp_path), tmp_path, *paths)

    assert code == 1
    assert len(out.split()) == 1
    # A day after the first spending, which falls between the start and now (near midnight
    # the two may name different days).
    days = {time.strftime("%Y-%m-%d", time.localtime(t + 86400)) for t in (started, time.time())}
    assert any(f"quota is spent until about {day} " in err for day in days), err
    assert imgur.upload_calls == 1
