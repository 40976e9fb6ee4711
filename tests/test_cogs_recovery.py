"""After a crash: interrupted auto-rehosts are redone, and people who asked are told."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest.mock import patch

import discord
import pytest
from blake3 import blake3

from bot.discord_bot import EXTENSIONS
from bot.ledger import Origin
from cogs.discord_media import media_attachments, message_origin, rehost_item
from cogs.recovery import MAX_ACTIONS, interrupted_notice
from tests import samples
from tests.conftest import WebFiles
from tests.discord_mocks import (
    DiscordEnv,
    discord_env,
    http_error,
    make_channel,
    make_member,
    make_thread,
    no_deletehash_in,
)


@dataclass
class Sent:
    """A message the bot posted on its own (not a reply, not an interaction's answer)."""

    channel_id: int
    content: str
    allowed_mentions: discord.AllowedMentions | None


@dataclass
class World:
    """What Discord holds after the restart: channels, their messages, and what the bot sent."""

    env: DiscordEnv
    channels: dict[int, Any] = field(default_factory=dict)
    messages: dict[int, Any] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    refuse_sending_in: set[int] = field(default_factory=set)

    def add_channel(self, channel: Any) -> Any:
        self.channels[channel.id] = channel

        async def fetch_message(message_id: int, /) -> Any:
            message = self.messages.get(message_id)
            if message is None or message.channel.id != channel.id:
                raise http_error(discord.NotFound, 404, "Unknown Message")
            return message

        channel.fetch_message.side_effect = fetch_message
        return channel

    def get_channel(self, channel_id: int, /) -> Any:
        return self.channels.get(channel_id)

    async def fetch_channel(self, channel_id: int, /) -> Any:
        raise http_error(discord.NotFound, 404, "Unknown Channel")

    def partial_messageable(self, channel_id: int, **fields: Any) -> Any:
        channel = self.env.channels.partial_messageable(channel_id, **fields)

        async def send(content: str | None = None, **options: Any) -> Any:
            if channel_id in self.refuse_sending_in:
                raise http_error(discord.Forbidden, 403, "Missing Permissions")
            self.sent.append(Sent(channel_id, content or "", options.get("allowed_mentions")))
            return self.env.channels.post(channel_id, content or "")

        channel.send.side_effect = send
        return channel


@contextlib.contextmanager
def discord_after_restart(env: DiscordEnv) -> Iterator[World]:
    world = World(env)
    with (
        patch.object(env.bot, "get_channel", world.get_channel),
        patch.object(env.bot, "fetch_channel", world.fetch_channel),
        patch.object(env.bot, "get_partial_messageable", world.partial_messageable),
    ):
        world.add_channel(env.channel)
        yield world


@pytest.fixture
async def env(tmp_path: Path, web_files: WebFiles) -> AsyncIterator[DiscordEnv]:
    async with discord_env(tmp_path, web_files) as env:
        yield env


@pytest.fixture
def world(env: DiscordEnv) -> Iterator[World]:
    with discord_after_restart(env) as world:
        yield world


async def enable(env: DiscordEnv) -> None:
    await env.ledger.add_auto_channel(env.guild.id, env.channel.id, added_by=1)


async def cut_off(env: DiscordEnv, origin: Origin, data: bytes = b"") -> None:
    """What a crash mid-upload leaves: an upload on record as pending, for ``origin``."""
    data = data or samples.png(seed=99)
    await env.ledger.begin_upload(
        digest=blake3(data).hexdigest(),
        size=len(data),
        mime="image/png",
        kind="image",
        origin=origin,
    )


async def restart(env: DiscordEnv, *, ready: int = 1) -> None:
    """Start-up as the bot does it: reconcile, then Discord says ready."""
    await env.services.pipeline.reconcile()
    for _ in range(ready):
        await env.event("ready")


def auto_origins(message: Any) -> list[Origin]:
    return [
        message_origin(message, item, requester_id=message.author.id, auto=True)
        for item in media_attachments(message)
    ]


def asked_origin(env: DiscordEnv, requester: Any, filename: str | None, **fields: Any) -> Origin:
    """What ``/imgur`` or the menu puts on record for a person who asked."""
    values: dict[str, Any] = {
        "door": "discord",
        "guild_id": env.guild.id,
        "channel_id": env.channel.id,
        "owner_id": requester.id,
        "requester_id": requester.id,
        "filename": filename,
    }
    values.update(fields)
    return Origin(**values)


def recovery_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "cogs.recovery"]


