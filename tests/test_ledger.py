"""The ledger keeps every deletehash, every rehost, albums and guild settings, consistently."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import sqlite3
import threading
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import pytest
from blake3 import blake3

from bot import ledger as ledger_module
from bot.errors import NotFound, RehostError
from bot.ledger import (
    SCHEMA_VERSION,
    GuildSettings,
    Ledger,
    LedgerError,
    Origin,
    RecordNotFound,
    RecordStateError,
    Rehost,
)

GUILD = 1_000_000_000_000_001
OTHER_GUILD = 1_000_000_000_000_002
BIGGEST_SNOWFLAKE = 2**63 - 1


class TickingClock:
    """A clock that moves one second forward each time it is read."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def digest(n: int | str) -> str:
    return blake3(str(n).encode()).hexdigest()


def discord_origin(**overrides: object) -> Origin:
    fields: dict[str, object] = {
        "door": "discord",
        "guild_id": GUILD,
        "channel_id": 20,
        "message_id": 300,
        "attachment_id": 4000,
        "owner_id": 50,
        "requester_id": 60,
        "filename": "cat.png",
        "title": None,
    }
    fields.update(overrides)
    return Origin(**fields)  # type: ignore[arg-type]


def deletehash_for(n: int | str) -> str:
    return f"SECRETdeletehash{n}"


async def upload(
    ledger: Ledger, n: int | str, origin: Origin | None = None, *, sha: str | None = None
) -> Rehost:
    """Begin and complete one upload named img<n>."""
    pending_id = await ledger.begin_upload(
        digest=sha or digest(n),
        size=1234,
        mime="image/png",
        kind="image",
        origin=origin or discord_origin(),
    )
    return await ledger.complete_upload(
        pending_id,
        imgur_id=f"img{n}",
        link=f"https://i.imgur.com/img{n}.png",
        deletehash=deletehash_for(n),
    )


async def reuse(ledger: Ledger, of: Rehost, origin: Origin) -> Rehost:
    """Post the bytes of ``of`` again: the ledger answers with a reuse of its upload."""
    claim = await ledger.reuse_or_begin_upload(
        digest=of.upload.digest,
        size=of.upload.size,
        mime=of.upload.mime,
        kind=of.upload.kind,
        origin=origin,
    )
    assert isinstance(claim, Rehost)
    return claim


@pytest.fixture
def clock() -> TickingClock:
    return TickingClock()


@pytest.fixture
async def ledger(tmp_path: Path, clock: TickingClock) -> AsyncIterator[Ledger]:
    opened = await Ledger.open(tmp_path / "ledger.sqlite3", clock=clock)
    try:
        yield opened
    finally:
        await opened.close()


# --- the upload lifecycle ---------------------------------------------------------------------


async def test_upload_goes_pending_then_done_then_reused_then_deleted(ledger: Ledger) -> None:
    origin = discord_origin(title="a cat")
    pending_id = await ledger.begin_upload(
        digest=digest(1), size=1234, mime="image/png", kind="image", origin=origin
    )

    [(pending, pending_origin)] = await ledger.pending_uploads()
    assert pending.id == pending_id
    assert pending.state == "pending"
    assert pending.imgur_id is None
    assert pending.deletehash is None
    assert pending_origin == origin
    assert await ledger.find_live_upload(digest(1)) is None

    first = await ledger.complete_upload(
        pending_id, imgur_id="abc", link="https://i.imgur.com/abc.png", deletehash="dh-abc"
    )
    assert first.upload.state == "done"
    assert first.upload.deletehash == "dh-abc"
    assert first.upload.completed_at is not None
    assert first.origin == origin
    assert first.reused is False
    assert await ledger.pending_uploads() == []

    live = await ledger.find_live_upload(digest(1))
    assert live is not None
    assert live.id == pending_id
    assert await ledger.get_upload("abc") == live

    second = await reuse(ledger, first, discord_origin(message_id=301, requester_id=61))
    assert second.reused is True
    assert second.upload.id == live.id
    assert second.origin.message_id == 301
    assert [r.id for r in await ledger.rehosts_of(live.id)] == [first.id, second.id]

    await ledger.mark_upload_deleted(live.id, by=61, reason="asked by owner")

    deleted = await ledger.get_upload("abc")
    assert deleted is not None
    assert deleted.state == "deleted"
    assert deleted.deleted_by == 61
    assert deleted.delete_reason == "asked by owner"
    assert deleted.deleted_at is not None
    assert deleted.deletehash == "dh-abc"
    assert await ledger.rehosts_of(live.id) == []
    assert all(r.deleted_at is not None for r in await ledger.rehosts_of(live.id, live_only=False))
    assert await ledger.find_live_upload(digest(1)) is None


async def test_records_returned_by_writes_match_what_is_read_back(ledger: Ledger) -> None:
    origin = Origin(door="http", requester_id=BIGGEST_SNOWFLAKE, title="t", auto=True)
    failed = await ledger.begin_upload(
        digest=digest(1), size=7, mime="video/mp4", kind="video", origin=origin
    )
    await ledger.abandon_upload(failed, "timed out")
    first = await ledger.complete_upload(
        failed, imgur_id="late", link="https://i.imgur.com/late.mp4", deletehash="dh"
    )
    reused = await reuse(ledger, first, discord_origin(filename=None))
    album = await ledger.record_album(
        imgur_id="alb",
        link="https://imgur.com/a/alb",
        deletehash="album-dh",
        upload_ids=[first.upload.id, first.upload.id],
        origin=discord_origin(message_id=55),
    )

    assert await ledger.get_rehost(first.id) == first
    assert await ledger.get_rehost(reused.id) == reused
    assert await ledger.albums_for_messages([55]) == [album]
    assert [u.id for u in await ledger.album_uploads(album.id)] == [first.upload.id] * 2
    assert first.origin == origin
    assert first.created_at == first.upload.completed_at


