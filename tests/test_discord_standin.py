"""The Discord stand-in, checked against a real discord.py 2.7 client in the test process."""

from __future__ import annotations

import asyncio
import contextlib
import io
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import discord
import pytest
import yarl
from discord import app_commands
from discord.ext import commands
from discord.gateway import DiscordWebSocket

from tests.discord_standin import (
    BOT_DEFAULT,
    MODERATOR,
    Attachment,
    Channel,
    DiscordStandIn,
    Guild,
    Member,
    Permission,
    StandInUsageError,
)

TOKEN = "bot-token"  # a stand-in token, not a secret
STEP = 10.0  # generous bound for one step on a slow, shared machine


def png_bytes(width: int, height: int) -> bytes:
    """A tiny valid PNG of the given size (one grey row repeated)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


@dataclass
class World:
    guild: Guild
    media: Channel
    forum: Channel
    post: Channel
    alice: Member
    mod: Member


@contextlib.contextmanager
def pointed_at(standin: DiscordStandIn) -> Iterator[None]:
    """Point discord.py at the stand-in; both are class attributes, restored afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(discord.http.Route, "BASE", standin.api_url)
        patch.setattr(DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(standin.gateway_url))
        yield


@pytest.fixture
async def standin() -> AsyncIterator[DiscordStandIn]:
    async with DiscordStandIn(token=TOKEN) as running:
        with pointed_at(running):
            yield running
        assert running.internal_errors == []


@pytest.fixture
def world(standin: DiscordStandIn) -> World:
    guild = standin.add_guild("Rehost Lab")
    media = guild.add_text_channel("media")
    forum = guild.add_forum_channel("showcase")
    post = guild.add_thread(forum, "first post")
    alice = guild.add_member("alice")
    mod = guild.add_member("mod", permissions=MODERATOR)
    return World(guild, media, forum, post, alice, mod)


def make_bot(*, message_content: bool = True, members: bool = True) -> commands.Bot:
    intents = discord.Intents.default()
    intents.message_content = message_content
    intents.members = members
    return commands.Bot(
        command_prefix="!", intents=intents, guild_ready_timeout=0.1, help_command=None
    )


@contextlib.asynccontextmanager
async def connected(bot: discord.Client) -> AsyncIterator[asyncio.Task[None]]:
    """Log in, connect, wait for on_ready; close the client afterwards."""
    await bot.login(TOKEN)
    task = asyncio.create_task(bot.connect())
    try:
        ready = asyncio.create_task(bot.wait_until_ready())
        done, _ = await asyncio.wait([ready, task], timeout=STEP, return_when="FIRST_COMPLETED")
        if ready not in done:
            ready.cancel()
            problem = task.exception() if task.done() else None
            raise AssertionError(f"the client did not become ready: {problem!r}")
        yield task
    finally:
        await bot.close()
        await asyncio.wait_for(task, STEP)


def expect(
    bot: discord.Client, event: str, check: Callable[..., bool] | None = None
) -> asyncio.Task[Any]:
    """Start waiting for a discord.py event before triggering it."""
    return asyncio.create_task(bot.wait_for(event, check=check, timeout=STEP))


async def started(task: asyncio.Task[Any]) -> asyncio.Task[Any]:
    await asyncio.sleep(0)
    return task


# -- REST basics ------------------------------------------------------------------------------


async def test_login_with_wrong_token_fails_without_recording_it(standin: DiscordStandIn) -> None:
    bot = make_bot()
    try:
        with pytest.raises(discord.LoginFailure):
            await bot.login("not-the-token")
    finally:
        await bot.close()

    login = standin.requests[0]
    assert (login.method, login.path, login.status) == ("GET", "/users/@me", 401)
    assert login.headers["Authorization"] == "Bot <redacted>"
    assert all("not-the-token" not in str(vars(record)) for record in standin.requests)


async def test_unknown_route_answers_discord_json_404(standin: DiscordStandIn) -> None:
    headers = {"Authorization": f"Bot {TOKEN}"}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{standin.api_url}/nothing/here", headers=headers) as response:
            assert response.status == 404
            assert response.headers["Content-Type"] == "application/json"
            assert await response.json() == {"message": "404: Not Found", "code": 0}
        async with session.get(f"{standin.api_url}/users/@me", headers=headers) as response:
            assert response.headers["Content-Type"] == "application/json"
            assert (await response.json())["id"] == str(standin.app_id)


# -- gateway ------------------------------------------------------------------------------------


