"""Discord objects for unit tests, spec-checked against discord.py's own classes.

Every mock is ``create_autospec(<discord class>, instance=True, spec_set=True)``: reading or
setting an attribute the real class lacks raises ``AttributeError``, and calling a method
with arguments its real signature refuses raises ``TypeError``. Attributes the code under
test reads are filled in with real values or further spec-checked mocks.

``DiscordEnv`` puts the real bot (``RehostBot`` with every cog) in front of the real pipeline,
an ``ImgurStandIn`` and a ledger under ``tmp_path``; attachments are served by a local web
server, the way Discord's CDN serves them.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest.mock import create_autospec, patch

import aiohttp
import discord
from discord import app_commands

from bot.discord_bot import RehostBot
from bot.imgur import ImgurClient
from bot.ledger import Ledger
from bot.media import MediaLimits
from bot.pipeline import Pipeline
from bot.scheduler import Scheduler
from bot.services import Services
from bot.settings import Settings
from bot.sources import Fetcher
from tests.conftest import WebFiles
from tests.imgur_standin import ImgurStandIn

_snowflakes = itertools.count(1_100_000_000_000_000_000)


def snowflake() -> int:
    return next(_snowflakes)


def spec(cls: type) -> Any:
    """A mock that has exactly the attributes and method signatures of ``cls``."""
    return create_autospec(cls, instance=True, spec_set=True)


def http_error(cls: type[discord.HTTPException], status: int, text: str = "") -> Any:
    """A discord.py HTTP error as the library raises it."""
    response = SimpleNamespace(status=status, reason=text or "error")
    return cls(response, {"message": text, "code": 0})  # type: ignore[arg-type]


# --- people and places --------------------------------------------------------------------


def make_guild(guild_id: int | None = None, *, roles_known: bool = True) -> Any:
    """A guild; with ``roles_known=False``, one missing from the bot's cache: no roles known."""
    guild = spec(discord.Guild)
    guild.id = guild_id or snowflake()
    guild.name = "Test Server"
    guild.unavailable = False
    everyone = None
    if roles_known:
        everyone = spec(discord.Role)
        everyone.id = guild.id
        everyone.name = "@everyone"
    guild.default_role = everyone
    return guild


def make_member(
    guild: Any,
    *,
    bot: bool = False,
    name: str = "member",
    permissions: discord.Permissions | None = None,
) -> Any:
    """A member; ``permissions`` are what their roles grant in the whole server."""
    member = spec(discord.Member)
    member.id = snowflake()
    member.bot = bot
    member.name = name
    member.display_name = name
    member.guild = guild
    member.mention = f"<@{member.id}>"
    member.guild_permissions = permissions or discord.Permissions.none()
    return member


def make_channel(guild: Any, *, nsfw: bool = False, name: str = "media") -> Any:
    channel = spec(discord.TextChannel)
    channel.id = snowflake()
    channel.name = name
    channel.guild = guild
    channel.nsfw = nsfw
    channel.is_nsfw.return_value = nsfw
    channel.mention = f"<#{channel.id}>"
    return channel


def make_thread(parent: Any) -> Any:
    thread = spec(discord.Thread)
    thread.id = snowflake()
    thread.name = "a thread"
    thread.guild = parent.guild
    thread.parent_id = parent.id
    thread.parent = parent
    thread.is_nsfw.return_value = parent.is_nsfw()
    thread.mention = f"<#{thread.id}>"
    return thread


def make_app_channel(channel: Any, *, category: bool = False) -> Any:
    """The channel as an application command option delivers it."""
    option = spec(app_commands.AppCommandChannel)
    option.id = channel.id
    option.guild_id = channel.guild.id
    option.type = discord.ChannelType.category if category else discord.ChannelType.text
    # Discord's resolved option channel has no NSFW flag; only the channel itself knows.
    option.nsfw = False
    option.is_nsfw.return_value = False
    option.resolve.return_value = channel
    option.mention = f"<#{channel.id}>"
    return option


def make_attachment(
    url: str,
    *,
    filename: str = "picture.png",
    size: int,
    content_type: str | None = "image/png",
    spoiler: bool = False,
) -> Any:
    attachment = spec(discord.Attachment)
    attachment.id = snowflake()
    attachment.url = url
    attachment.filename = f"SPOILER_{filename}" if spoiler else filename
    attachment.size = size
    attachment.content_type = content_type
    attachment.is_spoiler.return_value = spoiler
    return attachment


# --- what the bot posts -------------------------------------------------------------------


@dataclass
class Posted:
    """A message the bot posted (a reply, or an interaction's public answer)."""

    id: int
    channel_id: int
    content: str
    deleted: bool = False
    edits: list[str] = field(default_factory=list)