async def test_deleting_an_upload_twice_keeps_the_first_record(ledger: Ledger) -> None:
    rehost = await upload(ledger, 1)

    await ledger.mark_upload_deleted(rehost.upload.id, by=7, reason="first")
    await ledger.mark_upload_deleted(rehost.upload.id, by=8, reason="second")

    deleted = await ledger.get_upload("img1")
    assert deleted is not None
    assert (deleted.deleted_by, deleted.delete_reason) == (7, "first")


async def test_abandoned_upload_becomes_failed_and_is_never_reused(ledger: Ledger) -> None:
    pending_id = await ledger.begin_upload(
        digest=digest(1), size=10, mime="image/gif", kind="animated", origin=discord_origin()
    )

    await ledger.abandon_upload(pending_id, "Imgur said the file type is invalid")
    await ledger.abandon_upload(pending_id, "again")

    assert await ledger.pending_uploads() == []
    assert await ledger.find_live_upload(digest(1)) is None
    assert await ledger.count_uploads_since(0) == 0


async def test_completed_upload_cannot_be_abandoned(ledger: Ledger) -> None:
    rehost = await upload(ledger, 1)

    with pytest.raises(RecordStateError):
        await ledger.abandon_upload(rehost.upload.id, "too late")

    still = await ledger.get_upload("img1")
    assert still is not None
    assert still.state == "done"


async def test_failed_upload_can_still_be_completed_so_its_deletehash_is_kept(
    ledger: Ledger,
) -> None:
    pending_id = await ledger.begin_upload(
        digest=digest(1), size=10, mime="image/png", kind="image", origin=discord_origin()
    )
    await ledger.abandon_upload(pending_id, "timed out")

    rehost = await ledger.complete_upload(
        pending_id, imgur_id="late", link="https://i.imgur.com/late.png", deletehash="dh"
    )

    assert rehost.upload.state == "done"
    assert (await ledger.find_live_upload(digest(1))) == rehost.upload


async def test_completing_again_with_the_same_image_returns_the_same_rehost(
    ledger: Ledger,
) -> None:
    first = await upload(ledger, 1)

    again = await ledger.complete_upload(
        first.upload.id, imgur_id="img1", link="https://i.imgur.com/img1.png", deletehash="x"
    )
    assert again == first
    assert len(await ledger.rehosts_of(first.upload.id)) == 1

    with pytest.raises(RecordStateError):
        await ledger.complete_upload(
            first.upload.id, imgur_id="other", link="https://i.imgur.com/o.png", deletehash="y"
        )


async def test_unknown_ids_raise_record_not_found(ledger: Ledger) -> None:
    with pytest.raises(RecordNotFound):
        await ledger.complete_upload(999, imgur_id="a", link="b", deletehash="c")
    with pytest.raises(RecordNotFound):
        await ledger.abandon_upload(999, "x")
    with pytest.raises(NotFound):
        await ledger.mark_upload_deleted(999, by=None, reason="x")
    with pytest.raises(RecordNotFound):
        await ledger.mark_album_deleted(999)

    assert await ledger.get_upload("nope") is None
    assert await ledger.get_rehost(999) is None


async def test_pending_upload_cannot_be_marked_deleted(ledger: Ledger) -> None:
    pending_id = await ledger.begin_upload(
        digest=digest(1), size=10, mime="image/png", kind="image", origin=discord_origin()
    )

    with pytest.raises(RecordStateError):
        await ledger.mark_upload_deleted(pending_id, by=None, reason="x")

    [(still, _)] = await ledger.pending_uploads()
    assert still.state == "pending"


async def test_pending_uploads_are_listed_oldest_first_with_whom_they_were_for(
    ledger: Ledger,
) -> None:
    cli = Origin(door="cli", filename="a.png")
    http = Origin(door="http", requester_id=BIGGEST_SNOWFLAKE, title="t")
    first = await ledger.begin_upload(
        digest=digest(1), size=1, mime="image/png", kind="image", origin=cli
    )
    done = await ledger.begin_upload(
        digest=digest(2), size=2, mime="image/png", kind="image", origin=cli
    )
    second = await ledger.begin_upload(
        digest=digest(3), size=3, mime="video/mp4", kind="video", origin=http
    )
    await ledger.complete_upload(
        done, imgur_id="d", link="https://i.imgur.com/d.png", deletehash="h"
    )

    pending = await ledger.pending_uploads()

    assert [(u.id, o) for u, o in pending] == [(first, cli), (second, http)]
    assert pending[1][0].kind == "video"


async def test_reuse_or_begin_reuses_live_bytes_and_puts_new_ones_on_record(
    ledger: Ledger,
) -> None:
    async def claim(n: str) -> Rehost | int:
        return await ledger.reuse_or_begin_upload(
            digest=digest(n), size=1234, mime="image/png", kind="image", origin=discord_origin()
        )

    live = await upload(ledger, "live")
    reused = await claim("live")
    assert isinstance(reused, Rehost)
    assert reused.reused
    assert reused.upload == live.upload
    assert [r.id for r in await ledger.rehosts_of(live.upload.id, live_only=True)] == [
        live.id,
        reused.id,
    ]

    pending_id = await claim("new")
    assert isinstance(pending_id, int)
    assert [u.id for u, _origin in await ledger.pending_uploads()] == [pending_id]


