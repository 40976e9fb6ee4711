"""The bot itself: the central error handler, private answers, shutdown and start-up."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import discord
import pytest
import yarl
from discord import app_commands

from bot import discord_bot
from bot.discord_bot import (
    GENERIC_FAILURE,
    PORTAL_HINT,
    PUBLIC_ANSWER,
    MissingGuildPermissions,
    RehostBot,
    ShuttingDown,
    answer_privately,
    explain,
    guild_permissions,
    has_guild_permissions,
    point_at_discord,
    run_bot,
    wanted_intents,
)
from bot.errors import NotPermitted
from bot.imgur import ImgurRateLimited, ImgurUnavailable
from bot.ledger import Ledger, Origin
from bot.media import MediaTooLarge, UnsupportedMedia
from bot.settings import Settings
from tests.discord_mocks import Channels, http_error, make_channel, make_guild, make_member
from tests.discord_mocks import make_interaction as _make_interaction
from tests.discord_standin import DiscordStandIn
from tests.imgur_standin import ImgurStandIn

MESSAGE_CONTENT = 1 << 15
PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture
def bot() -> RehostBot:
    return RehostBot(Settings(imgur_client_id="test-client-id"), extensions=(), sync_commands=False)


def make_interaction(bot: RehostBot) -> tuple[Any, Any]:
    channel = make_channel(make_guild())
    return _make_interaction(
        bot, Channels(), user=make_member(channel.guild), channel=channel, permissions=None
    )


@pytest.fixture
def restore_endpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """run_bot points discord.py elsewhere; put the real endpoints back afterwards."""
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)
    gateway = discord.gateway.DiscordWebSocket
    monkeypatch.setattr(gateway, "DEFAULT_GATEWAY", gateway.DEFAULT_GATEWAY)


# --- the central error handler ------------------------------------------------------------


def invoke_error(error: Exception) -> app_commands.CommandInvokeError:
    command = app_commands.Command(name="imgur", description="x", callback=_callback)
    return app_commands.CommandInvokeError(command, error)


async def _callback(interaction: discord.Interaction[Any]) -> None:
    return None


@pytest.mark.parametrize(
    ("error", "sentence"),
    [
        (
            invoke_error(MediaTooLarge("The file is 30.0 MB; images may be at most 20 MB.")),
            "The file is 30.0 MB; images may be at most 20 MB.",
        ),
        (
            invoke_error(UnsupportedMedia("That is not an image or video Imgur accepts.")),
            "That is not an image or video Imgur accepts.",
        ),
        (
            invoke_error(ImgurRateLimited(1_700_000_000)),
            "Imgur's upload quota is spent until <t:1700000000:t> (<t:1700000000:R>); "
            "try again then.",
        ),
        (
            invoke_error(ImgurRateLimited(None)),
            "Imgur's upload quota is spent; try again later.",
        ),
        (
            invoke_error(ImgurUnavailable("Imgur is not answering right now; try again later.")),
            "Imgur is not answering right now; try again later.",
        ),
        (
            invoke_error(NotPermitted("You may not delete this.")),
            "You may not delete this.",
        ),
        (
            app_commands.MissingPermissions(["manage_guild"]),
            "You need the Manage Server permission for this.",
        ),
        (
            app_commands.MissingPermissions(["manage_messages"]),
            "You need the Manage Messages permission for this.",
        ),
        (
            MissingGuildPermissions(["manage_messages"]),
            "You need the Manage Messages permission server-wide for this.",
        ),
        (
            app_commands.BotMissingPermissions(["send_messages"]),
            "I need the Send Messages permission here.",
        ),
        (
            app_commands.NoPrivateMessage(),
            "This works only in a server, not in direct messages.",
        ),
        (
            app_commands.CheckFailure(),
            "You may not use this command here.",
        ),
    ],
)
def test_each_known_failure_becomes_one_sentence(
    bot: RehostBot, error: app_commands.AppCommandError, sentence: str
) -> None:
    interaction, _ = make_interaction(bot)

    assert explain(interaction, error) == sentence


def test_an_unexpected_error_is_logged_with_its_traceback_and_told_generically(
    bot: RehostBot, caplog: pytest.LogCaptureFixture
) -> None:
    interaction, _ = make_interaction(bot)
    try:
        raise KeyError("secret detail")
    except KeyError as exc:
        error = invoke_error(exc)

    assert explain(interaction, error) == GENERIC_FAILURE

    (record,) = caplog.records
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert record.exc_info[2] is not None  # the traceback is in the log
    assert "secret detail" not in GENERIC_FAILURE


async def test_the_tree_answers_errors_privately(bot: RehostBot) -> None:
    interaction, talk = make_interaction(bot)

    await bot.tree.on_error(interaction, app_commands.CheckFailure())

    assert [(s.how, s.ephemeral) for s in talk.said] == [("send_message", True)]


async def test_an_error_that_cannot_be_told_is_logged(
    bot: RehostBot, caplog: pytest.LogCaptureFixture
) -> None:
    interaction, _ = make_interaction(bot)
    interaction.response.send_message.side_effect = http_error(discord.NotFound, 404, "Unknown")

    await bot.tree.on_error(interaction, app_commands.CheckFailure())

    assert "could not tell the user" in caplog.records[-1].getMessage()


# --- server-wide permissions, from the interactions discord.py builds -----------------------

GUILD, OWNER, MODERATORS, MEMBER = 7001, 7002, 7003, 7004
MANAGE_MESSAGES = 1 << 13


def _role(role_id: int, permissions: int, position: int) -> dict[str, Any]:
    return {
        "id": str(role_id),
        "name": f"role {role_id}",
        "permissions": str(permissions),
        "position": position,
        "color": 0,
        "hoist": False,
        "managed": False,
        "mentionable": False,
    }


@pytest.fixture
def connected(bot: RehostBot) -> RehostBot:
    """The bot as the gateway left it: logged in, one server cached with its roles."""
    state = bot._connection
    me = {"id": "7000", "username": "bot", "discriminator": "0", "avatar": None, "bot": True}
    state.user = discord.ClientUser(state=state, data=me)  # type: ignore[arg-type]
    roles = [_role(GUILD, 0, 0), _role(MODERATORS, MANAGE_MESSAGES, 1)]
    guild = {"id": str(GUILD), "name": "server", "owner_id": str(OWNER), "roles": roles}
    state._add_guild_from_data(guild)  # type: ignore[arg-type]
    return bot


def slash_interaction(
    bot: RehostBot,
    user_id: int,
    *,
    roles: tuple[int, ...] = (),
    in_channel: int = 0,
    guild_id: int = GUILD,
    partial_guild: bool = False,
) -> discord.Interaction[RehostBot]:
    """A slash command as Discord sends it; ``in_channel``: the permissions it resolved there."""
    channel = {"id": "7100", "type": 0, "name": "media", "position": 0, "guild_id": str(guild_id)}
    user = {"id": str(user_id), "username": "someone", "discriminator": "0", "avatar": None}
    member = {
        "user": user,
        "roles": [str(r) for r in roles],
        "joined_at": None,
        "permissions": str(in_channel),
        "deaf": False,
        "mute": False,
        "flags": 0,
    }
    payload: dict[str, Any] = {
        "id": "7200",
        "type": 2,
        "token": "token",
        "version": 1,
        "application_id": "7000",
        "attachment_size_limit": 10_000_000,
        "guild_id": str(guild_id),
        "channel": channel | {"permission_overwrites": []},
        "member": member,
        "data": {"id": "7300", "name": "imgur-history", "type": 1},
    }
    if partial_guild:  # what Discord adds about the server; discord.py builds a guild from it
        payload["guild"] = {"id": str(guild_id), "locale": "en-US", "features": []}
    return discord.Interaction(data=payload, state=bot._connection)  # type: ignore[arg-type]


def test_manage_messages_from_an_overwrite_is_no_server_wide_permission(
    connected: RehostBot,
) -> None:
    interaction = slash_interaction(connected, MEMBER, in_channel=MANAGE_MESSAGES)

    assert interaction.permissions.manage_messages
    assert not guild_permissions(interaction).manage_messages


def test_a_role_and_the_servers_owner_give_server_wide_permissions(connected: RehostBot) -> None:
    moderator = slash_interaction(connected, MEMBER, roles=(MODERATORS,))
    owner = slash_interaction(connected, OWNER)

    assert guild_permissions(moderator).manage_messages
    assert guild_permissions(owner) == discord.Permissions.all()


@pytest.mark.parametrize("partial_guild", [False, True])
def test_a_server_the_bot_has_not_cached_grants_nothing(
    connected: RehostBot, partial_guild: bool, caplog: pytest.LogCaptureFixture
) -> None:
    # The member's role ids arrive, but what those roles allow is known only from the cache.
    interaction = slash_interaction(
        connected,
        OWNER,
        roles=(MODERATORS,),
        in_channel=MANAGE_MESSAGES,
        guild_id=GUILD + 100,
        partial_guild=partial_guild,
    )

    assert isinstance(interaction.user, discord.Member)
    assert guild_permissions(interaction) == discord.Permissions.none()
    assert "cannot check server permissions" in caplog.text


def test_a_direct_message_grants_nothing(bot: RehostBot) -> None:
    interaction, _ = make_interaction(bot)
    interaction.user = discord.Object(id=1)

    assert guild_permissions(interaction) == discord.Permissions.none()


async def test_the_check_refuses_a_channel_grant_with_its_own_sentence(
    connected: RehostBot,
) -> None:
    @has_guild_permissions(manage_messages=True)
    async def moderate(interaction: discord.Interaction[RehostBot]) -> None:
        return None

    command = app_commands.Command(name="moderate", description="x", callback=moderate)
    (check,) = command.checks
    moderator = slash_interaction(connected, MEMBER, roles=(MODERATORS,))
    channel_mod = slash_interaction(connected, MEMBER, in_channel=MANAGE_MESSAGES)

    assert check(moderator)
    with pytest.raises(MissingGuildPermissions) as refused:
        check(channel_mod)
    assert explain(channel_mod, refused.value) == (
        "You need the Manage Messages permission server-wide for this."
    )


def test_the_check_refuses_unknown_permission_names() -> None:
    with pytest.raises(TypeError, match="manage_everything"):
        has_guild_permissions(manage_everything=True)


# --- answering privately ------------------------------------------------------------------


async def test_a_private_answer_after_a_private_deferral_fills_in_the_thinking_message(
    bot: RehostBot,
) -> None:
    interaction, talk = make_interaction(bot)
    await interaction.response.defer(ephemeral=True, thinking=True)

    await answer_privately(interaction, "nope")

    assert not talk.original_deleted
    assert [(s.how, s.text, s.ephemeral) for s in talk.said] == [("edit", "nope", True)]


async def test_a_private_answer_after_a_private_message_is_a_private_followup(
    bot: RehostBot,
) -> None:
    interaction, talk = make_interaction(bot)
    await interaction.response.send_message("first", ephemeral=True)

    await answer_privately(interaction, "nope")

    assert [(s.how, s.ephemeral) for s in talk.said] == [("send_message", True), ("followup", True)]


async def test_a_private_answer_after_a_public_deferral_removes_the_public_one_first(
    bot: RehostBot,
) -> None:
    interaction, talk = make_interaction(bot)
    await discord_bot.defer_publicly(interaction)

    await answer_privately(interaction, "nope")

    assert interaction.extras[PUBLIC_ANSWER] is False
    assert talk.original_deleted
    assert [(s.how, s.ephemeral) for s in talk.said] == [("followup", True)]


# --- intents and endpoints ----------------------------------------------------------------


def test_the_bot_asks_for_guilds_guild_messages_and_message_content_only() -> None:
    intents = wanted_intents()

    assert intents == discord.Intents(guilds=True, guild_messages=True, message_content=True)
    assert not wanted_intents(message_content=False).message_content


@pytest.mark.usefixtures("restore_endpoints")
def test_discord_endpoints_follow_the_settings() -> None:
    settings = Settings(
        imgur_client_id="x",
        discord_api_url="http://127.0.0.1:9/api/v10",
        discord_gateway_url="ws://127.0.0.1:9",
    )

    point_at_discord(settings)

    assert discord.http.Route.BASE == "http://127.0.0.1:9/api/v10"
    gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    assert gateway == yarl.URL("ws://127.0.0.1:9/")


@pytest.mark.usefixtures("restore_endpoints")
def test_a_gateway_path_reaches_discord_py_as_configured() -> None:
    settings = Settings(imgur_client_id="x", discord_gateway_url="ws://127.0.0.1:9/gateway/")

    point_at_discord(settings)

    gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    assert gateway == yarl.URL("ws://127.0.0.1:9/gateway/")


# --- shutting down ------------------------------------------------------------------------


async def test_closing_waits_for_uploads_in_flight_and_refuses_new_work(bot: RehostBot) -> None:
    release = asyncio.Event()
    entered = asyncio.Event()

    async def upload() -> None:
        async with bot.working():
            entered.set()
            await release.wait()

    async with bot:
        work = asyncio.create_task(upload())
        await entered.wait()
        closing = asyncio.create_task(bot.close())
        while not bot.closing:
            await asyncio.sleep(0)

        with pytest.raises(ShuttingDown):
            async with bot.working():
                pass
        assert not closing.done()

        release.set()
        await asyncio.wait_for(closing, 30)
        await work
    assert bot.is_closed()


# --- running against a local Discord ------------------------------------------------------


@pytest.fixture
async def imgur() -> AsyncIterator[ImgurStandIn]:
    async with ImgurStandIn() as imgur:
        yield imgur


def settings_for(standin: DiscordStandIn, imgur: ImgurStandIn, tmp_path: Path) -> Settings:
    return Settings(
        imgur_client_id="test-client-id",
        discord_token="bot-token",
        database_path=tmp_path / "ledger.sqlite3",
        imgur_api_url=imgur.url,
        discord_api_url=standin.api_url,
        discord_gateway_url=standin.gateway_url,
    )


async def run_until_synced(standin: DiscordStandIn, settings: Settings) -> int:
    """Start the bot, wait until its commands are synced and it is ready, then SIGINT it."""
    running = asyncio.create_task(run_bot(settings))
    try:
        await standin.wait_for_commands("imgur", "Rehost to Imgur", timeout=30)
        await standin.wait_until_ready(timeout=30)
    except BaseException:
        running.cancel()
        raise
    os.kill(os.getpid(), signal.SIGINT)
    return await asyncio.wait_for(running, 60)


@pytest.mark.usefixtures("restore_endpoints")
async def test_the_bot_starts_syncs_its_commands_and_stops_cleanly_on_sigint(
    imgur: ImgurStandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot")
    async with DiscordStandIn(token="bot-token") as standin:
        status = await run_until_synced(standin, settings_for(standin, imgur, tmp_path))

        assert standin.identify_payload is not None
        assert standin.identify_payload["intents"] & MESSAGE_CONTENT
    names = {c["name"] for c in standin.commands}

    assert status == 0
    assert {"imgur", "imgur-auto", "imgur-delete", "imgur-status", "imgur-history"} <= names
    assert {"Rehost to Imgur", "imgur-settings"} <= names
    assert any("stopped cleanly" in r.getMessage() for r in caplog.records)


@pytest.mark.usefixtures("restore_endpoints")
async def test_a_refused_content_intent_gives_one_warning_and_the_bot_keeps_running(
    imgur: ImgurStandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with DiscordStandIn(token="bot-token", message_content_allowed=False) as standin:
        status = await run_until_synced(standin, settings_for(standin, imgur, tmp_path))

        assert standin.identify_payload is not None
        assert not standin.identify_payload["intents"] & MESSAGE_CONTENT

    assert status == 0
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and r.name == "bot.discord_bot"
    ]
    assert len(warnings) == 1
    assert PORTAL_HINT in warnings[0].getMessage()


@pytest.mark.usefixtures("restore_endpoints")
async def test_after_a_refused_content_intent_a_crash_cut_off_upload_is_still_owned_up_to(
    imgur: ImgurStandIn, tmp_path: Path
) -> None:
    async with DiscordStandIn(token="bot-token", message_content_allowed=False) as standin:
        guild = standin.add_guild("Test Server")
        media = guild.add_text_channel("media")
        alice = guild.add_member("alice")
        settings = settings_for(standin, imgur, tmp_path)
        # What a process killed during ``/imgur`` leaves: an upload still pending.
        ledger = await Ledger.open(settings.database_path)
        try:
            await ledger.begin_upload(
                digest="ab" * 32,
                size=1000,
                mime="image/png",
                kind="image",
                origin=Origin(
                    door="discord",
                    guild_id=guild.id,
                    channel_id=media.id,
                    owner_id=alice.id,
                    requester_id=alice.id,
                    filename="cat.png",
                ),
            )
        finally:
            await ledger.close()

        running = asyncio.create_task(run_bot(settings))
        try:
            notice = await standin.wait_for_bot_message(
                media, lambda m: "I restarted while uploading" in m.content, timeout=30
            )
        finally:
            if not running.done():
                os.kill(os.getpid(), signal.SIGINT)
        status = await asyncio.wait_for(running, 60)

    assert status == 0
    assert notice.content.startswith(f"<@{alice.id}> I restarted while uploading `cat.png`")


@pytest.mark.usefixtures("restore_endpoints")
async def test_a_refused_token_fails_with_one_line(
    imgur: ImgurStandIn, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with DiscordStandIn(token="the-real-token") as standin:
        status = await asyncio.wait_for(run_bot(settings_for(standin, imgur, tmp_path)), 60)

    assert status == 1
    (error,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert error.getMessage().startswith("DISCORD_TOKEN was refused by Discord")
    assert "bot-token" not in error.getMessage()


async def test_python_m_bot_starts_and_stops_cleanly_on_sigterm(
    imgur: ImgurStandIn, tmp_path: Path
) -> None:
    async with DiscordStandIn(token="bot-token") as standin:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(PROJECT),
            "DISCORD_TOKEN": "bot-token",
            "IMGUR_CLIENT_ID": "test-client-id",
            "IMGUR_API_URL": imgur.url,
            "DISCORD_API_URL": standin.api_url,
            "DISCORD_GATEWAY_URL": standin.gateway_url,
            "DATABASE_PATH": str(tmp_path / "ledger.sqlite3"),
            "PYTHONWARNINGS": "error::ResourceWarning",
        }
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-X",
            "dev",
            "-m",
            "bot",
            "run",
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            await standin.wait_for_commands("imgur", timeout=60)
            await standin.wait_until_ready(timeout=60)
        except BaseException:
            process.kill()
            await process.communicate()
            raise
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)

    log = stderr.decode()
    assert process.returncode == 0, log
    assert "stopped cleanly" in log
    assert "Unclosed" not in log
    assert "Traceback" not in log
    assert "bot-token" not in log


@pytest.mark.usefixtures("restore_endpoints")
async def test_the_http_endpoint_runs_inside_the_bot_when_configured(
    imgur: ImgurStandIn, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token = "an-endpoint-token-of-some-length"
    health = f"http://127.0.0.1:{port}/healthz"
    auth = {"Authorization": f"Bearer {token}"}

    async with DiscordStandIn(token="bot-token") as standin, aiohttp.ClientSession() as session:
        settings = dataclasses.replace(
            settings_for(standin, imgur, tmp_path), http_port=port, http_token=token
        )
        running = asyncio.create_task(run_bot(settings))
        await standin.wait_until_ready(timeout=30)
        async with session.get(health, headers=auth) as response:
            assert response.status == 200
        os.kill(os.getpid(), signal.SIGINT)
        assert await asyncio.wait_for(running, 60) == 0

        with pytest.raises(aiohttp.ClientConnectionError):
            await session.get(health, headers=auth)