def test_recovery_is_loaded_with_the_bot(env: DiscordEnv) -> None:
    assert "cogs.recovery" in EXTENSIONS
    assert env.bot.get_cog("Recovery") is not None


# --- auto-rehost ----------------------------------------------------------------------------


async def test_an_interrupted_auto_rehost_is_redone_from_a_fresh_fetch(
    env: DiscordEnv, world: World
) -> None:
    await enable(env)
    posted = env.message(env.attachment(samples.png(seed=1)))
    (origin,) = auto_origins(posted)
    await cut_off(env, origin)
    # Discord's copy now: the same message, its attachment behind a freshly signed link.
    fresh = env.message(env.attachment(samples.png(seed=1)))
    fresh.id = posted.id
    fresh.attachments[0].id = origin.attachment_id
    world.messages[posted.id] = fresh

    with no_deletehash_in(env):
        await restart(env)

    env.channel.fetch_message.assert_awaited_once_with(posted.id)
    (stored,) = env.imgur.images.values()
    (reply,) = env.channels.live(env.channel.id)
    assert reply.content.startswith(f"https://i.imgur.com/{stored.id}.png (")
    fresh.reply.assert_awaited_once()
    (rehost,) = await env.ledger.rehosts_for_messages([posted.id])
    assert rehost.origin.auto
    assert rehost.reply_message_id == reply.id
    assert await env.ledger.pending_uploads() == []


async def test_what_was_done_before_the_crash_is_kept_and_announced_once(
    env: DiscordEnv, world: World
) -> None:
    await enable(env)
    message = env.message(
        env.attachment(samples.png(seed=1), filename="first.png"),
        env.attachment(samples.png(seed=2), filename="second.png"),
    )
    first, second = media_attachments(message)
    done_origin, cut_origin = auto_origins(message)
    before = await rehost_item(env.bot, message, first, done_origin)
    await cut_off(env, cut_origin, samples.png(seed=2))
    world.messages[message.id] = message

    await restart(env)

    assert len(env.imgur.uploads()) == 2  # the first file was not sent again
    (album,) = env.imgur.albums.values()
    (reply,) = env.channels.live(env.channel.id)
    lines = reply.content.splitlines()
    assert lines[0] == f"Album: https://imgur.com/a/{album.id}"
    assert lines[1].startswith(f"{before.upload.link} (")
    rehosts = await env.ledger.rehosts_for_messages([message.id])
    assert [r.origin.attachment_id for r in rehosts] == [first.attachment_id, second.attachment_id]
    assert {r.reply_message_id for r in rehosts} == {reply.id}


async def test_several_cut_off_files_of_one_message_get_one_fetch_and_one_reply(
    env: DiscordEnv, world: World
) -> None:
    await enable(env)
    message = env.message(
        env.attachment(samples.png(seed=1)),
        env.attachment(samples.png(seed=2)),
        env.attachment(samples.png(seed=3)),
    )
    for origin in auto_origins(message):
        await cut_off(env, origin)
    world.messages[message.id] = message

    await restart(env)

    env.channel.fetch_message.assert_awaited_once_with(message.id)
    assert len(env.imgur.uploads()) == 3
    assert len(env.imgur.albums) == 1
    assert len(env.channels.live(env.channel.id)) == 1