async def test_ready_fills_the_guild_cache(standin: DiscordStandIn, world: World) -> None:
    bot = make_bot()
    async with connected(bot):
        guild = bot.get_guild(world.guild.id)
        assert guild is not None
        assert guild.chunked
        assert guild.member_count == len(world.guild.members) == len(guild.members)
        assert bot.user is not None
        assert {m.name for m in guild.members} >= {"alice", "mod", bot.user.name}
        assert isinstance(guild.get_channel(world.media.id), discord.TextChannel)
        assert isinstance(guild.get_channel(world.forum.id), discord.ForumChannel)
        thread = guild.get_thread(world.post.id)
        assert thread is not None
        assert thread.parent_id == world.forum.id
        assert guild.me.guild_permissions.send_messages

    identify = standin.identify_payload
    assert identify is not None
    assert identify["token"] == "<redacted>"
    assert identify["intents"] & discord.Intents.message_content.flag
    query = standin.connections[0].query
    assert (query["v"], query["encoding"]) == ("10", "json")
    assert "compress" in query  # asked for, yet plain text frames are what it gets


async def test_heartbeats_are_acknowledged() -> None:
    async with DiscordStandIn(token=TOKEN, heartbeat_interval=200) as fast:
        with pointed_at(fast):
            fast.add_guild("beats")
            bot = make_bot()
            async with connected(bot):
                await fast.wait_until(
                    lambda: fast.connections[0].heartbeats >= 3, STEP, "three heartbeats"
                )
                assert bot.latency != float("inf")


async def test_message_content_intent_not_allowed_closes_with_4014() -> None:
    async with DiscordStandIn(token=TOKEN, message_content_allowed=False) as strict:
        with pointed_at(strict):
            bot = make_bot(message_content=True)
            try:
                await bot.login(TOKEN)
                with pytest.raises(discord.PrivilegedIntentsRequired):
                    await asyncio.wait_for(bot.connect(), STEP)
            finally:
                await bot.close()

    assert strict.connections[0].close_code == 4014


async def test_without_members_intent_only_the_bot_member_arrives(
    standin: DiscordStandIn, world: World
) -> None:
    bot = make_bot(members=False)
    async with connected(bot):
        guild = bot.get_guild(world.guild.id)
        assert guild is not None
        assert guild.member_count == len(world.guild.members)
        assert [m.id for m in guild.members] == [standin.bot_user.id]


async def test_portal_without_message_content_hides_it_over_rest_too() -> None:
    async with DiscordStandIn(token=TOKEN, message_content_allowed=False) as strict:
        guild = strict.add_guild("Quiet")
        channel = guild.add_text_channel("general")
        alice = guild.add_member("alice")
        with pointed_at(strict):
            bot = make_bot(message_content=False)
            async with connected(bot):
                posted = await strict.post_message(channel, alice, "hidden text")
                target = bot.get_channel(channel.id)
                assert isinstance(target, discord.TextChannel)
                fetched = await target.fetch_message(posted.id)
                own = await target.send("the bot's own words")
                refetched = await target.fetch_message(own.id)

    assert fetched.content == ""
    assert refetched.content == "the bot's own words"
    application = next(r for r in strict.requests if r.path == "/oauth2/applications/@me")
    assert not application.response["flags"] & (1 << 18 | 1 << 19)


async def test_resume_replays_events_missed_while_disconnected(
    standin: DiscordStandIn, world: World
) -> None:
    bot = make_bot()
    async with connected(bot):
        resumed = await started(expect(bot, "resumed"))
        standin.hold_gateway()
        await standin.disconnect(4000)
        missed = await standin.post_message(world.media, world.alice, "sent during the outage")
        received = await started(expect(bot, "message", lambda m: m.id == missed.id))
        standin.release_gateway()

        connection = await standin.wait_for_resume(STEP)
        await asyncio.wait_for(resumed, STEP)
        message = await asyncio.wait_for(received, STEP)

    assert message.content == "sent during the outage"
    assert [c.kind for c in standin.connections] == ["identify", "resume"]
    assert connection.path == "/gateway/resume"
    assert standin.connections[0].close_code == 4000
    resume = next(frame for frame in connection.received if frame["op"] == 6)
    assert resume["d"]["token"] == "<redacted>"
    missed_seq = next(
        event["s"]
        for event in standin.gateway.current.log  # type: ignore[union-attr]
        if event["t"] == "MESSAGE_CREATE" and event["d"]["id"] == str(missed.id)
    )
    assert resume["d"]["seq"] < missed_seq


# -- messages -----------------------------------------------------------------------------------


