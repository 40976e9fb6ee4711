import asyncio
import contextlib
import dataclasses
import hashlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from blake3 import blake3

from bot.imgur import ImgurRejected, ImgurUnavailable
from bot.ledger import LedgerError, Origin
from bot.pipeline import CUT_OFF
from bot.services import Services, open_services
from bot.settings import Settings
from bot.sources import SourceError, StreamSource
from tests import samples
from tests.conftest import WebFiles
from tests.imgur_standin import ImgurStandIn

CLI = Origin(door="cli")


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    for i in range(0, len(data), 64 * 1024):
        yield data[i : i + 64 * 1024]


def source(data: bytes, name: str = "photo.png") -> StreamSource:
    return StreamSource(chunks(data), name)


async def test_rehost_uploads_and_records_the_deletehash(
    services: Services, imgur: ImgurStandIn
) -> None:
    data = samples.png(seed=1)

    rehost = await services.pipeline.rehost(source(data), Origin(door="cli", title="cat"))

    image = imgur.images[rehost.upload.imgur_id]  # type: ignore[index]
    assert rehost.reused is False
    assert rehost.upload.state == "done"
    assert rehost.upload.deletehash == image.deletehash
    assert rehost.upload.link == f"https://i.imgur.com/{image.id}.png"
    assert rehost.upload.digest == blake3(data).hexdigest()
    assert image.sha256 == hashlib.sha256(data).hexdigest()
    assert image.title == "cat"
    assert image.encoding == "multipart"
    assert image.file_field == "image"


async def test_every_doors_title_reaches_imgur_and_the_ledger_on_one_clean_line(
    services: Services, imgur: ImgurStandIn
) -> None:
    title = "two\nlines\x1b[31m and a \u202eturn\x00 "

    rehost = await services.pipeline.rehost(
        source(samples.png(seed=40)), Origin("cli", title=title)
    )

    image = imgur.images[rehost.upload.imgur_id]  # type: ignore[index]
    assert image.title == rehost.origin.title == "two lines [31m and a turn"
    recorded = await services.ledger.get_rehost(rehost.id)
    assert recorded is not None
    assert recorded.origin.title == "two lines [31m and a turn"


async def test_an_overlong_title_is_refused_before_anything_is_uploaded(
    services: Services, imgur: ImgurStandIn
) -> None:
    with pytest.raises(SourceError, match="at most 256 characters"):
        await services.pipeline.rehost(source(samples.png(seed=41)), Origin("cli", title="t" * 257))

    assert imgur.upload_calls == 0
    assert await services.ledger.pending_uploads() == []
    assert await services.ledger.recent_rehosts(limit=5) == []


async def test_the_same_bytes_twice_call_imgur_once(
    services: Services, imgur: ImgurStandIn
) -> None:
    data = samples.png(seed=2)

    first = await services.pipeline.rehost(source(data, "a.png"), CLI)
    second = await services.pipeline.rehost(source(data, "b.png"), Origin(door="http"))

    assert imgur.upload_calls == 1
    assert second.reused is True
    assert second.upload.id == first.upload.id
    assert second.origin.door == "http"


async def test_identical_concurrent_posts_call_imgur_once(
    services: Services, imgur: ImgurStandIn
) -> None:
    data = samples.png(seed=3)

    results = await asyncio.gather(*(services.pipeline.rehost(source(data), CLI) for _ in range(5)))

    assert imgur.upload_calls == 1
    assert sum(not r.reused for r in results) == 1
    assert len({r.upload.imgur_id for r in results}) == 1


async def test_video_goes_through_the_video_field(services: Services, imgur: ImgurStandIn) -> None:
    rehost = await services.pipeline.rehost(source(samples.mp4(50_000), "clip.mov"), CLI)

    image = imgur.images[rehost.upload.imgur_id]  # type: ignore[index]
    assert image.file_field == "video"
    assert rehost.upload.kind == "video"
    assert image.filename == "clip.mp4"


async def test_a_url_is_fetched_and_rehosted(
    services: Services, imgur: ImgurStandIn, web_files: WebFiles
) -> None:
    data = samples.gif(animated=True)
    url = web_files.serve_bytes("/party.gif", data, "image/gif")

    rehost = await services.pipeline.rehost(services.pipeline.url_source(url), CLI)

    assert rehost.upload.kind == "animated"
    assert imgur.images[rehost.upload.imgur_id].size == len(data)  # type: ignore[index]