class Channels:
    """Messages the bot posted, and the REST routes it uses to read, edit and delete them."""

    def __init__(self) -> None:
        self.posted: dict[int, Posted] = {}

    def post(self, channel_id: int, content: str) -> Any:
        posted = Posted(snowflake(), channel_id, content)
        self.posted[posted.id] = posted
        return self.as_message(posted)

    def as_message(self, posted: Posted) -> Any:
        message = spec(discord.Message)
        message.id = posted.id
        message.content = posted.content
        message.channel = SimpleNamespace(id=posted.channel_id)

        async def delete(**_: Any) -> None:
            if posted.deleted:
                raise http_error(discord.NotFound, 404, "Unknown Message")
            posted.deleted = True

        message.delete.side_effect = delete
        return message

    def live(self, channel_id: int | None = None) -> list[Posted]:
        return [
            p
            for p in self.posted.values()
            if not p.deleted and (channel_id is None or p.channel_id == channel_id)
        ]

    def partial_messageable(self, channel_id: int, **_: Any) -> Any:
        """Stands in for ``Client.get_partial_messageable``."""
        channel = spec(discord.PartialMessageable)
        channel.get_partial_message.side_effect = lambda message_id: self._partial(
            channel_id, message_id
        )
        return channel

    def _partial(self, channel_id: int, message_id: int) -> Any:
        partial = spec(discord.PartialMessage)
        partial.id = message_id

        def find() -> Posted:
            posted = self.posted.get(message_id)
            if posted is None or posted.deleted or posted.channel_id != channel_id:
                raise http_error(discord.NotFound, 404, "Unknown Message")
            return posted

        async def fetch() -> Any:
            return self.as_message(find())

        async def edit(**fields: Any) -> Any:
            posted = find()
            posted.content = fields["content"]
            posted.edits.append(posted.content)
            return self.as_message(posted)

        async def delete(**_: Any) -> None:
            find().deleted = True

        partial.fetch.side_effect = fetch
        partial.edit.side_effect = edit
        partial.delete.side_effect = delete
        return partial


def make_message(
    channels: Channels,
    channel: Any,
    author: Any,
    *,
    attachments: list[Any] | None = None,
    embeds: list[discord.Embed] | None = None,
    content: str = "",
) -> Any:
    """A message in ``channel``; ``reply`` posts into ``channels`` like Discord would."""
    message = spec(discord.Message)
    message.id = snowflake()
    message.channel = channel
    message.guild = channel.guild
    message.author = author
    message.content = content
    message.attachments = list(attachments or [])
    message.embeds = list(embeds or [])

    async def reply(content: str, **_: Any) -> Any:
        return channels.post(channel.id, content)

    async def fetch() -> Any:
        return message

    message.reply.side_effect = reply
    message.fetch.side_effect = fetch
    return message


# --- interactions -------------------------------------------------------------------------


@dataclass
class Said:
    """One thing the bot said in answer to an interaction."""

    how: str  # "send_message", "followup", "edit"
    text: str
    ephemeral: bool


class Conversation:
    """Records an interaction's answers and enforces Discord's one-first-response rule."""

    def __init__(self) -> None:
        self.said: list[Said] = []
        self.deferred: bool | None = None  # None, or whether the deferral was private
        self.original_deleted = False

    @property
    def texts(self) -> list[str]:
        return [s.text for s in self.said]

    @property
    def last(self) -> Said:
        return self.said[-1]