async def test_only_a_done_upload_is_reused_never_a_deleted_failed_or_pending_one(
    ledger: Ledger,
) -> None:
    async def claim(text: str) -> Rehost | int:
        return await ledger.reuse_or_begin_upload(
            digest=text, size=1, mime="image/png", kind="image", origin=discord_origin()
        )

    deleted = await upload(ledger, "deleted", sha=digest("same"))
    await ledger.mark_upload_deleted(deleted.upload.id, by=None, reason="x")
    failed = await ledger.begin_upload(
        digest=digest("same"), size=1, mime="image/png", kind="image", origin=discord_origin()
    )
    await ledger.abandon_upload(failed, "refused")
    pending = await ledger.begin_upload(
        digest=digest("same"), size=1, mime="image/png", kind="image", origin=discord_origin()
    )

    assert await ledger.find_live_upload(digest("same")) is None
    fresh = await claim(digest("same"))
    assert isinstance(fresh, int)
    assert fresh not in (deleted.upload.id, failed, pending)
    assert len(await ledger.rehosts_of(deleted.upload.id, live_only=False)) == 1

    live = await upload(ledger, "live", sha=digest("same"))
    found = await ledger.find_live_upload(digest("same").upper())
    assert found is not None
    assert found.id == live.upload.id
    again = await claim(digest("same").upper())
    assert isinstance(again, Rehost)
    assert again.upload.id == live.upload.id


async def test_same_bytes_uploaded_twice_at_once_keeps_both_but_offers_one(
    ledger: Ledger,
) -> None:
    origin = discord_origin()
    slower_id = await ledger.begin_upload(
        digest=digest("x"), size=1, mime="image/png", kind="image", origin=origin
    )
    faster_id = await ledger.begin_upload(
        digest=digest("x"), size=1, mime="image/png", kind="image", origin=origin
    )
    await ledger.complete_upload(faster_id, imgur_id="first", link="l1", deletehash="dh1")

    late = await ledger.complete_upload(slower_id, imgur_id="late", link="l2", deletehash="dh2")

    assert late.upload.state == "done"
    assert late.upload.deletehash == "dh2"
    offered = await ledger.find_live_upload(digest("x"))
    assert offered is not None
    assert offered.imgur_id == "first"

    await ledger.mark_upload_deleted(faster_id, by=None, reason="x")

    offered = await ledger.find_live_upload(digest("x"))
    assert offered is not None
    assert offered.imgur_id == "late"
    assert await ledger.integrity_ok()


# --- reading ----------------------------------------------------------------------------------


async def test_rehosts_for_messages_returns_live_rehosts_of_those_messages(
    ledger: Ledger,
) -> None:
    a = await upload(ledger, 1, discord_origin(message_id=BIGGEST_SNOWFLAKE))
    b = await upload(ledger, 2, discord_origin(message_id=302))
    again = await reuse(ledger, a, discord_origin(message_id=302))
    await upload(ledger, 3, discord_origin(message_id=303))
    gone = await upload(ledger, 4, discord_origin(message_id=302))
    await ledger.mark_rehosts_deleted([gone.id], by=None, reason="x")

    found = await ledger.rehosts_for_messages([BIGGEST_SNOWFLAKE, 302, 999])

    assert [r.id for r in found] == [a.id, b.id, again.id]
    assert found[0].origin.message_id == BIGGEST_SNOWFLAKE
    assert await ledger.rehosts_for_messages([]) == []


async def test_recent_rehosts_are_newest_first_and_filtered(ledger: Ledger) -> None:
    mine = await upload(ledger, 1, discord_origin(owner_id=50))
    theirs = await upload(ledger, 2, discord_origin(owner_id=51))
    elsewhere = await upload(ledger, 3, discord_origin(guild_id=OTHER_GUILD))
    cli = await upload(ledger, 4, Origin(door="cli"))
    reused = await reuse(ledger, mine, discord_origin(owner_id=50))
    await ledger.mark_rehosts_deleted([theirs.id], by=None, reason="x")

    def ids(rehosts: list[Rehost]) -> list[int]:
        return [r.id for r in rehosts]

    assert ids(await ledger.recent_rehosts()) == [
        reused.id,
        cli.id,
        elsewhere.id,
        theirs.id,
        mine.id,
    ]
    assert ids(await ledger.recent_rehosts(guild_id=GUILD)) == [reused.id, theirs.id, mine.id]
    assert ids(await ledger.recent_rehosts(guild_id=GUILD, live_only=True)) == [reused.id, mine.id]
    assert ids(await ledger.recent_rehosts(guild_id=GUILD, owner_id=51)) == [theirs.id]
    assert ids(await ledger.recent_rehosts(door="cli")) == [cli.id]
    assert ids(await ledger.recent_rehosts(limit=2)) == [reused.id, cli.id]


async def test_search_matches_imgur_id_link_filename_and_title(ledger: Ledger) -> None:
    by_id = await upload(ledger, "Zebra", discord_origin(filename=None))
    by_name = await upload(ledger, 2, discord_origin(filename="holiday-BEACH.jpg"))
    by_title = await upload(ledger, 3, discord_origin(filename=None, title="beach party"))
    await upload(ledger, 4, discord_origin(filename="mountain.png"))

    assert [r.id for r in await ledger.search_rehosts(GUILD, "zebra")] == [by_id.id]
    assert [r.id for r in await ledger.search_rehosts(GUILD, "beach")] == [by_title.id, by_name.id]
    assert [r.id for r in await ledger.search_rehosts(GUILD, "i.imgur.com/img2")] == [by_name.id]
    assert len(await ledger.search_rehosts(GUILD, "")) == 4
    assert len(await ledger.search_rehosts(GUILD, "", limit=1)) == 1