async def test_message_events_reach_the_bot(standin: DiscordStandIn, world: World) -> None:
    bot = make_bot()
    image = png_bytes(3, 2)
    async with connected(bot):
        created = await started(expect(bot, "message"))
        posted = await standin.post_message(
            world.media, world.alice, "look", attachments=[Attachment("cat pic.png", image)]
        )
        message = await asyncio.wait_for(created, STEP)
        assert message.content == "look"
        assert message.author.id == world.alice.id
        assert isinstance(message.author, discord.Member)
        (attachment,) = message.attachments
        assert attachment.filename == "cat_pic.png"
        assert (attachment.size, attachment.content_type) == (len(image), "image/png")
        assert (attachment.width, attachment.height) == (3, 2)
        assert await attachment.read() == image

        deleted = await started(expect(bot, "message_delete"))
        await standin.delete_message(posted)
        assert (await asyncio.wait_for(deleted, STEP)).id == posted.id

        first = await standin.post_message(world.media, world.alice, "one")
        second = await standin.post_message(world.media, world.alice, "two")
        bulk = await started(expect(bot, "raw_bulk_message_delete"))
        await standin.bulk_delete([first, second])
        assert (await asyncio.wait_for(bulk, STEP)).message_ids == {first.id, second.id}


async def test_without_message_content_intent_attachments_are_hidden(
    world: World, standin: DiscordStandIn
) -> None:
    bot = make_bot(message_content=False)
    async with connected(bot):
        received = await started(expect(bot, "message"))
        await standin.post_message(
            world.media, world.alice, "secret", attachments=[Attachment("a.png", png_bytes(1, 1))]
        )
        plain = await asyncio.wait_for(received, STEP)

        received = await started(expect(bot, "message"))
        await standin.post_message(
            world.media,
            world.alice,
            "hey bot",
            attachments=[Attachment("b.png", png_bytes(1, 1))],
            mentions_bot=True,
        )
        mentioned = await asyncio.wait_for(received, STEP)

    assert (plain.content, plain.attachments, plain.embeds) == ("", [], [])
    assert bot.user is not None
    assert mentioned.content == f"<@{bot.user.id}> hey bot"
    assert [a.filename for a in mentioned.attachments] == ["b.png"]


async def test_reply_with_file_is_recorded_and_served(
    standin: DiscordStandIn, world: World
) -> None:
    bot = make_bot()
    async with connected(bot):
        source = await standin.post_message(world.media, world.alice, "rehost this")
        channel = bot.get_channel(world.media.id)
        assert isinstance(channel, discord.TextChannel)
        original = await channel.fetch_message(source.id)
        sent = await original.reply("done", file=discord.File(io.BytesIO(b"GIF89a..."), "x.gif"))
        assert sent.reference is not None
        assert sent.reference.message_id == source.id
        assert await sent.attachments[0].read() == b"GIF89a..."

        edited = await sent.edit(content="done, edited")
        assert edited.content == "done, edited"
        await sent.delete()

    upload = next(r for r in standin.requests if r.route == "POST /channels/{channel_id}/messages")
    assert upload.multipart
    assert upload.json["message_reference"]["message_id"] == source.id
    assert [(f.form_name, f.filename, f.size) for f in upload.files] == [("files[0]", "x.gif", 9)]
    (posted,) = standin.channel_messages(world.media)
    assert posted.content == "done, edited"
    assert posted.history == ["done"]
    assert posted.deleted
    assert posted.reference is source


async def test_sending_without_permission_is_forbidden(
    standin: DiscordStandIn, world: World
) -> None:
    world.media.set_permissions(world.guild.me, deny=Permission.SEND_MESSAGES)
    bot = make_bot()
    async with connected(bot):
        channel = bot.get_channel(world.media.id)
        assert isinstance(channel, discord.TextChannel)
        assert not channel.permissions_for(channel.guild.me).send_messages
        with pytest.raises(discord.Forbidden) as caught:
            await channel.send("hello")

    assert (caught.value.status, caught.value.code) == (403, 50013)
    assert caught.value.text == "Missing Permissions"
    assert standin.channel_messages(world.media) == []


@pytest.mark.parametrize("is_global", [False, True])
async def test_rate_limited_send_is_retried(
    standin: DiscordStandIn, world: World, is_global: bool
) -> None:
    standin.inject_rate_limit(
        "POST /channels/{channel_id}/messages", retry_after=0.1, is_global=is_global
    )
    bot = make_bot()
    async with connected(bot):
        channel = bot.get_channel(world.media.id)
        assert isinstance(channel, discord.TextChannel)
        await channel.send("eventually")

    sends = [r for r in standin.requests if r.route == "POST /channels/{channel_id}/messages"]
    assert [r.status for r in sends] == [429, 200]
    assert sends[0].response == {
        "message": "You are being rate limited.",
        "retry_after": 0.1,
        "global": is_global,
    }
    assert [m.content for m in standin.channel_messages(world.media)] == ["eventually"]


