"""``/imgur-status``, ``/imgur-history`` and ``/imgur-settings``."""

from __future__ import annotations

import calendar
import time
from collections.abc import AsyncIterator
from pathlib import Path

import discord
import pytest

from cogs.status import start_of_day
from tests import samples
from tests.conftest import WebFiles
from tests.discord_mocks import DiscordEnv, discord_env, make_channel, make_guild, make_member


@pytest.fixture
async def env(tmp_path: Path, web_files: WebFiles) -> AsyncIterator[DiscordEnv]:
    async with discord_env(tmp_path, web_files) as env:
        yield env


async def upload(env: DiscordEnv, member: object, seed: int) -> None:
    interaction, _ = env.interaction(member)
    await env.invoke("imgur", interaction, image=env.attachment(samples.png(seed=seed)))


# --- /imgur-status ------------------------------------------------------------------------


async def test_status_shows_quota_uploads_today_and_waiting_work_privately(
    env: DiscordEnv,
) -> None:
    await upload(env, env.member, 1)
    await upload(env, env.member, 1)  # the same bytes again: a reused link
    interaction, talk = env.interaction()

    await env.invoke("imgur-status", interaction)

    assert talk.deferred is True
    assert talk.last.ephemeral
    text = talk.last.text
    assert f"Uploads left this hour: **{env.imgur.post_remaining}** of 1250" in text
    assert f"refilled <t:{int(env.imgur.post_reset)}:R>" in text
    assert f"Credits left for this address: **{env.imgur.user_remaining}** of 500" in text
    assert "Uploads since midnight UTC: **1** (plus 1 reused links)" in text
    assert "Waiting for a turn: **0**" in text


async def test_status_asks_imgur_when_no_quota_was_seen_yet(env: DiscordEnv) -> None:
    interaction, talk = env.interaction()

    await env.invoke("imgur-status", interaction)

    assert [r.path for r in env.imgur.requests] == ["/3/credits"]
    assert f"**{env.imgur.user_remaining}** of 500" in talk.last.text
    assert f"<t:{int(env.imgur.user_reset)}:R>" in talk.last.text


def test_the_day_starts_at_midnight_utc() -> None:
    noon = calendar.timegm((2024, 5, 17, 12, 30, 0))
    assert start_of_day(noon) == calendar.timegm((2024, 5, 17, 0, 0, 0))
    assert start_of_day(time.time()) <= time.time()


# --- /imgur-history -----------------------------------------------------------------------


async def test_history_lists_the_servers_uploads_for_moderators(env: DiscordEnv) -> None:
    bob = make_member(env.guild, name="bob")
    await upload(env, env.member, 1)
    await upload(env, bob, 2)
    interaction, talk = env.interaction(env.moderator())

    await env.invoke("imgur-history", interaction)

    lines = talk.last.text.splitlines()
    assert talk.last.ephemeral
    assert len(lines) == 2
    assert f"<@{bob.id}>" in lines[0]
    assert f"<@{env.member.id}>" in lines[1]
    assert "<https://i.imgur.com/" in lines[0]
    edit = interaction.edit_original_response.await_args
    assert edit.kwargs["allowed_mentions"].to_dict() == {"parse": []}  # nobody is pinged


async def test_history_filters_by_member(env: DiscordEnv) -> None:
    bob = make_member(env.guild, name="bob")
    await upload(env, env.member, 1)
    await upload(env, bob, 2)
    interaction, talk = env.interaction(env.moderator())

    await env.invoke("imgur-history", interaction, member=bob)

    (line,) = talk.last.text.splitlines()
    assert f"<@{bob.id}>" in line


async def test_history_marks_deleted_uploads(env: DiscordEnv) -> None:
    await upload(env, env.member, 1)
    (rehost,) = await env.ledger.recent_rehosts(guild_id=env.guild.id)
    await env.services.pipeline.delete_upload(rehost.upload, by=None, reason="test")
    interaction, talk = env.interaction(env.moderator())

    await env.invoke("imgur-history", interaction)

    assert f"~~{rehost.upload.link}~~ (deleted)" in talk.last.text


async def test_history_is_for_moderators_only(env: DiscordEnv) -> None:
    await upload(env, env.member, 1)
    interaction, talk = env.interaction()

    await env.invoke("imgur-history", interaction)

    assert talk.last.text == "You need the Manage Messages permission server-wide for this."
    assert talk.last.ephemeral
    command = env.command("imgur-history")
    assert command.default_permissions == discord.Permissions(manage_messages=True)


async def test_history_is_refused_to_manage_messages_granted_in_one_channel(
    env: DiscordEnv,
) -> None:
    # An overwrite in one channel makes someone a moderator there, not of the whole server.
    await upload(env, env.member, 1)
    channel_mod = make_member(env.guild, name="channel mod")
    interaction, talk = env.interaction(channel_mod, permissions=env.moderator_permissions)

    await env.invoke("imgur-history", interaction)

    assert [(s.text, s.ephemeral) for s in talk.said] == [
        ("You need the Manage Messages permission server-wide for this.", True)
    ]


async def test_history_follows_the_role_even_where_an_overwrite_denies_manage_messages(
    env: DiscordEnv,
) -> None:
    await upload(env, env.member, 1)
    interaction, talk = env.interaction(env.moderator(), permissions=discord.Permissions.none())

    await env.invoke("imgur-history", interaction)

    assert "<https://i.imgur.com/" in talk.last.text


async def test_history_is_refused_when_the_servers_roles_are_unknown(
    env: DiscordEnv, caplog: pytest.LogCaptureFixture
) -> None:
    # discord.py builds a guild it has not cached from the interaction alone, without roles.
    unknown = make_channel(make_guild(env.guild.id, roles_known=False))
    mod = make_member(unknown.guild, permissions=env.moderator_permissions)
    interaction, talk = env.interaction(mod, unknown)

    await env.invoke("imgur-history", interaction)

    assert talk.last.text == "You need the Manage Messages permission server-wide for this."
    assert "cannot check server permissions" in caplog.text


# --- /imgur-settings ----------------------------------------------------------------------


async def test_a_manager_turns_delete_with_source_off_and_allows_nsfw(env: DiscordEnv) -> None:
    first, _ = env.interaction(env.manager())
    await env.invoke("imgur-settings delete-with-source", first, enabled=False)
    second, talk = env.interaction(env.manager())
    await env.invoke("imgur-settings allow-nsfw", second, enabled=True)

    settings = await env.ledger.guild_settings(env.guild.id)
    assert not settings.delete_with_source
    assert settings.allow_nsfw
    assert "Delete with source: **off**" in talk.last.text
    assert "NSFW channels: **allowed**" in talk.last.text


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("imgur-settings show", {}),
        ("imgur-settings delete-with-source", {"enabled": False}),
        ("imgur-settings allow-nsfw", {"enabled": True}),
    ],
)
async def test_settings_need_manage_server(
    env: DiscordEnv, name: str, options: dict[str, bool]
) -> None:
    interaction, talk = env.interaction(env.moderator())

    await env.invoke(name, interaction, **options)

    assert talk.last.text == "You need the Manage Server permission for this."
    settings = await env.ledger.guild_settings(env.guild.id)
    assert settings.delete_with_source
    assert not settings.allow_nsfw


async def test_server_commands_are_refused_in_direct_messages(env: DiscordEnv) -> None:
    interaction, talk = env.interaction(permissions=env.manager_permissions, direct=True)

    await env.invoke("imgur-settings show", interaction)

    assert talk.last.text == "This works only in a server, not in direct messages."