async def test_a_message_deleted_meanwhile_is_not_redone_and_its_unannounced_copies_go(
    env: DiscordEnv, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    await enable(env)
    message = env.message(env.attachment(samples.png(seed=1)), env.attachment(samples.png(seed=2)))
    first, _ = media_attachments(message)
    done_origin, cut_origin = auto_origins(message)
    await rehost_item(env.bot, message, first, done_origin)
    await cut_off(env, cut_origin)
    # Not in world.messages: the poster deleted it while the bot was down.

    with caplog.at_level(logging.INFO, logger="cogs.recovery"):
        await restart(env)

    (stored,) = env.imgur.images.values()
    assert stored.deleted  # the server's delete-with-source default
    assert env.channels.live() == []
    assert any("is gone" in r.getMessage() for r in caplog.records)
    assert not [r for r in recovery_records(caplog) if r.levelno > logging.INFO]


async def test_a_message_deleted_meanwhile_with_nothing_uploaded_costs_nothing(
    env: DiscordEnv, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    await enable(env)
    message = env.message(env.attachment(samples.png()))
    (origin,) = auto_origins(message)
    await cut_off(env, origin)

    with caplog.at_level(logging.INFO, logger="cogs.recovery"):
        await restart(env)

    assert env.imgur.requests == []
    assert env.channels.live() == []
    (gone,) = [r for r in caplog.records if "is gone" in r.getMessage()]
    assert gone.levelno == logging.INFO


async def test_a_channel_no_longer_chosen_is_not_rehosted_again(
    env: DiscordEnv, world: World
) -> None:
    message = env.message(env.attachment(samples.png()))
    (origin,) = auto_origins(message)
    await cut_off(env, origin)
    world.messages[message.id] = message  # auto-rehost was switched off in its channel

    await restart(env)

    assert env.imgur.requests == []
    assert env.channels.live() == []


async def test_a_thread_under_a_chosen_channel_is_fetched_and_rehosted(
    env: DiscordEnv, world: World
) -> None:
    await enable(env)
    thread = world.add_channel(make_thread(env.channel))
    message = env.message(env.attachment(samples.png()), channel=thread)
    (origin,) = auto_origins(message)
    await cut_off(env, origin)
    world.messages[message.id] = message

    await restart(env)

    thread.fetch_message.assert_awaited_once_with(message.id)
    assert len(env.channels.live(thread.id)) == 1


async def test_a_message_answered_before_the_crash_is_not_answered_again(
    env: DiscordEnv, world: World
) -> None:
    await enable(env)
    message = env.message(env.attachment(samples.png(seed=1)), env.attachment(samples.png(seed=2)))
    first, _ = media_attachments(message)
    done_origin, cut_origin = auto_origins(message)
    before = await rehost_item(env.bot, message, first, done_origin)
    await env.ledger.set_reply([before.id], channel_id=env.channel.id, message_id=12345)
    await cut_off(env, cut_origin)
    world.messages[message.id] = message

    await restart(env)

    assert len(env.imgur.uploads()) == 1
    assert env.channels.live() == []


async def test_without_the_content_intent_auto_rehosts_are_not_redone(
    tmp_path: Path, web_files: WebFiles, caplog: pytest.LogCaptureFixture
) -> None:
    async with discord_env(tmp_path, web_files, message_content=False) as env:
        with discord_after_restart(env) as world:
            await enable(env)
            message = env.message(env.attachment(samples.png()))
            (origin,) = auto_origins(message)
            await cut_off(env, origin)
            world.messages[message.id] = message

            with caplog.at_level(logging.WARNING, logger="cogs.recovery"):
                await restart(env)

            assert env.imgur.requests == []
            (warning,) = [r for r in caplog.records if r.name == "cogs.recovery"]
            assert "Message Content intent" in warning.getMessage()


# --- people who asked -----------------------------------------------------------------------


async def test_a_person_who_asked_is_told_once_in_the_channel_to_try_again(
    env: DiscordEnv, world: World
) -> None:
    bob = make_member(env.guild, name="bob")
    source = env.message(env.attachment(samples.png(seed=1)))
    # The menu on one message with two files, and bob's /imgur a moment later.
    await cut_off(env, asked_origin(env, env.member, "cat.png", message_id=source.id))
    await cut_off(env, asked_origin(env, env.member, "dog.png", message_id=source.id))
    await cut_off(env, asked_origin(env, bob, "plan.png"))

    with no_deletehash_in(env):
        await restart(env)

    alice_notice, bob_notice = world.sent
    assert alice_notice.channel_id == env.channel.id
    assert alice_notice.content == (
        f"<@{env.member.id}> I restarted while uploading `cat.png` and `dog.png`, so they were "
        "not finished; please try again."
    )
    assert bob_notice.content == (
        f"<@{bob.id}> I restarted while uploading `plan.png`, so it was not finished; "
        "please try again."
    )
    for notice, person in ((alice_notice, env.member), (bob_notice, bob)):
        assert notice.allowed_mentions is not None
        assert notice.allowed_mentions.to_dict() == {"parse": [], "users": [person.id]}
        assert "http" not in notice.content
    assert env.imgur.requests == []
    assert await env.ledger.pending_uploads() == []


async def test_each_channel_gets_its_own_notice(env: DiscordEnv, world: World) -> None:
    elsewhere = world.add_channel(make_channel(env.guild, name="elsewhere"))
    await cut_off(env, asked_origin(env, env.member, "a.png"))
    await cut_off(env, asked_origin(env, env.member, "b.png", channel_id=elsewhere.id))

    await restart(env)

    assert [(s.channel_id, "`a.png`" in s.content) for s in world.sent] == [
        (env.channel.id, True),
        (elsewhere.id, False),
    ]


async def test_recovery_acts_on_the_first_ready_only(env: DiscordEnv, world: World) -> None:
    await enable(env)
    message = env.message(env.attachment(samples.png()))
    (origin,) = auto_origins(message)
    await cut_off(env, origin)
    await cut_off(env, asked_origin(env, env.member, "a.png"))
    world.messages[message.id] = message

    await restart(env, ready=3)  # Discord sends ready again after a reconnect

    assert len(world.sent) == 1
    assert len(env.imgur.uploads()) == 1
    assert len(env.channels.live(env.channel.id)) == 2  # one notice, one reply


async def test_uploads_of_the_command_line_and_http_doors_are_left_to_them(
    env: DiscordEnv, world: World
) -> None:
    await cut_off(env, Origin(door="cli", filename="local.png"))
    await cut_off(env, Origin(door="http", requester_id=7, filename="posted.png"))

    await restart(env)

    assert world.sent == []
    assert env.channels.posted == {}


# --- failures and bounds --------------------------------------------------------------------


async def test_a_failure_is_logged_and_the_others_are_still_recovered(
    env: DiscordEnv, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    await enable(env)
    silent = world.add_channel(make_channel(env.guild, name="read-only"))
    world.refuse_sending_in.add(silent.id)
    hidden = world.add_channel(make_channel(env.guild, name="hidden"))
    hidden.fetch_message.side_effect = http_error(discord.Forbidden, 403, "Missing Access")
    await env.ledger.add_auto_channel(env.guild.id, hidden.id, added_by=1)
    broken = world.add_channel(make_channel(env.guild, name="broken"))
    broken.fetch_message.side_effect = RuntimeError("a bug")
    await env.ledger.add_auto_channel(env.guild.id, broken.id, added_by=1)

    await cut_off(env, asked_origin(env, env.member, "a.png", channel_id=silent.id))
    for channel in (hidden, broken):
        (origin,) = auto_origins(env.message(env.attachment(samples.png()), channel=channel))
        await cut_off(env, origin)
    await cut_off(env, asked_origin(env, env.member, "b.png"))

    with caplog.at_level(logging.WARNING, logger="cogs.recovery"):
        await restart(env)

    (told,) = world.sent
    assert told.channel_id == env.channel.id
    warnings = [r for r in recovery_records(caplog) if r.levelno == logging.WARNING]
    assert [str(silent.id) in r.getMessage() for r in warnings] == [True, False]
    (unexpected,) = [r for r in recovery_records(caplog) if r.levelno == logging.ERROR]
    assert str(broken.id) in unexpected.getMessage()


async def test_at_most_fifty_actions_are_taken_and_the_rest_logged(
    env: DiscordEnv, world: World, caplog: pytest.LogCaptureFixture
) -> None:
    people = [make_member(env.guild, name=f"m{i}") for i in range(MAX_ACTIONS + 5)]
    for person in people:
        await cut_off(env, asked_origin(env, person, "a.png"))

    with caplog.at_level(logging.INFO, logger="cogs.recovery"):
        await restart(env)

    assert len(world.sent) == MAX_ACTIONS
    assert [f"<@{p.id}>" in s.content for p, s in zip(people, world.sent, strict=False)] == [
        True
    ] * MAX_ACTIONS
    skipped = [r for r in caplog.records if r.getMessage().startswith("not recovered")]
    assert len(skipped) == 5
    assert all(
        str(p.id) in r.getMessage() for p, r in zip(people[MAX_ACTIONS:], skipped, strict=True)
    )
    (warning,) = [r for r in recovery_records(caplog) if r.levelno == logging.WARNING]
    assert warning.getMessage().startswith("5 groups of interrupted uploads left alone")


async def test_nothing_interrupted_means_nothing_is_said(env: DiscordEnv, world: World) -> None:
    await restart(env)

    assert world.sent == []
    assert env.channels.posted == {}


# --- the notice -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "what"),
    [
        ([None], "a file"),
        (["a.png", "b.png", "c.png"], "`a.png`, `b.png` and `c.png`"),
        (["a.png", "b.png", "c.png", "d.png", "e.png"], "`a.png`, `b.png` and 3 more files"),
        (["x`y.png"], "`x'y.png`"),
        (["two\nlines @everyone.png"], "`two lines @everyone.png`"),
        (["n" * 300], f"`{'n' * 80}`"),
    ],
)
def test_the_notice_names_the_files_safely_in_one_sentence(
    names: list[str | None], what: str
) -> None:
    text = interrupted_notice(42, names)

    assert text.startswith(f"<@42> I restarted while uploading {what}, so ")
    assert text.endswith("please try again.")
    assert "\n" not in text
