"""The message menu **Rehost to Imgur**."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from unittest.mock import patch

import discord
import pytest

from bot.ledger import Rehost
from cogs.rehost_menu import MENU_NAME
from tests import samples
from tests.conftest import WebFiles
from tests.discord_mocks import DiscordEnv, discord_env, make_member, no_deletehash_in, spec


@pytest.fixture
async def env(tmp_path: Path, web_files: WebFiles) -> AsyncIterator[DiscordEnv]:
    async with discord_env(tmp_path, web_files) as env:
        yield env


async def test_every_image_and_video_is_rehosted_and_the_links_come_privately(
    env: DiscordEnv,
) -> None:
    poster = make_member(env.guild, name="poster")
    message = env.message(
        env.attachment(samples.png(seed=1), filename="a.png"),
        env.attachment(samples.mp4(seed=2), filename="b.mp4", content_type="video/mp4"),
        env.attachment(b"notes", filename="notes.txt", content_type="text/plain"),
        author=poster,
    )
    interaction, talk = env.interaction()

    with no_deletehash_in(env, talk):
        await env.invoke(MENU_NAME, interaction, message)

    assert talk.deferred is True
    assert [(s.how, s.ephemeral) for s in talk.said] == [("edit", True)]
    links = {f"https://i.imgur.com/{i.id}.{i.ext}" for i in env.imgur.images.values()}
    assert len(links) == 2
    assert all(link in talk.last.text for link in links)
    assert "notes.txt" not in talk.last.text
    assert env.channels.live() == []  # nothing public

    rehosts = await env.ledger.rehosts_for_messages([message.id])
    assert {(r.origin.owner_id, r.origin.requester_id) for r in rehosts} == {
        (poster.id, env.member.id)
    }
    assert not any(r.origin.auto for r in rehosts)


async def test_a_message_without_media_is_refused_privately(env: DiscordEnv) -> None:
    message = env.message(content="just words")
    interaction, talk = env.interaction()

    await env.invoke(MENU_NAME, interaction, message)

    assert [(s.how, s.ephemeral) for s in talk.said] == [("send_message", True)]
    assert "no image or video" in talk.last.text


async def test_images_shown_by_embeds_are_rehosted_too(env: DiscordEnv) -> None:
    url = env.web.serve_bytes("/linked/dog.png", samples.png(seed=3))
    embed = discord.Embed.from_dict({"type": "image", "url": url, "thumbnail": {"url": url}})
    message = env.message(embeds=[embed], content=f"look ||{url}||")
    interaction, talk = env.interaction()

    await env.invoke(MENU_NAME, interaction, message)

    (stored,) = env.imgur.images.values()
    # The link was posted behind spoiler bars, so its copy is too.
    assert f"||https://i.imgur.com/{stored.id}.png||" in talk.last.text


async def test_a_spoiler_attachment_stays_hidden(env: DiscordEnv) -> None:
    message = env.message(env.attachment(samples.png(), spoiler=True))
    interaction, talk = env.interaction()

    await env.invoke(MENU_NAME, interaction, message)

    (stored,) = env.imgur.images.values()
    assert talk.last.text.startswith(f"||https://i.imgur.com/{stored.id}.png||")


async def test_an_expired_attachment_link_is_retried_with_a_fresh_one(env: DiscordEnv) -> None:
    stale = env.attachment(samples.png(seed=4))
    stale.url = env.web.url("/attachments/expired.png")  # answers 404, like an expired link
    fresh = env.attachment(samples.png(seed=4))
    fresh.id = stale.id
    message = env.message(stale)
    refetched = env.message(fresh)
    message.fetch.side_effect = None
    message.fetch.return_value = refetched
    interaction, talk = env.interaction()

    await env.invoke(MENU_NAME, interaction, message)

    message.fetch.assert_awaited_once()
    (stored,) = env.imgur.images.values()
    assert f"https://i.imgur.com/{stored.id}.png" in talk.last.text
    assert env.web.hits == ["/attachments/expired.png", fresh.url.removeprefix(env.web.base)]


async def test_each_failed_item_gets_one_short_line(env: DiscordEnv) -> None:
    message = env.message(
        env.attachment(samples.png(seed=5), filename="good.png"),
        env.attachment(b"plain text here", filename="odd.bin", content_type=None),
    )
    interaction, talk = env.interaction()

    await env.invoke(MENU_NAME, interaction, message)

    lines = talk.last.text.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("https://i.imgur.com/")
    assert lines[1].startswith("⚠️ odd.bin: That is not an image or video")


async def test_a_single_failure_is_answered_by_the_error_handler(env: DiscordEnv) -> None:
    message = env.message(env.attachment(b"plain text here", content_type=None))
    interaction, talk = env.interaction()

    await env.invoke(MENU_NAME, interaction, message)

    assert [(s.how, s.ephemeral) for s in talk.said] == [("edit", True)]
    assert talk.last.text.startswith("That is not an image or video")


async def test_while_the_quota_is_spent_the_menu_refuses_at_once_not_queued(
    tmp_path: Path, web_files: WebFiles
) -> None:
    # Imgur's reset is an hour away; an interaction's answer can be sent for 15 minutes only.
    async with discord_env(tmp_path, web_files, user_limit=5) as env:
        first, _ = env.interaction()
        await env.invoke(MENU_NAME, first, env.message(env.attachment(samples.png(seed=1))))
        second, talk = env.interaction()
        message = env.message(env.attachment(samples.png(seed=2)))

        await asyncio.wait_for(env.invoke(MENU_NAME, second, message), 5)

        reset = int(env.imgur.user_reset)
        assert [(s.how, s.ephemeral) for s in talk.said] == [("send_message", True)]
        assert talk.last.text.startswith(f"Imgur's upload quota is spent until <t:{reset}:t>")
        assert env.services.pipeline.scheduler.waiting == 0


async def test_a_message_deleted_meanwhile_has_its_copies_taken_down(env: DiscordEnv) -> None:
    message = env.message(env.attachment(samples.png(seed=6)))
    env.bot.deleted_messages.add([message.id])  # the deletion event came while uploading
    interaction, talk = env.interaction()

    await env.invoke(MENU_NAME, interaction, message)

    (stored,) = env.imgur.images.values()
    assert stored.deleted
    assert "deleted meanwhile" in talk.last.text
    assert await env.ledger.rehosts_for_messages([message.id]) == []


async def test_a_message_deleted_after_its_copy_was_recorded_gets_no_dead_link(
    env: DiscordEnv,
) -> None:
    message = env.message(env.attachment(samples.png(seed=8)))
    deleted = discord.RawMessageDeleteEvent(
        {"id": str(message.id), "channel_id": str(env.channel.id), "guild_id": str(env.guild.id)}
    )
    rehost = env.services.pipeline.rehost

    async def rehost_then_source_deleted(*args: Any, **kwargs: Any) -> Rehost:
        # The deletion event comes once the copy is on record, before the menu answers: the
        # deletion listener takes the copy down itself.
        done = await rehost(*args, **kwargs)
        await env.event("raw_message_delete", deleted)
        return done

    interaction, talk = env.interaction()
    with patch.object(env.services.pipeline, "rehost", side_effect=rehost_then_source_deleted):
        await env.invoke(MENU_NAME, interaction, message)

    (stored,) = env.imgur.images.values()
    assert stored.deleted
    assert "deleted meanwhile" in talk.last.text
    assert stored.id not in talk.last.text


async def test_the_menu_works_in_direct_messages(env: DiscordEnv) -> None:
    dm = spec(discord.DMChannel)
    dm.id = 42
    message = env.message(env.attachment(samples.png(seed=7)))
    message.guild = None
    message.channel = dm
    interaction, talk = env.interaction(direct=True)

    await env.invoke(MENU_NAME, interaction, message)

    (rehost,) = await env.ledger.rehosts_for_messages([message.id])
    assert rehost.origin.guild_id is None
    assert talk.last.text.startswith("https://i.imgur.com/")