async def test_injected_server_error_is_retried_by_discord_py(
    standin: DiscordStandIn, world: World
) -> None:
    standin.inject_error("POST /channels/{channel_id}/messages", 500)
    bot = make_bot()
    async with connected(bot):
        channel = bot.get_channel(world.media.id)
        assert isinstance(channel, discord.TextChannel)
        await channel.send("after one failure")

    sends = [r for r in standin.requests if r.route == "POST /channels/{channel_id}/messages"]
    assert [r.status for r in sends] == [500, 200]
    assert [m.content for m in standin.channel_messages(world.media)] == ["after one failure"]


# -- CDN ----------------------------------------------------------------------------------------


async def test_cdn_links_expire_and_die_with_their_message(
    standin: DiscordStandIn, world: World
) -> None:
    bot = make_bot()
    async with connected(bot):
        received = await started(expect(bot, "message"))
        posted = await standin.post_message(
            world.media, world.alice, "", attachments=[Attachment("clip.mp4", b"\0" * 300_000)]
        )
        (attachment,) = (await asyncio.wait_for(received, STEP)).attachments
        url = yarl.URL(attachment.url)
        assert url.path.startswith(f"/attachments/{world.media.id}/")
        assert set(url.query) >= {"ex", "is", "hm"}

        async with aiohttp.ClientSession() as session:
            async with session.get(attachment.url) as response:
                assert response.status == 200
                assert response.headers["Content-Type"] == "video/mp4"
                assert response.content_length == 300_000
                assert len(await response.read()) == 300_000
            tampered = str(url.update_query(hm="0" * 64))
            async with session.get(tampered) as response:
                assert response.status == 404

        standin.advance_clock(24 * 3600 + 1)
        with pytest.raises(discord.NotFound):
            await attachment.read()

        channel = bot.get_channel(world.media.id)
        assert isinstance(channel, discord.TextChannel)
        fresh = (await channel.fetch_message(posted.id)).attachments[0]
        assert fresh.url != attachment.url
        assert len(await fresh.read()) == 300_000

        await standin.delete_message(posted)
        async with aiohttp.ClientSession() as session, session.get(fresh.url) as response:
            assert response.status == 404
            assert await response.text() == "This content is no longer available."


# -- interactions -------------------------------------------------------------------------------


Handler = Callable[[discord.Interaction], Awaitable[None]]


def command_bot(handler: Handler, **kwargs: Any) -> commands.Bot:
    """A bot with one slash command ``/rehost file:<attachment> [note:<text>]``."""
    bot = make_bot(**kwargs)

    @bot.tree.command(name="rehost", description="Give an attachment a permanent home")
    @app_commands.describe(file="The file to rehost", note="A note")
    async def rehost(
        interaction: discord.Interaction, file: discord.Attachment, note: str | None = None
    ) -> None:
        await handler(interaction)

    return bot


async def test_slash_attachment_option_resolves_and_downloads(
    standin: DiscordStandIn, world: World
) -> None:
    seen: dict[str, Any] = {}

    async def handler(interaction: discord.Interaction) -> None:
        file = interaction.namespace.file
        seen["file"] = file
        seen["bytes"] = await file.read()
        seen["limit"] = interaction.filesize_limit
        seen["can_manage"] = interaction.permissions.manage_messages
        seen["app_can_attach"] = interaction.app_permissions.attach_files
        seen["data"] = interaction.data
        receipt = discord.File(io.BytesIO(b"receipt"), "receipt.txt")
        await interaction.response.send_message(f"got {file.filename}", file=receipt)

    bot = command_bot(handler)
    image = png_bytes(4, 4)
    async with connected(bot):
        await bot.tree.sync()
        (synced,) = standin.commands
        assert synced["options"][0]["type"] == 11
        handle = await standin.invoke_slash(
            "rehost", world.mod, world.media, {"file": Attachment("shot.png", image)}
        )
        await handle.wait_done(STEP)

    file = seen["file"]
    assert isinstance(file, discord.Attachment)
    assert (file.filename, file.size, file.content_type) == ("shot.png", len(image), "image/png")
    assert file.ephemeral
    assert "/ephemeral-attachments/" in file.url
    assert seen["bytes"] == image
    assert seen["limit"] == world.guild.filesize_limit
    assert seen["can_manage"]
    assert seen["app_can_attach"]
    assert seen["data"]["options"][0]["value"] == str(file.id)
    assert (handle.callback_type, handle.deferred, handle.ephemeral) == (4, False, False)
    assert handle.response_content == "got shot.png"
    assert handle.original is not None
    assert [a.read_bytes() for a in handle.original.attachments] == [b"receipt"]
    assert handle.visible_messages().channel == [handle.original]


