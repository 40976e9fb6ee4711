"""Auto-rehost: choosing channels (Manage Server) and replying with permanent links."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import discord
import pytest

from tests import samples
from tests.conftest import WebFiles
from tests.discord_mocks import (
    DiscordEnv,
    discord_env,
    http_error,
    make_app_channel,
    make_channel,
    make_member,
    make_thread,
    no_deletehash_in,
)


@pytest.fixture
async def env(tmp_path: Path, web_files: WebFiles) -> AsyncIterator[DiscordEnv]:
    async with discord_env(tmp_path, web_files) as env:
        yield env


async def enable(env: DiscordEnv, channel: object | None = None) -> None:
    target = channel or env.channel
    channel_id = target.id  # type: ignore[attr-defined]
    await env.ledger.add_auto_channel(env.guild.id, channel_id, added_by=1)


# --- /imgur-auto ------------------------------------------------------------------------------


async def test_a_manager_adds_lists_and_removes_a_channel(env: DiscordEnv) -> None:
    option = make_app_channel(env.channel)

    added, added_talk = env.interaction(env.manager())
    await env.invoke("imgur-auto add", added, channel=option)
    listed, listed_talk = env.interaction(env.manager())
    await env.invoke("imgur-auto list", listed)
    removed, removed_talk = env.interaction(env.manager())
    await env.invoke("imgur-auto remove", removed, channel=option)

    assert added_talk.last.ephemeral
    assert added_talk.last.text.startswith(f"Auto-rehost is on in <#{env.channel.id}>")
    assert f"<#{env.channel.id}>" in listed_talk.last.text
    assert removed_talk.last.text == f"Auto-rehost is off in <#{env.channel.id}>."
    assert await env.ledger.auto_channels(env.guild.id) == []


@pytest.mark.parametrize("name", ["imgur-auto add", "imgur-auto remove", "imgur-auto list"])
async def test_choosing_channels_needs_manage_server(env: DiscordEnv, name: str) -> None:
    await enable(env)
    interaction, talk = env.interaction(env.moderator())
    options = {} if name.endswith("list") else {"channel": make_app_channel(env.channel)}

    await env.invoke(name, interaction, **options)

    assert [(s.how, s.ephemeral) for s in talk.said] == [("send_message", True)]
    assert talk.last.text == "You need the Manage Server permission for this."
    assert await env.ledger.auto_channels(env.guild.id) == [env.channel.id]


def test_the_group_asks_discord_to_show_it_to_managers_only(env: DiscordEnv) -> None:
    group = env.bot.tree.get_command("imgur-auto")
    assert group is not None
    assert group.default_permissions == discord.Permissions(manage_guild=True)
    assert group.guild_only


async def test_an_nsfw_channel_is_refused_until_the_server_allows_it(env: DiscordEnv) -> None:
    nsfw = make_channel(env.guild, nsfw=True, name="spicy")
    refused, refused_talk = env.interaction(env.manager())
    await env.invoke("imgur-auto add", refused, channel=make_app_channel(nsfw))

    await env.ledger.update_guild_settings(env.guild.id, allow_nsfw=True)
    allowed, allowed_talk = env.interaction(env.manager())
    await env.invoke("imgur-auto add", allowed, channel=make_app_channel(nsfw))

    assert refused_talk.last.ephemeral
    assert "NSFW" in refused_talk.last.text
    assert allowed_talk.last.text.startswith("Auto-rehost is on")
    assert await env.ledger.auto_channels(env.guild.id) == [nsfw.id]


async def test_a_category_is_refused(env: DiscordEnv) -> None:
    interaction, talk = env.interaction(env.manager())

    await env.invoke(
        "imgur-auto add", interaction, channel=make_app_channel(env.channel, category=True)
    )

    assert talk.last.text == "Pick a channel, not a category."


async def test_adding_without_the_content_intent_says_where_to_switch_it_on(
    tmp_path: Path, web_files: WebFiles
) -> None:
    async with discord_env(tmp_path, web_files, message_content=False) as env:
        interaction, talk = env.interaction(env.manager())

        await env.invoke("imgur-auto add", interaction, channel=make_app_channel(env.channel))

        assert "paused" in talk.last.text
        assert "Message Content Intent" in talk.last.text


async def test_without_the_content_intent_auto_rehost_stays_off_even_when_files_arrive(
    tmp_path: Path, web_files: WebFiles
) -> None:
    async with discord_env(tmp_path, web_files, message_content=False) as env:
        await enable(env)
        # Without the intent a message still carries its files when it mentions the bot.
        message = env.message(env.attachment(samples.png()), content="<@1> look")

        await env.event("message", message)

        assert env.imgur.images == {}
        assert env.channels.live() == []


async def test_a_deleted_channel_is_forgotten(env: DiscordEnv) -> None:
    await enable(env)

    await env.event("guild_channel_delete", env.channel)

    assert await env.ledger.auto_channels(env.guild.id) == []


# --- rehosting what is posted -----------------------------------------------------------------


async def test_an_image_in_an_enabled_channel_gets_one_reply_with_its_link(
    env: DiscordEnv,
) -> None:
    await enable(env)
    message = env.message(env.attachment(samples.png(seed=1)))

    with no_deletehash_in(env):
        await env.event("message", message)

    (stored,) = env.imgur.images.values()
    (reply,) = env.channels.live(env.channel.id)
    assert reply.content.startswith(f"https://i.imgur.com/{stored.id}.png (")
    assert message.reply.await_args.kwargs == {"mention_author": False}
    (rehost,) = await env.ledger.rehosts_for_messages([message.id])
    assert rehost.origin.auto
    assert rehost.origin.owner_id == env.member.id
    assert rehost.reply_message_id == reply.id


async def test_other_channels_are_left_alone(env: DiscordEnv) -> None:
    await enable(env, make_channel(env.guild, name="elsewhere"))

    await env.event("message", env.message(env.attachment(samples.png())))

    assert env.imgur.uploads() == []
    assert env.channels.live() == []


async def test_threads_and_forum_posts_under_an_enabled_channel_count(env: DiscordEnv) -> None:
    await enable(env)
    thread = make_thread(env.channel)

    await env.event("message", env.message(env.attachment(samples.png()), channel=thread))

    assert len(env.imgur.images) == 1
    assert len(env.channels.live(thread.id)) == 1


async def test_an_nsfw_channel_is_skipped_unless_allowed(env: DiscordEnv) -> None:
    nsfw = make_channel(env.guild, nsfw=True)
    await enable(env, nsfw)

    await env.event("message", env.message(env.attachment(samples.png(seed=1)), channel=nsfw))
    skipped = len(env.imgur.images)
    await env.ledger.update_guild_settings(env.guild.id, allow_nsfw=True)
    await env.event("message", env.message(env.attachment(samples.png(seed=2)), channel=nsfw))

    assert skipped == 0
    assert len(env.imgur.images) == 1


async def test_messages_by_bots_are_ignored(env: DiscordEnv) -> None:
    await enable(env)
    author = make_member(env.guild, bot=True, name="a bot")  # this one's replies, too

    await env.event("message", env.message(env.attachment(samples.png()), author=author))

    assert env.imgur.uploads() == []


async def test_messages_without_media_are_ignored(env: DiscordEnv) -> None:
    await enable(env)
    notes = env.attachment(b"notes", filename="notes.txt", content_type="text/plain")

    await env.event("message", env.message(notes, content="hello"))

    assert env.imgur.uploads() == []
    assert env.channels.live() == []


async def test_several_attachments_get_an_album_first(env: DiscordEnv) -> None:
    await enable(env)
    message = env.message(
        env.attachment(samples.png(seed=1)),
        env.attachment(samples.png(seed=2), spoiler=True),
        env.attachment(samples.gif(animated=True), filename="a.gif", content_type="image/gif"),
    )

    with no_deletehash_in(env):
        await env.event("message", message)

    (album,) = env.imgur.albums.values()
    assert len(album.image_ids) == 3
    (reply,) = env.channels.live()
    lines = reply.content.splitlines()
    assert lines[0] == f"Album: ||https://imgur.com/a/{album.id}||"  # hides the spoiler's image
    assert lines[2].startswith("||https://i.imgur.com/")
    assert "animated GIF" in lines[3]
    assert len(await env.ledger.albums_for_messages([message.id])) == 1


async def test_a_failed_attachment_gets_one_line_in_the_reply(env: DiscordEnv) -> None:
    await enable(env)
    message = env.message(
        env.attachment(samples.png(seed=1), filename="good.png"),
        env.attachment(b"this is not media", filename="bad.png", content_type="image/png"),
    )

    await env.event("message", message)

    (reply,) = env.channels.live()
    lines = reply.content.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("https://i.imgur.com/")
    assert lines[1].startswith("⚠️ bad.png: ")
    assert env.imgur.albums == {}


async def test_a_channel_where_the_bot_may_not_post_is_logged_and_the_upload_kept(
    env: DiscordEnv, caplog: pytest.LogCaptureFixture
) -> None:
    await enable(env)
    message = env.message(env.attachment(samples.png()))
    message.reply.side_effect = http_error(discord.Forbidden, 403, "Missing Permissions")

    with caplog.at_level(logging.WARNING):
        await env.event("message", message)

    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "may not reply" in warning.getMessage()
    (rehost,) = await env.ledger.rehosts_for_messages([message.id])
    assert rehost.upload.state == "done"
    assert rehost.reply_message_id is None


async def test_a_message_deleted_while_the_reply_is_posted_loses_reply_and_copies(
    env: DiscordEnv,
) -> None:
    await enable(env)
    message = env.message(env.attachment(samples.png()))
    post_reply = message.reply.side_effect
    deleted = discord.RawMessageDeleteEvent(
        {"id": str(message.id), "channel_id": str(env.channel.id), "guild_id": str(env.guild.id)}
    )

    async def reply_while_the_poster_deletes(content: str, **fields: object) -> object:
        sent = await post_reply(content, **fields)
        await env.event("raw_message_delete", deleted)  # before the reply is on record
        return sent

    message.reply.side_effect = reply_while_the_poster_deletes
    await env.event("message", message)

    (stored,) = env.imgur.images.values()
    assert stored.deleted
    assert env.channels.live() == []


async def test_a_message_deleted_while_uploading_gets_no_reply_and_no_copy(
    env: DiscordEnv,
) -> None:
    await enable(env)
    message = env.message(env.attachment(samples.png()))
    env.bot.deleted_messages.add([message.id])

    await env.event("message", message)

    (stored,) = env.imgur.images.values()
    assert stored.deleted
    assert env.channels.live() == []