def make_interaction(
    bot: RehostBot,
    channels: Channels,
    *,
    user: Any,
    channel: Any | None,
    permissions: discord.Permissions | None = None,
) -> tuple[Any, Conversation]:
    """An interaction by ``user`` in ``channel`` (``None``: a direct message).

    ``permissions`` are the user's permissions in the channel as Discord resolves them,
    overwrites included; without them, the user's server-wide permissions (no overwrites).
    """
    interaction = spec(discord.Interaction)
    talk = Conversation()
    interaction.client = bot
    interaction.user = user
    interaction.guild = channel.guild if channel is not None else None
    interaction.guild_id = channel.guild.id if channel is not None else None
    interaction.channel = channel
    interaction.channel_id = channel.id if channel is not None else None
    if permissions is None:
        permissions = user.guild_permissions if channel is not None else None
    interaction.permissions = permissions or discord.Permissions.none()
    interaction.extras = {}
    interaction.command = None

    response = spec(discord.InteractionResponse)
    answered = {"done": False}
    original: dict[str, Any] = {}

    def first(kind: discord.InteractionResponseType) -> None:
        if answered["done"]:
            raise discord.InteractionResponded(interaction)
        answered["done"] = True
        response.type = kind

    async def defer(*, ephemeral: bool = False, thinking: bool = False) -> None:
        first(discord.InteractionResponseType.deferred_channel_message)
        talk.deferred = ephemeral

    async def send_message(content: str | None = None, **fields: Any) -> None:
        first(discord.InteractionResponseType.channel_message)
        talk.said.append(Said("send_message", content or "", bool(fields.get("ephemeral"))))

    async def followup_send(content: str | None = None, **fields: Any) -> Any:
        if not answered["done"]:
            raise http_error(discord.NotFound, 404, "Unknown Webhook")
        ephemeral = bool(fields.get("ephemeral"))
        replaced = any(s.how in {"followup", "edit"} for s in talk.said)
        if talk.deferred is not None and not talk.original_deleted and not replaced:
            # Discord: the first followup after a deferral replaces the "thinking" message
            # and keeps the deferral's visibility, whatever its own flags say.
            ephemeral = talk.deferred
        talk.said.append(Said("followup", content or "", ephemeral))
        channel_id = channel.id if channel is not None else 0
        if ephemeral:
            return channels.as_message(Posted(snowflake(), channel_id, content or ""))
        return channels.post(channel_id, content or "")

    async def edit_original_response(**fields: Any) -> Any:
        if not answered["done"]:
            raise http_error(discord.NotFound, 404, "Unknown Webhook")
        text = fields.get("content") or ""
        talk.said.append(Said("edit", text, bool(talk.deferred)))
        channel_id = channel.id if channel is not None else 0
        if "posted" not in original:
            if talk.deferred:  # private: only the person who asked sees it
                original["posted"] = channels.as_message(Posted(snowflake(), channel_id, text))
            else:
                original["posted"] = channels.post(channel_id, text)
        posted = channels.posted.get(original["posted"].id) or Posted(
            original["posted"].id, channel_id, text
        )
        posted.content = text
        answer = spec(discord.InteractionMessage)
        answer.id = posted.id
        answer.channel = SimpleNamespace(id=channel_id)
        answer.content = text
        return answer

    async def delete_original_response() -> None:
        talk.original_deleted = True
        if "posted" in original and original["posted"].id in channels.posted:
            channels.posted[original["posted"].id].deleted = True

    response.type = None
    response.is_done.side_effect = lambda: answered["done"]
    response.defer.side_effect = defer
    response.send_message.side_effect = send_message
    interaction.response = response
    interaction.followup = spec(discord.Webhook)
    interaction.followup.send.side_effect = followup_send
    interaction.edit_original_response.side_effect = edit_original_response
    interaction.delete_original_response.side_effect = delete_original_response
    return interaction, talk


async def invoke(
    bot: RehostBot,
    command: app_commands.Command[Any, Any, Any] | app_commands.ContextMenu,
    interaction: Any,
    *args: Any,
    **options: Any,
) -> None:
    """Run a command as discord.py's tree does: checks, callback, errors to ``tree.on_error``."""
    interaction.command = command
    try:
        for check in command.checks:
            if not await discord.utils.maybe_coroutine(check, interaction):
                raise app_commands.CheckFailure(f"the check of {command.name} failed")
        if isinstance(command, app_commands.ContextMenu):
            await command.callback(interaction, *args)
        else:
            callback: Any = command.callback
            await callback(command.binding, interaction, *args, **options)
    except app_commands.AppCommandError as error:
        await bot.tree.on_error(interaction, error)
    except Exception as error:
        await bot.tree.on_error(interaction, app_commands.CommandInvokeError(command, error))


def find_command(bot: RehostBot, name: str) -> Any:
    """A slash command by its full name (``imgur-auto add``) or a message menu by its name."""
    for command in bot.tree.walk_commands():
        if command.qualified_name == name:
            return command
    menu = bot.tree.get_command(name, type=discord.AppCommandType.message)
    if menu is None:
        raise KeyError(name)
    return menu


# --- the whole set-up ---------------------------------------------------------------------