async def test_search_treats_like_wildcards_as_plain_text(ledger: Ledger) -> None:
    percent = await upload(ledger, 1, discord_origin(filename="100%_real.png"))
    await upload(ledger, 2, discord_origin(filename="1000 real.png"))
    backslash = await upload(ledger, 3, discord_origin(filename="back\\slash.png"))

    assert [r.id for r in await ledger.search_rehosts(GUILD, "100%")] == [percent.id]
    assert [r.id for r in await ledger.search_rehosts(GUILD, "%_r")] == [percent.id]
    assert await ledger.search_rehosts(GUILD, "0_r") == []
    assert [r.id for r in await ledger.search_rehosts(GUILD, "k\\s")] == [backslash.id]
    assert await ledger.search_rehosts(GUILD, "'; DROP TABLE uploads; --") == []
    assert await ledger.integrity_ok()


async def test_search_never_returns_another_guilds_rehosts(ledger: Ledger) -> None:
    ours = await upload(ledger, 1, discord_origin(filename="shared.png"))
    theirs = await upload(ledger, 2, discord_origin(guild_id=OTHER_GUILD, filename="shared.png"))
    await reuse(ledger, ours, discord_origin(guild_id=OTHER_GUILD))

    found = await ledger.search_rehosts(GUILD, "shared")
    assert [r.id for r in found] == [ours.id]
    assert all(r.origin.guild_id == GUILD for r in await ledger.search_rehosts(GUILD, ""))
    assert theirs.id not in [r.id for r in await ledger.search_rehosts(GUILD, "img2")]


async def test_search_skips_deleted_and_filters_by_owner(ledger: Ledger) -> None:
    mine = await upload(ledger, 1, discord_origin(owner_id=50))
    await upload(ledger, 2, discord_origin(owner_id=51))
    deleted = await upload(ledger, 3, discord_origin(owner_id=50))
    await ledger.mark_upload_deleted(deleted.upload.id, by=50, reason="x")

    assert [r.id for r in await ledger.search_rehosts(GUILD, "img", owner_id=50)] == [mine.id]


async def test_counts_separate_imgur_uploads_from_reuses(
    ledger: Ledger, clock: TickingClock
) -> None:
    old = await upload(ledger, 1)
    since = clock.now + 0.5
    fresh = await upload(ledger, 2)
    await reuse(ledger, old, discord_origin())
    await reuse(ledger, fresh, discord_origin())
    await ledger.begin_upload(
        digest=digest(3), size=1, mime="image/png", kind="image", origin=discord_origin()
    )
    failed = await ledger.begin_upload(
        digest=digest(4), size=1, mime="image/png", kind="image", origin=discord_origin()
    )
    await ledger.abandon_upload(failed, "refused")
    await ledger.mark_upload_deleted(fresh.upload.id, by=None, reason="x")

    # Pending uploads may still be waiting for their turn; only what Imgur took counts.
    assert await ledger.count_uploads_since(0) == 2
    assert await ledger.count_uploads_since(since) == 1
    assert await ledger.count_rehosts_since(since) == 3
    assert await ledger.count_rehosts_since(since, reused=True) == 2
    assert await ledger.count_rehosts_since(since, reused=False) == 1


# --- deletion and replies ---------------------------------------------------------------------


async def test_deleting_rehosts_leaves_the_upload_alone(ledger: Ledger) -> None:
    first = await upload(ledger, 1)
    second = await reuse(ledger, first, discord_origin(message_id=999))

    await ledger.mark_rehosts_deleted([first.id], by=60, reason="source message deleted")

    assert [r.id for r in await ledger.rehosts_of(first.upload.id)] == [second.id]
    gone = await ledger.get_rehost(first.id)
    assert gone is not None
    assert gone.deleted_at is not None
    live = await ledger.find_live_upload(digest(1))
    assert live is not None
    assert live.state == "done"


async def test_deleting_rehosts_with_an_unknown_id_changes_nothing(ledger: Ledger) -> None:
    first = await upload(ledger, 1)

    with pytest.raises(RecordNotFound):
        await ledger.mark_rehosts_deleted([first.id, 12345], by=None, reason="x")

    still = await ledger.get_rehost(first.id)
    assert still is not None
    assert still.deleted_at is None


async def test_reply_message_is_recorded_on_every_rehost_it_carries(ledger: Ledger) -> None:
    a = await upload(ledger, 1)
    b = await upload(ledger, 2)
    c = await upload(ledger, 3)

    await ledger.set_reply([a.id, b.id], channel_id=20, message_id=BIGGEST_SNOWFLAKE)

    for rehost_id in (a.id, b.id):
        got = await ledger.get_rehost(rehost_id)
        assert got is not None
        assert (got.reply_channel_id, got.reply_message_id) == (20, BIGGEST_SNOWFLAKE)
    untouched = await ledger.get_rehost(c.id)
    assert untouched is not None
    assert untouched.reply_message_id is None
    with pytest.raises(RecordNotFound):
        await ledger.set_reply([c.id, 4242], channel_id=1, message_id=2)
    untouched = await ledger.get_rehost(c.id)
    assert untouched is not None
    assert untouched.reply_message_id is None


# --- albums -----------------------------------------------------------------------------------


async def test_album_is_recorded_with_its_uploads_in_order(ledger: Ledger) -> None:
    a = await upload(ledger, 1)
    b = await upload(ledger, 2)
    origin = discord_origin(message_id=777)

    album = await ledger.record_album(
        imgur_id="alb",
        link="https://imgur.com/a/alb",
        deletehash="album-secret",
        upload_ids=[b.upload.id, a.upload.id],
        origin=origin,
    )

    assert (album.imgur_id, album.guild_id, album.message_id) == ("alb", GUILD, 777)
    assert album.deletehash == "album-secret"
    assert [u.id for u in await ledger.album_uploads(album.id)] == [b.upload.id, a.upload.id]
    assert await ledger.albums_for_messages([777, 778]) == [album]
    assert await ledger.albums_for_messages([778]) == []

    await ledger.mark_album_deleted(album.id)
    await ledger.mark_album_deleted(album.id)

    assert await ledger.albums_for_messages([777]) == []