async def test_first_followup_keeps_a_public_deferral_public(
    standin: DiscordStandIn, world: World
) -> None:
    async def handler(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        await interaction.followup.send("upload failed", ephemeral=True)
        await interaction.followup.send("details for you", ephemeral=True)

    bot = command_bot(handler)
    async with connected(bot):
        await bot.tree.sync()
        handle = await standin.invoke_slash(
            "rehost", world.alice, world.media, {"file": Attachment("a.png", png_bytes(1, 1))}
        )
        await handle.wait_for_followups(2, STEP)

    visible = handle.visible_messages()
    assert handle.deferred
    assert not handle.thinking
    assert [m.content for m in visible.channel] == ["upload failed"]
    assert [m.content for m in visible.invoker_only] == ["details for you"]
    assert handle.followups[0] is handle.original
    assert [m.content for m in standin.channel_messages(world.media)] == ["upload failed"]


async def test_first_followup_keeps_a_private_deferral_private(
    standin: DiscordStandIn, world: World
) -> None:
    async def handler(interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True)
        await interaction.followup.send("only you see this")

    bot = command_bot(handler)
    async with connected(bot):
        await bot.tree.sync()
        handle = await standin.invoke_slash(
            "rehost", world.alice, world.media, {"file": Attachment("a.png", png_bytes(1, 1))}
        )
        await handle.wait_done(STEP)

    assert handle.ephemeral
    assert [m.content for m in handle.visible_messages().invoker_only] == ["only you see this"]
    assert standin.channel_messages(world.media) == []


async def test_late_answer_fails_with_unknown_interaction(
    standin: DiscordStandIn, world: World
) -> None:
    started_event = asyncio.Event()
    go = asyncio.Event()
    outcome: dict[str, Any] = {}

    async def handler(interaction: discord.Interaction) -> None:
        started_event.set()
        await go.wait()
        try:
            await interaction.response.send_message("too late")
        except discord.NotFound as exc:
            outcome["error"] = exc

    bot = command_bot(handler)
    async with connected(bot):
        await bot.tree.sync()
        handle = await standin.invoke_slash(
            "rehost", world.alice, world.media, {"file": Attachment("a.png", png_bytes(1, 1))}
        )
        await asyncio.wait_for(started_event.wait(), STEP)
        standin.advance_clock(3.5)
        go.set()
        await handle.wait_done(STEP)

    error = outcome["error"]
    assert (error.status, error.code, error.text) == (404, 10062, "Unknown interaction")
    assert [(e.status, e.code) for e in handle.errors] == [(404, 10062)]
    assert handle.failed_to_respond
    assert handle.original is None


async def test_second_callback_is_rejected(standin: DiscordStandIn, world: World) -> None:
    async def handler(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("first")

    bot = command_bot(handler)
    async with connected(bot):
        await bot.tree.sync()
        handle = await standin.invoke_slash(
            "rehost", world.alice, world.media, {"file": Attachment("a.png", png_bytes(1, 1))}
        )
        await handle.wait_done(STEP)
        url = f"{standin.api_url}/interactions/{handle.id}/{handle.token}/callback"
        payload = {"type": 4, "data": {"content": "x"}}
        async with aiohttp.ClientSession() as session, session.post(url, json=payload) as response:
            assert response.status == 400
            body = await response.json()

    assert body == {"message": "Interaction has already been acknowledged.", "code": 40060}
    assert handle.response_content == "first"


async def test_message_command_target_carries_content_without_the_intent(
    standin: DiscordStandIn, world: World
) -> None:
    seen: dict[str, discord.Message] = {}

    async def rehost_message(interaction: discord.Interaction, message: discord.Message) -> None:
        seen["target"] = message
        await interaction.response.send_message("queued", ephemeral=True)

    bot = make_bot(message_content=False)
    bot.tree.add_command(app_commands.ContextMenu(name="Rehost", callback=rehost_message))
    async with connected(bot):
        await bot.tree.sync()
        target = await standin.post_message(
            world.media, world.alice, "pic", attachments=[Attachment("p.png", png_bytes(2, 2))]
        )
        handle = await standin.invoke_message_command("Rehost", world.alice, target)
        await handle.wait_done(STEP)

    message = seen["target"]
    assert message.id == target.id
    assert message.content == "pic"
    assert [a.filename for a in message.attachments] == ["p.png"]
    assert handle.ephemeral
    assert handle.visible_messages().invoker_only[0].content == "queued"


async def test_autocomplete_returns_the_bot_choices(standin: DiscordStandIn, world: World) -> None:
    bot = make_bot()

    @bot.tree.command(name="find", description="Find an upload")
    async def find(interaction: discord.Interaction, query: str) -> None:
        await interaction.response.send_message(query)

    @find.autocomplete("query")
    async def suggest(interaction: discord.Interaction, current: str) -> list[Any]:
        return [app_commands.Choice(name=f"{current} {n}", value=f"{current}-{n}") for n in (1, 2)]

    async with connected(bot):
        await bot.tree.sync()
        choices = await standin.invoke_autocomplete(
            "find", world.alice, world.media, {"query": "ca"}, "query", timeout=STEP
        )

    assert choices == [{"name": "ca 1", "value": "ca-1"}, {"name": "ca 2", "value": "ca-2"}]


async def test_bot_permissions_reach_interactions(standin: DiscordStandIn, world: World) -> None:
    world.guild.set_bot_permissions(BOT_DEFAULT & ~Permission.ATTACH_FILES)
    seen: dict[str, discord.Permissions] = {}

    async def handler(interaction: discord.Interaction) -> None:
        seen["app"] = interaction.app_permissions
        seen["user"] = interaction.permissions
        await interaction.response.send_message("ok", ephemeral=True)

    bot = command_bot(handler)
    async with connected(bot):
        await bot.tree.sync()
        handle = await standin.invoke_slash(
            "rehost", world.alice, world.media, {"file": Attachment("a.png", png_bytes(1, 1))}
        )
        await handle.wait_done(STEP)

    assert not seen["app"].attach_files
    assert seen["app"].send_messages
    assert not seen["user"].manage_messages


async def test_deleting_a_public_deferral_lets_the_error_stay_private(
    standin: DiscordStandIn, world: World
) -> None:
    async def handler(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        await interaction.edit_original_response(content="uploading...")
        await interaction.delete_original_response()
        await interaction.followup.send("that file is too large", ephemeral=True)

    bot = command_bot(handler)
    async with connected(bot):
        await bot.tree.sync()
        handle = await standin.invoke_slash(
            "rehost", world.alice, world.media, {"file": Attachment("a.png", png_bytes(1, 1))}
        )
        await handle.wait_for_followups(1, STEP)

    assert handle.original is not None
    assert handle.original.deleted
    assert handle.original.content == "uploading..."
    visible = handle.visible_messages()
    assert visible.channel == []
    assert [m.content for m in visible.invoker_only] == ["that file is too large"]
    (placeholder,) = standin.channel_messages(world.media)
    assert placeholder.deleted


async def test_followups_stop_after_fifteen_minutes(standin: DiscordStandIn, world: World) -> None:
    deferred = asyncio.Event()
    go = asyncio.Event()
    outcome: dict[str, Any] = {}

    async def handler(interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        deferred.set()
        await go.wait()
        try:
            await interaction.followup.send("finally done")
        except discord.HTTPException as exc:
            outcome["error"] = exc

    bot = command_bot(handler)
    async with connected(bot):
        await bot.tree.sync()
        handle = await standin.invoke_slash(
            "rehost", world.alice, world.media, {"file": Attachment("a.png", png_bytes(1, 1))}
        )
        await asyncio.wait_for(deferred.wait(), STEP)
        standin.advance_clock(15 * 60 + 1)
        go.set()
        await handle.wait_until(lambda h: h.errors, STEP)

    assert (outcome["error"].status, outcome["error"].code) == (401, 50027)
    assert handle.thinking


async def test_buttons_and_modals_round_trip(standin: DiscordStandIn, world: World) -> None:
    class Reason(discord.ui.Modal, title="Why delete it?"):
        reason: discord.ui.TextInput[Reason] = discord.ui.TextInput(label="Reason")

        async def on_submit(self, interaction: discord.Interaction) -> None:
            await interaction.response.edit_message(content=f"deleted: {self.reason.value}")

    class Confirm(discord.ui.View):
        @discord.ui.button(label="Keep", custom_id="keep")
        async def keep(
            self, interaction: discord.Interaction, button: discord.ui.Button[Confirm]
        ) -> None:
            await interaction.response.edit_message(content="kept")

        @discord.ui.button(label="Delete", custom_id="delete")
        async def delete(
            self, interaction: discord.Interaction, button: discord.ui.Button[Confirm]
        ) -> None:
            await interaction.response.send_modal(Reason())

    bot = make_bot()
    async with connected(bot):
        channel = bot.get_channel(world.media.id)
        assert isinstance(channel, discord.TextChannel)
        await channel.send("Delete the upload?", view=Confirm())
        prompt = await standin.wait_for_bot_message(world.media, timeout=STEP)

        kept = await standin.use_component(prompt, world.alice, "keep")
        await kept.wait_done(STEP)
        assert (kept.callback_type, prompt.content) == (7, "kept")

        asked = await standin.use_component(prompt, world.alice, "delete")
        await asked.wait_done(STEP)
        assert asked.modal is not None
        assert asked.modal["title"] == "Why delete it?"

        submitted = await standin.submit_modal(asked, {"Reason": "duplicate"})
        await submitted.wait_done(STEP)

    assert prompt.content == "deleted: duplicate"
    assert prompt.history == ["Delete the upload?", "kept"]


async def test_world_changes_after_connect_reach_the_bot(
    standin: DiscordStandIn, world: World
) -> None:
    bot = make_bot()
    async with connected(bot):
        channel_created = await started(expect(bot, "guild_channel_create"))
        archive = world.guild.add_text_channel("archive")
        assert (await asyncio.wait_for(channel_created, STEP)).id == archive.id

        joined = await started(expect(bot, "member_join"))
        bob = world.guild.add_member("bob")
        assert (await asyncio.wait_for(joined, STEP)).id == bob.id

        updated = await started(expect(bot, "guild_channel_update"))
        archive.set_permissions(bob, deny=Permission.VIEW_CHANNEL)
        _, after = await asyncio.wait_for(updated, STEP)
        assert not after.permissions_for(after.guild.get_member(bob.id)).view_channel

        role_created = await started(expect(bot, "guild_role_create"))
        helpers = world.guild.add_role("helpers", Permission.MANAGE_MESSAGES)
        assert (await asyncio.wait_for(role_created, STEP)).name == "helpers"

        member_updated = await started(expect(bot, "member_update"))
        bob.add_role(helpers)
        _, bob_after = await asyncio.wait_for(member_updated, STEP)
        assert bob_after.guild_permissions.manage_messages

        thread_created = await started(expect(bot, "thread_create"))
        thread = world.guild.add_thread(archive, "old uploads")
        assert (await asyncio.wait_for(thread_created, STEP)).id == thread.id

        guild_joined = await started(expect(bot, "guild_join"))
        second = standin.add_guild("Second Server")
        assert (await asyncio.wait_for(guild_joined, STEP)).id == second.id

    assert len(standin.connections) == 1


async def test_large_file_attachment_is_streamed(
    standin: DiscordStandIn, world: World, tmp_path: Path
) -> None:
    video = tmp_path / "long video.webm"
    video.write_bytes(b"\x1a\x45\xdf\xa3" + b"v" * (3 * 1024 * 1024))
    bot = make_bot()
    async with connected(bot):
        received = await started(expect(bot, "message"))
        await standin.post_message(
            world.media, world.alice, attachments=[Attachment(video.name, video)]
        )
        (attachment,) = (await asyncio.wait_for(received, STEP)).attachments
        assert attachment.size == video.stat().st_size
        assert attachment.content_type == "video/webm"
        assert await attachment.read() == video.read_bytes()


async def test_direct_messages_work_both_ways(standin: DiscordStandIn, world: World) -> None:
    shy = world.guild.add_member(standin.add_user("shy", accepts_dms=False))
    bot = make_bot(message_content=False)
    async with connected(bot):
        user = await bot.fetch_user(world.alice.id)
        sent = await user.send("your upload is ready")
        dm = standin.open_dm(world.alice)
        assert [m.content for m in standin.channel_messages(dm)] == ["your upload is ready"]
        assert sent.channel.id == dm.id

        received = await started(expect(bot, "message", lambda m: m.author.id == world.alice.id))
        await standin.post_message(
            dm, world.alice, "thanks", attachments=[Attachment("t.txt", b"t")]
        )
        reply = await asyncio.wait_for(received, STEP)
        assert reply.guild is None
        assert reply.content == "thanks"
        assert [a.filename for a in reply.attachments] == ["t.txt"]

        with pytest.raises(discord.Forbidden) as caught:
            await (await bot.fetch_user(shy.id)).send("hello")
        assert caught.value.code == 50007


async def test_upload_over_the_guild_limit_is_rejected(standin: DiscordStandIn) -> None:
    guild = standin.add_guild("Small", filesize_limit=1000)
    channel = guild.add_text_channel("uploads")
    bot = make_bot()
    async with connected(bot):
        target = bot.get_channel(channel.id)
        assert isinstance(target, discord.TextChannel)
        with pytest.raises(discord.HTTPException) as caught:
            await target.send(file=discord.File(io.BytesIO(b"x" * 2000), "big.bin"))

    assert (caught.value.status, caught.value.code) == (413, 40005)


async def test_subcommands_and_options_follow_the_synced_definition(
    standin: DiscordStandIn, world: World
) -> None:
    seen: dict[str, Any] = {}
    bot = make_bot()
    ledger = app_commands.Group(
        name="ledger",
        description="Your uploads",
        default_permissions=discord.Permissions(manage_messages=True),
    )

    @ledger.command(name="show", description="Show one upload")
    async def show(
        interaction: discord.Interaction,
        number: app_commands.Range[int, 1, 99],
        who: discord.Member,
    ) -> None:
        seen["args"] = (number, who.id)
        await interaction.response.send_message("shown", ephemeral=True)

    bot.tree.add_command(ledger)
    async with connected(bot):
        await bot.tree.sync()
        with pytest.raises(StandInUsageError, match="subcommand"):
            await standin.invoke_slash("ledger", world.mod, world.media)
        with pytest.raises(StandInUsageError, match="unknown options"):
            await standin.invoke_slash("ledger show", world.mod, world.media, {"count": 1})
        with pytest.raises(StandInUsageError, match="out of range"):
            await standin.invoke_slash(
                "ledger show", world.mod, world.media, {"number": 100, "who": world.alice}
            )
        with pytest.raises(StandInUsageError, match="default_member_permissions"):
            await standin.invoke_slash(
                "ledger show", world.alice, world.media, {"number": 1, "who": world.alice}
            )
        with pytest.raises(StandInUsageError, match="never synced"):
            await standin.invoke_slash("imgur", world.mod, world.media)

        handle = await standin.invoke_slash(
            "ledger", world.mod, world.media, {"number": 7, "who": world.alice}, subcommand="show"
        )
        await handle.wait_done(STEP)

    assert seen["args"] == (7, world.alice.id)
    assert handle.name == "ledger show"


async def test_gateway_rejects_a_wrong_token_and_a_stale_session(standin: DiscordStandIn) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{standin.gateway_url}?v=10&encoding=json") as ws:
            hello = await ws.receive_json(timeout=STEP)
            assert hello == {"op": 10, "d": {"heartbeat_interval": 41250}}
            await ws.send_json({"op": 2, "d": {"token": "wrong", "intents": 513, "properties": {}}})
            closing = await ws.receive(timeout=STEP)
            assert (closing.type, closing.data) == (aiohttp.WSMsgType.CLOSE, 4004)

        async with session.ws_connect(standin.resume_gateway_url) as ws:
            await ws.receive_json(timeout=STEP)
            await ws.send_json({"op": 6, "d": {"token": TOKEN, "session_id": "gone", "seq": 3}})
            assert await ws.receive_json(timeout=STEP) == {"op": 9, "d": False}


@pytest.mark.parametrize("how", ["close 1001", "opcode 7"])
async def test_bot_resumes_after_going_away_or_a_reconnect_request(
    standin: DiscordStandIn, world: World, how: str
) -> None:
    bot = make_bot()
    async with connected(bot):
        if how == "opcode 7":
            await standin.send_reconnect()
        else:
            await standin.disconnect(1001)
        await standin.wait_for_resume(STEP)

        received = await started(expect(bot, "message"))
        await standin.post_message(world.media, world.alice, "still here")
        assert (await asyncio.wait_for(received, STEP)).content == "still here"

    assert [c.kind for c in standin.connections] == ["identify", "resume"]


async def test_user_command_resolves_its_target(standin: DiscordStandIn, world: World) -> None:
    seen: dict[str, discord.Member | discord.User] = {}

    async def uploads_of(interaction: discord.Interaction, member: discord.Member) -> None:
        seen["target"] = member
        await interaction.response.send_message("none yet", ephemeral=True)

    bot = make_bot()
    bot.tree.add_command(app_commands.ContextMenu(name="Uploads", callback=uploads_of))
    async with connected(bot):
        await bot.tree.sync()
        handle = await standin.invoke_user_command("Uploads", world.mod, world.alice, world.media)
        await handle.wait_done(STEP)

    target = seen["target"]
    assert isinstance(target, discord.Member)
    assert target.id == world.alice.id
    assert handle.response_content == "none yet"