async def test_a_refused_upload_leaves_no_live_record(
    services: Services, imgur: ImgurStandIn
) -> None:
    data = samples.png(seed=4)
    imgur.fail_next("reject")

    with pytest.raises(ImgurRejected):
        await services.pipeline.rehost(source(data), CLI)

    assert await services.ledger.find_live_upload(blake3(data).hexdigest()) is None
    assert await services.ledger.pending_uploads() == []
    assert imgur.images == {}


async def test_transient_failures_are_retried_then_reported(
    services: Services, imgur: ImgurStandIn
) -> None:
    services.imgur._sleep = _no_sleep  # type: ignore[attr-defined]
    imgur.fail_next("over_capacity_500", times=10)

    with pytest.raises(ImgurUnavailable):
        await services.pipeline.rehost(source(samples.png(seed=5)), CLI)

    assert imgur.upload_calls == 3


async def _no_sleep(seconds: float) -> None:
    return None


async def test_a_failed_record_takes_the_image_down_again(
    services: Services, imgur: ImgurStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise LedgerError("The upload record could not be saved; nothing was published.")

    monkeypatch.setattr(services.ledger, "complete_upload", broken)

    with pytest.raises(LedgerError):
        await services.pipeline.rehost(source(samples.png(seed=6)), CLI)

    assert imgur.upload_calls == 1
    assert [image.deleted for image in imgur.images.values()] == [True]


async def test_delete_removes_the_image_and_a_new_post_uploads_again(
    services: Services, imgur: ImgurStandIn
) -> None:
    data = samples.png(seed=7)
    rehost = await services.pipeline.rehost(source(data), CLI)

    await services.pipeline.delete_upload(rehost.upload, by=42, reason="test")

    assert imgur.images[rehost.upload.imgur_id].deleted  # type: ignore[index]
    stored = await services.ledger.get_upload(rehost.upload.imgur_id)  # type: ignore[arg-type]
    assert stored is not None
    assert (stored.state, stored.deleted_by) == ("deleted", 42)
    again = await services.pipeline.rehost(source(data), CLI)
    assert again.reused is False
    assert imgur.upload_calls == 2


async def test_release_keeps_an_upload_another_rehost_still_uses(
    services: Services, imgur: ImgurStandIn
) -> None:
    data = samples.png(seed=8)
    first = await services.pipeline.rehost(source(data), Origin(door="discord", message_id=1))
    second = await services.pipeline.rehost(source(data), Origin(door="discord", message_id=2))

    kept = await services.pipeline.release([first], by=None, reason="source deleted")
    assert kept == []
    assert not imgur.images[first.upload.imgur_id].deleted  # type: ignore[index]

    gone = await services.pipeline.release([second], by=None, reason="source deleted")
    assert [u.id for u in gone] == [first.upload.id]
    assert imgur.images[first.upload.imgur_id].deleted  # type: ignore[index]


async def test_albums_are_created_recorded_and_deleted(
    services: Services, imgur: ImgurStandIn
) -> None:
    origin = Origin(door="discord", guild_id=1, message_id=99)
    rehosts = [
        await services.pipeline.rehost(source(samples.png(seed=s)), origin) for s in (10, 11)
    ]

    album = await services.pipeline.create_album(rehosts, origin, title="two")

    assert album.message_id == 99
    assert imgur.albums[album.imgur_id].title == "two"
    await services.pipeline.delete_album(album)
    assert imgur.albums[album.imgur_id].deleted


async def test_reconcile_closes_uploads_a_crash_left_pending(
    services: Services, tmp_path: Path
) -> None:
    await services.ledger.begin_upload(
        digest="ab" * 32, size=10, mime="image/png", kind="image", origin=CLI
    )

    interrupted = await services.pipeline.reconcile()

    assert [origin.door for _, origin in interrupted] == ["cli"]
    assert await services.ledger.pending_uploads() == []


async def test_release_settles_each_upload_and_keeps_a_failed_one_live(
    services: Services, imgur: ImgurStandIn
) -> None:
    origin = Origin(door="discord", message_id=5)
    first = await services.pipeline.rehost(source(samples.png(seed=20)), origin)
    second = await services.pipeline.rehost(source(samples.png(seed=21)), origin)
    services.imgur._sleep = _no_sleep  # type: ignore[attr-defined]
    imgur.fail_next("server_error", times=3, path=f"/3/image/{first.upload.deletehash}")

    with pytest.raises(ImgurUnavailable):
        await services.pipeline.release([first, second], by=None, reason="source deleted")

    assert imgur.images[second.upload.imgur_id].deleted  # type: ignore[index]
    assert not imgur.images[first.upload.imgur_id].deleted  # type: ignore[index]
    assert [r.id for r in await services.ledger.rehosts_of(first.upload.id)] == [first.id]

    assert await services.pipeline.release([first], by=None, reason="again") != []
    assert imgur.images[first.upload.imgur_id].deleted  # type: ignore[index]


async def test_uploads_another_process_has_in_flight_are_not_taken_for_interrupted(
    services: Services, settings: Settings
) -> None:
    # `services` plays the running bot; a second opening plays the command line beside it.
    pending = await services.ledger.begin_upload(
        digest="cd" * 32, size=10, mime="image/png", kind="image", origin=CLI
    )

    async with open_services(settings) as beside:
        assert beside.pipeline.interrupted == []
    assert [u.id for u, _ in await services.ledger.pending_uploads()] == [pending]


async def test_the_next_process_alone_with_the_ledger_reconciles(settings: Settings) -> None:
    async with open_services(settings) as crashed:
        await crashed.ledger.begin_upload(
            digest="ef" * 32, size=10, mime="image/png", kind="image", origin=CLI
        )

    async with open_services(settings) as restarted:
        assert [origin.door for _, origin in restarted.pipeline.interrupted] == ["cli"]


async def test_an_upload_waiting_for_its_turn_is_on_record_and_cancelling_closes_it(
    settings: Settings, imgur: ImgurStandIn
) -> None:
    # A restart must find work that was only waiting; a waiter that gives up leaves no row open.
    one_worker = dataclasses.replace(settings, upload_workers=1)
    imgur.fail_next("slow", path="/3/image", delay=1.0)
    async with open_services(one_worker) as services:
        first = asyncio.create_task(
            services.pipeline.rehost(source(samples.png(seed=60)), Origin("cli", requester_id=1))
        )
        waiting = asyncio.create_task(
            services.pipeline.rehost(source(samples.png(seed=61)), Origin("cli", requester_id=2))
        )
        # The row is written before the upload queues for its turn, and the ledger may answer
        # a look-up before the waiter has taken its place: wait for the queue, then read.
        async with asyncio.timeout(30):
            while services.pipeline.scheduler.waiting < 1:
                await asyncio.sleep(0.01)
        assert len(await services.ledger.pending_uploads()) == 2
        assert services.pipeline.scheduler.waiting == 1
        assert imgur.upload_calls <= 1

        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        done = await first

        assert await services.ledger.pending_uploads() == []
        assert done.upload.state == "done"
        assert await services.ledger.count_uploads_since(0) == 1
        assert imgur.upload_calls == 1


async def test_an_upload_cut_off_while_imgur_works_is_closed_with_the_cut_off_reason(
    settings: Settings, imgur: ImgurStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    # Imgur stores the file, then answers late; the caller gives up (a second Ctrl-C, say).
    imgur.fail_next("slow", path="/3/image", delay=5.0)
    async with open_services(settings) as services:
        uploading = asyncio.create_task(
            services.pipeline.rehost(source(samples.png(seed=62)), Origin("cli", requester_id=1))
        )
        async with asyncio.timeout(30):
            while not imgur.images:
                await asyncio.sleep(0.01)

        uploading.cancel()
        with pytest.raises(asyncio.CancelledError):
            await uploading

        assert await services.ledger.pending_uploads() == []
    with contextlib.closing(sqlite3.connect(settings.database_path)) as db:
        rows = db.execute("SELECT state, fail_reason, digest FROM uploads").fetchall()
    # The bytes' hash stays on record: the copy Imgur may hold can be traced.
    assert rows == [("failed", CUT_OFF, blake3(samples.png(seed=62)).hexdigest())]
    assert "cut off before Imgur answered" in caplog.text