async def test_album_with_an_unknown_upload_is_not_recorded(ledger: Ledger) -> None:
    a = await upload(ledger, 1)

    with pytest.raises(RecordNotFound):
        await ledger.record_album(
            imgur_id="alb",
            link="l",
            deletehash="d",
            upload_ids=[a.upload.id, 999],
            origin=discord_origin(message_id=5),
        )

    assert await ledger.albums_for_messages([5]) == []


# --- guild settings ---------------------------------------------------------------------------


async def test_auto_channels_are_added_once_and_removed_once(ledger: Ledger) -> None:
    assert await ledger.add_auto_channel(GUILD, 11, added_by=60) is True
    assert await ledger.add_auto_channel(GUILD, 11, added_by=61) is False
    assert await ledger.add_auto_channel(GUILD, BIGGEST_SNOWFLAKE, added_by=60) is True
    assert await ledger.add_auto_channel(OTHER_GUILD, 12, added_by=60) is True

    assert await ledger.auto_channels(GUILD) == [11, BIGGEST_SNOWFLAKE]
    assert await ledger.is_auto_channel(GUILD, 11)
    assert not await ledger.is_auto_channel(GUILD, 12)

    assert await ledger.remove_auto_channel(GUILD, 11) is True
    assert await ledger.remove_auto_channel(GUILD, 11) is False
    assert await ledger.auto_channels(GUILD) == [BIGGEST_SNOWFLAKE]
    assert await ledger.auto_channels(OTHER_GUILD) == [12]


async def test_guild_settings_default_then_change_one_at_a_time(ledger: Ledger) -> None:
    assert await ledger.guild_settings(GUILD) == GuildSettings(GUILD, True, False)

    after = await ledger.update_guild_settings(GUILD, allow_nsfw=True)
    assert after == GuildSettings(GUILD, delete_with_source=True, allow_nsfw=True)

    after = await ledger.update_guild_settings(GUILD, delete_with_source=False)
    assert after == GuildSettings(GUILD, delete_with_source=False, allow_nsfw=True)
    assert await ledger.guild_settings(GUILD) == after
    assert await ledger.guild_settings(OTHER_GUILD) == GuildSettings(OTHER_GUILD)


async def test_settings_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    async with await Ledger.open(path) as first:
        await first.update_guild_settings(GUILD, allow_nsfw=True)
        await first.add_auto_channel(GUILD, 11, added_by=1)
        await upload(first, 1)

    async with await Ledger.open(path) as second:
        assert (await second.guild_settings(GUILD)).allow_nsfw is True
        assert await second.auto_channels(GUILD) == [11]
        found = await second.get_upload("img1")
        assert found is not None
        assert found.deletehash == deletehash_for(1)


# --- schema and migrations --------------------------------------------------------------------