@dataclass
class DiscordEnv:
    bot: RehostBot
    services: Services
    imgur: ImgurStandIn
    web: WebFiles
    channels: Channels
    guild: Any
    channel: Any
    member: Any
    moderator_permissions: discord.Permissions = field(
        default_factory=lambda: discord.Permissions(manage_messages=True)
    )
    manager_permissions: discord.Permissions = field(
        default_factory=lambda: discord.Permissions(manage_guild=True)
    )

    @property
    def ledger(self) -> Ledger:
        return self.services.ledger

    def moderator(self, name: str = "mod") -> Any:
        """A member whose role grants Manage Messages in the whole server."""
        return make_member(self.guild, name=name, permissions=self.moderator_permissions)

    def manager(self, name: str = "admin") -> Any:
        """A member whose role grants Manage Server."""
        return make_member(self.guild, name=name, permissions=self.manager_permissions)

    def command(self, name: str) -> Any:
        return find_command(self.bot, name)

    async def invoke(self, name: str, interaction: Any, *args: Any, **options: Any) -> None:
        await invoke(self.bot, self.command(name), interaction, *args, **options)

    async def event(self, name: str, *args: Any) -> None:
        """Run every listener the cogs registered for a gateway event, to completion."""
        listeners = self.bot.extra_events.get(f"on_{name}", [])
        assert listeners, f"no listener for {name}"
        for listener in listeners:
            await listener(*args)

    def interaction(
        self,
        user: Any | None = None,
        channel: Any | None = None,
        permissions: discord.Permissions | None = None,
        *,
        direct: bool = False,
    ) -> tuple[Any, Conversation]:
        """``permissions``: in this channel only (an overwrite); else the member's own."""
        return make_interaction(
            self.bot,
            self.channels,
            user=user or self.member,
            channel=None if direct else (channel or self.channel),
            permissions=permissions,
        )

    def attachment(
        self,
        data: bytes,
        *,
        filename: str = "picture.png",
        content_type: str | None = "image/png",
        spoiler: bool = False,
    ) -> Any:
        url = self.web.serve_bytes(
            f"/attachments/{snowflake()}/{filename}", data, content_type or ""
        )
        return make_attachment(
            url, filename=filename, size=len(data), content_type=content_type, spoiler=spoiler
        )

    def message(
        self,
        *attachments: Any,
        author: Any | None = None,
        channel: Any | None = None,
        embeds: list[discord.Embed] | None = None,
        content: str = "",
    ) -> Any:
        return make_message(
            self.channels,
            channel or self.channel,
            author or self.member,
            attachments=list(attachments),
            embeds=embeds,
            content=content,
        )

    def deletehashes(self) -> set[str]:
        """Every deletehash the Imgur stand-in handed out."""
        images = {image.deletehash for image in self.imgur.images.values()}
        return images | {album.deletehash for album in self.imgur.albums.values()}

    def everything_said(self, *talks: Conversation) -> str:
        """All text the bot sent anywhere: answers, replies, edits."""
        texts = [s.text for talk in talks for s in talk.said]
        for posted in self.channels.posted.values():
            texts.append(posted.content)
            texts.extend(posted.edits)
        return "\n".join(texts)


@contextlib.asynccontextmanager
async def discord_env(
    tmp_path: Path,
    web: WebFiles,
    *,
    message_content: bool = True,
    limits: MediaLimits | None = None,
    **imgur_options: Any,
) -> AsyncIterator[DiscordEnv]:
    """The real bot and pipeline against the Imgur stand-in and a ledger under ``tmp_path``."""
    settings = Settings(
        imgur_client_id="test-client-id",
        database_path=tmp_path / "ledger.sqlite3",
        allow_private_urls=True,
    )
    async with contextlib.AsyncExitStack() as stack:
        imgur = await stack.enter_async_context(ImgurStandIn(**imgur_options))
        imgur_session = await stack.enter_async_context(aiohttp.ClientSession())
        fetch_session = await stack.enter_async_context(Fetcher.create_session(allow_private=True))
        ledger = await Ledger.open(settings.database_path)
        stack.push_async_callback(ledger.close)

        client = ImgurClient(
            imgur_session, settings.imgur_client_id, api_url=imgur.url, attempts=2, backoff=0
        )
        pipeline = Pipeline(
            imgur=client,
            ledger=ledger,
            fetcher=Fetcher(fetch_session, allow_private=True),
            scheduler=Scheduler(workers=2, queue_limit=50),
            limits=limits or MediaLimits(),
            spool_dir=tmp_path,
        )
        services = Services(settings=settings, imgur=client, ledger=ledger, pipeline=pipeline)
        intents = discord.Intents(guilds=True, guild_messages=True, message_content=message_content)
        bot = RehostBot(settings, services=services, intents=intents, sync_commands=False)

        channels = Channels()
        guild = make_guild()
        env = DiscordEnv(
            bot=bot,
            services=services,
            imgur=imgur,
            web=web,
            channels=channels,
            guild=guild,
            channel=make_channel(guild),
            member=make_member(guild, name="alice"),
        )
        async with bot:
            await bot.setup_hook()
            with patch.object(bot, "get_partial_messageable", channels.partial_messageable):
                yield env


@contextlib.contextmanager
def no_deletehash_in(env: DiscordEnv, *talks: Conversation) -> Iterator[None]:
    """Assert, after the block, that no deletehash appears in anything the bot said."""
    yield
    said = env.everything_said(*talks)
    for deletehash in env.deletehashes():
        assert deletehash not in said