def read_db(path: Path, sql: str) -> list[tuple[object, ...]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


async def test_fresh_database_is_created_at_the_latest_schema(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "ledger.sqlite3"

    async with await Ledger.open(path) as fresh:
        assert fresh.schema_version == SCHEMA_VERSION == len(ledger_module.MIGRATIONS)
        assert await fresh.integrity_ok()

    assert read_db(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert read_db(path, "PRAGMA journal_mode") == [("wal",)]
    indexes = {
        name for (name,) in read_db(path, "SELECT name FROM sqlite_master WHERE type='index'")
    }
    assert {
        "uploads_live_digest",
        "uploads_imgur_id",
        "rehosts_message",
        "rehosts_guild_time",
    } <= indexes


async def on_ledger_thread(ledger: Ledger, sql: str) -> object:
    """The first value of ``sql`` run on the ledger's own connection, on its own thread."""

    def run() -> object:
        row = ledger._db.execute(sql).fetchone()
        return row[0] if row is not None else None

    return await asyncio.wrap_future(ledger._submit(run))


async def test_connection_settings_protect_the_records(ledger: Ledger) -> None:
    # The settings live on the connection; there is no public way to read them.
    async def pragma(name: str) -> object:
        return await on_ledger_thread(ledger, f"PRAGMA {name}")

    assert await pragma("journal_mode") == "wal"
    assert await pragma("foreign_keys") == 1
    assert await pragma("synchronous") == 2  # FULL
    assert await pragma("busy_timeout") == 5000


async def test_imgur_ids_are_unique(ledger: Ledger) -> None:
    await upload(ledger, 1)
    pending_id = await ledger.begin_upload(
        digest=digest(2), size=1, mime="image/png", kind="image", origin=discord_origin()
    )

    with pytest.raises(LedgerError) as caught:
        await ledger.complete_upload(
            pending_id, imgur_id="img1", link="l", deletehash="other-secret"
        )

    assert isinstance(caught.value.__cause__, sqlite3.IntegrityError)
    [(still, _)] = await ledger.pending_uploads()
    assert still.id == pending_id


async def test_version_1_database_is_migrated_on_open(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in ledger_module.MIGRATIONS[0]:
            connection.execute(statement)
        # Version 1 could hold two live uploads of the same bytes; version 2 must cope.
        for imgur_id in ("older", "newer"):
            connection.execute(
                "INSERT INTO uploads (imgur_id, link, deletehash, kind, mime, size, sha256, "
                "state, created_at, completed_at, door, guild_id) "
                "VALUES (?, ?, ?, 'image', 'image/png', 5, ?, 'done', 1.0, 2.0, 'discord', ?)",
                (
                    imgur_id,
                    f"https://i.imgur.com/{imgur_id}.png",
                    f"dh-{imgur_id}",
                    digest(1),
                    GUILD,
                ),
            )
        connection.execute(
            "INSERT INTO rehosts (upload_id, reused, created_at, door, guild_id, message_id) "
            "VALUES (1, 0, 2.0, 'discord', ?, 42)",
            (GUILD,),
        )
        connection.execute("PRAGMA user_version = 1")
    finally:
        connection.close()

    async with await Ledger.open(path) as migrated:
        assert migrated.schema_version == SCHEMA_VERSION
        live = await migrated.find_live_upload(digest(1))
        assert live is not None
        assert live.imgur_id == "older"
        newer = await migrated.get_upload("newer")
        assert newer is not None
        assert newer.deletehash == "dh-newer"
        [rehost] = await migrated.rehosts_for_messages([42])
        assert rehost.upload.imgur_id == "older"
        assert await migrated.integrity_ok()

    assert read_db(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]


async def test_version_2_digests_stay_sha256_and_new_uploads_are_blake3(tmp_path: Path) -> None:
    path = tmp_path / "v2.sqlite3"
    data = b"the same bytes, posted before and after the upgrade"
    old_digest = hashlib.sha256(data).hexdigest()
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in (*ledger_module.MIGRATIONS[0], *ledger_module.MIGRATIONS[1]):
            connection.execute(statement)
        connection.execute(
            "INSERT INTO uploads (imgur_id, link, deletehash, kind, mime, size, sha256, "
            "state, created_at, completed_at, door) "
            "VALUES ('old', 'https://i.imgur.com/old.png', 'dh-old', 'image', 'image/png', ?, "
            "?, 'done', 1.0, 2.0, 'cli')",
            (len(data), old_digest),
        )
        connection.execute("PRAGMA user_version = 2")
    finally:
        connection.close()

    async with await Ledger.open(path) as migrated:
        old = await migrated.get_upload("old")
        assert old is not None
        assert (old.digest, old.deletehash) == (old_digest, "dh-old")
        # The bytes now go by their BLAKE3 digest, which no SHA-256 row carries: a new post
        # of them uploads afresh instead of reusing the old copy.
        claim = await migrated.reuse_or_begin_upload(
            digest=blake3(data).hexdigest(),
            size=len(data),
            mime="image/png",
            kind="image",
            origin=Origin(door="cli"),
        )
        assert isinstance(claim, int)
        assert await migrated.integrity_ok()

    rows = read_db(path, "SELECT imgur_id, digest_algorithm FROM uploads ORDER BY id")
    assert rows == [("old", "sha256"), (None, "blake3")]


async def test_database_from_a_newer_bot_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite3"
    async with await Ledger.open(path):
        pass
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA user_version = 99")
    finally:
        connection.close()

    with pytest.raises(LedgerError, match="newer version of the bot"):
        await Ledger.open(path)

    assert read_db(path, "PRAGMA user_version") == [(99,)]


async def test_failed_migration_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "foreign.sqlite3"
    connection = sqlite3.connect(path)
    try:
        connection.execute("CREATE TABLE uploads (something_else TEXT)")
        connection.commit()
    finally:
        connection.close()

    with pytest.raises(LedgerError, match="could not be upgraded") as caught:
        await Ledger.open(path)

    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    assert read_db(path, "PRAGMA user_version") == [(0,)]
    assert read_db(path, "SELECT name FROM sqlite_master") == [("uploads",)]


async def test_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite3"
    path.write_bytes(b"this is not sqlite at all, just some text " * 100)

    with pytest.raises(LedgerError):
        await Ledger.open(path)


@pytest.mark.skipif(os.geteuid() == 0, reason="permissions do not stop root")
async def test_a_ledger_in_a_folder_the_bot_cannot_write_names_sqlites_reason(
    tmp_path: Path,
) -> None:
    # It was reported as "not a usable SQLite database", which sent people to a good file.
    path = tmp_path / "ledger.sqlite3"
    async with await Ledger.open(path):
        pass
    for leftover in tmp_path.glob("ledger.sqlite3-*"):
        leftover.unlink()
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(LedgerError, match=r"at .*ledger\.sqlite3 \(.+\); DATABASE_PATH must"):
            await Ledger.open(path)
    finally:
        tmp_path.chmod(0o755)


async def test_integrity_check_catches_a_dangling_reference(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    async with await Ledger.open(path) as fresh:
        assert await fresh.integrity_ok()

    connection = sqlite3.connect(path)  # foreign keys are off by default here
    try:
        connection.execute(
            "INSERT INTO rehosts (upload_id, reused, created_at, door) VALUES (404, 0, 1.0, 'cli')"
        )
        connection.commit()
    finally:
        connection.close()

    async with await Ledger.open(path) as damaged:
        assert await damaged.integrity_ok() is False


# --- failures ---------------------------------------------------------------------------------


async def test_locked_database_becomes_a_ledger_error(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    async with await Ledger.open(path, busy_timeout=0.05) as ledger:
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")

            with pytest.raises(LedgerError, match="nothing was published") as caught:
                await ledger.begin_upload(
                    digest=digest(1),
                    size=1,
                    mime="image/png",
                    kind="image",
                    origin=discord_origin(),
                )

            assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
            assert "locked" in str(caught.value.__cause__)
            assert isinstance(caught.value, RehostError)
        finally:
            holder.execute("ROLLBACK")
            holder.close()

        assert await ledger.pending_uploads() == []
        await upload(ledger, 1)  # usable again once the lock is gone


async def test_full_disk_becomes_a_ledger_error(ledger: Ledger) -> None:
    # SQLite's page limit stands in for a full disk.
    pages = await on_ledger_thread(ledger, "PRAGMA page_count")
    assert isinstance(pages, int)
    await on_ledger_thread(ledger, f"PRAGMA max_page_count = {pages}")

    async def fill() -> None:
        for n in range(1000):
            await ledger.begin_upload(
                digest=digest(n),
                size=1,
                mime="image/png",
                kind="image",
                origin=discord_origin(title="x" * 2000),
            )

    with pytest.raises(LedgerError) as caught:
        await fill()

    assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
    assert "full" in str(caught.value.__cause__)
    assert await ledger.integrity_ok()


async def test_failures_never_reveal_the_deletehash(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    first = await upload(ledger, 1)
    pending_id = await ledger.begin_upload(
        digest=digest(2), size=1, mime="image/png", kind="image", origin=discord_origin()
    )

    with pytest.raises(LedgerError) as caught:
        await ledger.complete_upload(
            pending_id, imgur_id="img1", link="l", deletehash="TOPSECRETdeletehash"
        )

    assert "TOPSECRET" not in str(caught.value)
    assert "SECRETdeletehash" not in caplog.text
    assert "TOPSECRET" not in caplog.text
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)
    assert deletehash_for(1) not in repr(first)


async def test_records_never_show_the_deletehash_in_repr(ledger: Ledger) -> None:
    rehost = await upload(ledger, 1)
    album = await ledger.record_album(
        imgur_id="alb",
        link="https://imgur.com/a/alb",
        deletehash="ALBUMSECRET",
        upload_ids=[rehost.upload.id],
        origin=discord_origin(),
    )
    found = await ledger.find_live_upload(digest(1))

    for record in (rehost, rehost.upload, found, album):
        assert "SECRET" not in repr(record)
        assert "SECRET" not in str(record)
    assert "img1" in repr(rehost)


async def test_cancelled_caller_does_not_lose_a_completed_upload(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    ledger = await Ledger.open(path)
    pending_id = await ledger.begin_upload(
        digest=digest(1), size=1, mime="image/png", kind="image", origin=discord_origin()
    )
    caller = asyncio.create_task(
        ledger.complete_upload(pending_id, imgur_id="kept", link="l", deletehash="dh-kept")
    )
    await asyncio.sleep(0)  # the write has started

    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await ledger.close()  # waits for the write the caller left behind

    async with await Ledger.open(path) as reopened:
        kept = await reopened.get_upload("kept")
        assert kept is not None
        assert (kept.state, kept.deletehash) == ("done", "dh-kept")
        assert len(await reopened.rehosts_of(kept.id)) == 1


async def test_closed_ledger_refuses_calls(tmp_path: Path) -> None:
    ledger = await Ledger.open(tmp_path / "ledger.sqlite3")
    await ledger.close()
    await ledger.close()

    with pytest.raises(LedgerError, match="closed"):
        await ledger.find_live_upload(digest(1))
    with pytest.raises(LedgerError, match="closed"):
        await ledger.add_auto_channel(GUILD, 1, added_by=1)


async def test_close_waits_for_writes_in_flight(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    ledger = await Ledger.open(path)
    writes = [
        asyncio.create_task(ledger.add_auto_channel(GUILD, channel, added_by=1))
        for channel in range(20)
    ]
    await asyncio.sleep(0)

    await ledger.close()

    assert all(await asyncio.gather(*writes))
    assert len(read_db(path, "SELECT * FROM auto_channels")) == 20


async def test_programming_mistakes_are_not_stored(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="kind"):
        await ledger.begin_upload(
            digest=digest(1), size=1, mime="image/png", kind="gif", origin=discord_origin()
        )
    with pytest.raises(ValueError, match="digest"):
        await ledger.begin_upload(
            digest="abc", size=1, mime="image/png", kind="image", origin=discord_origin()
        )
    with pytest.raises(ValueError, match="door"):
        await ledger.begin_upload(
            digest=digest(1),
            size=1,
            mime="image/png",
            kind="image",
            origin=Origin(door="email"),  # type: ignore[arg-type]
        )

    assert await ledger.pending_uploads() == []


# --- concurrency ------------------------------------------------------------------------------


async def test_burst_of_200_concurrent_uploads_leaves_consistent_records(
    ledger: Ledger,
) -> None:
    async def one(n: int) -> Rehost:
        # Every tenth request shares its bytes with others, so racing duplicates happen too.
        sha = digest("shared") if n % 10 == 0 else digest(n)
        return await upload(ledger, n, discord_origin(message_id=10_000 + n), sha=sha)

    rehosts = await asyncio.wait_for(asyncio.gather(*(one(n) for n in range(200))), 50)

    assert len({r.id for r in rehosts}) == 200
    assert len({r.upload.id for r in rehosts}) == 200
    for n, rehost in enumerate(rehosts):
        assert rehost.upload.imgur_id == f"img{n}"
        assert rehost.upload.deletehash == deletehash_for(n)
        assert rehost.origin.message_id == 10_000 + n
    assert await ledger.pending_uploads() == []
    assert await ledger.count_uploads_since(0) == 200
    assert await ledger.count_rehosts_since(0, reused=False) == 200
    assert len(await ledger.recent_rehosts(limit=500)) == 200

    shared = await ledger.find_live_upload(digest("shared"))
    assert shared is not None
    assert shared.imgur_id in {f"img{n}" for n in range(0, 200, 10)}
    assert await ledger.integrity_ok()


async def record_statements(ledger: Ledger) -> list[str]:
    """Every statement the ledger's connection runs from now on (the test's eyes only)."""
    statements: list[str] = []

    def install() -> None:
        ledger._db.set_trace_callback(statements.append)

    await asyncio.wrap_future(ledger._submit(install))
    return statements


@contextlib.asynccontextmanager
async def writes_held_back(ledger: Ledger) -> AsyncIterator[None]:
    """Keep the ledger's thread busy, so the writes made meanwhile wait there together."""
    release = threading.Event()
    held = ledger._submit(partial(release.wait, 30))
    try:
        yield
        await asyncio.sleep(0)  # the writes' tasks run up to their wait
    finally:
        release.set()
    await asyncio.wrap_future(held)


async def test_a_read_sees_every_write_handed_over_before_it(ledger: Ledger) -> None:
    # Auto-rehost records its reply, and a moderator's deletion then looks the reply up: the
    # lookup must not overtake the write, even while both wait for the database.
    rehost = await upload(ledger, 1)
    async with writes_held_back(ledger):
        recording = asyncio.create_task(ledger.set_reply([rehost.id], channel_id=5, message_id=6))
        await asyncio.sleep(0)  # the write is handed over
        looking_up = asyncio.create_task(ledger.get_rehost(rehost.id))
        await asyncio.sleep(0)

    await recording
    found = await looking_up
    assert found is not None
    assert (found.reply_channel_id, found.reply_message_id) == (5, 6)


async def test_writes_waiting_together_share_one_commit(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    async with await Ledger.open(path) as ledger:
        statements = await record_statements(ledger)
        async with writes_held_back(ledger):
            writes = [
                asyncio.create_task(ledger.add_auto_channel(GUILD, channel, added_by=1))
                for channel in range(10)
            ]

        assert await asyncio.wait_for(asyncio.gather(*writes), 30) == [True] * 10
        assert statements.count("COMMIT") == 1
        # Committed before the callers heard back: another connection sees every row.
        assert len(read_db(path, "SELECT * FROM auto_channels")) == 10


async def test_one_failing_write_in_a_group_is_undone_alone(ledger: Ledger) -> None:
    await upload(ledger, 1)
    clashing = await ledger.begin_upload(
        digest=digest(2), size=1, mime="image/png", kind="image", origin=discord_origin()
    )
    statements = await record_statements(ledger)
    async with writes_held_back(ledger):
        before = asyncio.create_task(ledger.add_auto_channel(GUILD, 1, added_by=1))
        failing = asyncio.create_task(
            ledger.complete_upload(clashing, imgur_id="img1", link="l", deletehash="dh")
        )
        after = asyncio.create_task(
            ledger.begin_upload(
                digest=digest(3), size=1, mime="image/png", kind="image", origin=discord_origin()
            )
        )
        missing = asyncio.create_task(ledger.abandon_upload(999, "x"))

    assert await asyncio.wait_for(before, 30) is True
    with pytest.raises(LedgerError, match="uploaded but could not be recorded") as caught:
        await asyncio.wait_for(failing, 30)
    assert isinstance(caught.value.__cause__, sqlite3.IntegrityError)
    with pytest.raises(RecordNotFound):
        await asyncio.wait_for(missing, 30)
    pending_id = await asyncio.wait_for(after, 30)

    assert statements.count("COMMIT") == 1
    assert statements.count("ROLLBACK TO write") == 2
    assert await ledger.auto_channels(GUILD) == [1]
    pending = {u.id: u for u, _ in await ledger.pending_uploads()}
    assert set(pending) == {clashing, pending_id}
    assert (pending[clashing].imgur_id, pending[clashing].deletehash) == (None, None)
    assert await ledger.integrity_ok()


async def test_full_disk_fails_only_the_write_that_did_not_fit(ledger: Ledger) -> None:
    pages = await on_ledger_thread(ledger, "PRAGMA page_count")
    assert isinstance(pages, int)
    await on_ledger_thread(ledger, f"PRAGMA max_page_count = {pages + 4}")

    def begin(n: int, title: str) -> asyncio.Task[int]:
        return asyncio.create_task(
            ledger.begin_upload(
                digest=digest(n),
                size=1,
                mime="image/png",
                kind="image",
                origin=discord_origin(title=title),
            )
        )

    async with writes_held_back(ledger):
        writes = [begin(n, "small") for n in range(3)]
        writes.append(begin(99, "x" * 100_000))
        writes += [begin(n, "small") for n in range(3, 6)]
    results = await asyncio.wait_for(asyncio.gather(*writes, return_exceptions=True), 30)

    failure = results.pop(3)
    assert isinstance(failure, LedgerError)
    assert "full" in str(failure.__cause__)
    assert all(isinstance(r, int) for r in results)
    assert len(await ledger.pending_uploads()) == 6
    assert await ledger.integrity_ok()


async def test_writes_before_one_that_ends_the_transaction_are_run_again(
    ledger: Ledger,
) -> None:
    # SQLite ends the whole transaction on some errors (I/O, out of memory); this write
    # plays one, so the writes that shared its transaction must not be lost with it.
    def ends_the_transaction(db: sqlite3.Connection) -> None:
        db.execute("ROLLBACK")
        raise sqlite3.OperationalError("disk I/O error")

    async with writes_held_back(ledger):
        before = asyncio.create_task(ledger.add_auto_channel(GUILD, 1, added_by=1))
        failing = asyncio.create_task(ledger._write("fail on purpose", ends_the_transaction))
        after = asyncio.create_task(ledger.add_auto_channel(GUILD, 2, added_by=1))

    with pytest.raises(LedgerError) as caught:
        await asyncio.wait_for(failing, 30)
    assert "I/O" in str(caught.value.__cause__)
    assert await asyncio.wait_for(asyncio.gather(before, after), 30) == [True, True]
    assert await ledger.auto_channels(GUILD) == [1, 2]


async def test_id_beyond_64_bits_is_refused_not_truncated(ledger: Ledger) -> None:
    with pytest.raises(LedgerError):
        await ledger.begin_upload(
            digest=digest(1),
            size=1,
            mime="image/png",
            kind="image",
            origin=discord_origin(message_id=2**64),
        )

    assert await ledger.pending_uploads() == []
