"""The Discord bot: owns the services, loads the features in ``cogs/`` and answers errors.

``run_bot`` is what ``python -m bot run`` calls: it points discord.py at the configured
endpoints, starts the bot, falls back to running without the Message Content intent when
Discord refuses it, and shuts down cleanly on SIGINT or SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Final, TypeVar

import aiohttp
import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot.errors import RehostError
from bot.imgur import ImgurRateLimited
from bot.ledger import Origin, Upload
from bot.services import Services, open_services
from bot.settings import Settings
from bot.web import start_web

log = logging.getLogger(__name__)

EXTENSIONS: Final = (
    "cogs.rehost",
    "cogs.rehost_menu",
    "cogs.auto_rehost",
    "cogs.deletion",
    "cogs.source_deletion",
    "cogs.status",
    "cogs.server_settings",
    "cogs.recovery",
)

# How long a shutdown waits for uploads in flight: an upload cut off after Imgur received it
# leaves a copy whose deletehash was never recorded.
DRAIN_SECONDS: Final = 30.0

# An interaction's token lasts 15 minutes: an answer due later can never be delivered.
ANSWER_WINDOW: Final = 14 * 60.0

# Set in ``Interaction.extras`` when the answer was deferred (or sent) publicly.
PUBLIC_ANSWER: Final = "rehost_public_answer"

PORTAL_HINT: Final = (
    "Developer Portal > your application > Bot > Privileged Gateway Intents > "
    "Message Content Intent"
)
GENERIC_FAILURE: Final = (
    "Something went wrong on my side; it has been logged. Please try again later."
)

_PERMISSION_NAMES: Final = {
    "manage_guild": "Manage Server",
    "manage_messages": "Manage Messages",
    "send_messages": "Send Messages",
    "read_message_history": "Read Message History",
    "embed_links": "Embed Links",
}


T = TypeVar("T")


class UsageError(RehostError):
    """The command was used in a way it cannot work (a missing option, a wrong channel)."""


class ShuttingDown(RehostError):
    """The bot is stopping and takes no new work."""


class MissingGuildPermissions(app_commands.MissingPermissions):
    """The member lacks a permission server-wide (it may be granted in this channel only)."""


def wanted_intents(*, message_content: bool = True) -> discord.Intents:
    """Guilds, guild messages and (for auto-rehost) message content; nothing else."""
    return discord.Intents(guilds=True, guild_messages=True, message_content=message_content)


class RecentIds:
    """A bounded memory of ids seen lately (source messages deleted while work was running)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._ids: OrderedDict[int, None] = OrderedDict()

    def add(self, ids: Iterable[int]) -> None:
        for item in ids:
            self._ids[item] = None
            self._ids.move_to_end(item)
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)

    def __contains__(self, item: object) -> bool:
        return item in self._ids


class RehostTree(app_commands.CommandTree["RehostBot"]):
    """The command tree whose ``on_error`` is the one place app-command errors are answered."""

    async def on_error(
        self, interaction: discord.Interaction[RehostBot], error: app_commands.AppCommandError
    ) -> None:
        text = explain(interaction, error)
        try:
            await answer_privately(interaction, text)
        except discord.HTTPException as exc:
            # The interaction token expired or Discord failed; nobody is left to tell.
            log.warning("could not tell the user about an error: %s", exc)


def explain(
    interaction: discord.Interaction[RehostBot], error: app_commands.AppCommandError
) -> str:
    """One short sentence for the person who asked; logs what they must not see."""
    cause: BaseException = error
    if isinstance(error, app_commands.CommandInvokeError):
        cause = error.original
    command = interaction.command.qualified_name if interaction.command else "?"

    if isinstance(cause, ImgurRateLimited) and cause.reset_at is not None:
        reset = int(cause.reset_at)
        return (
            f"Imgur's {cause.quota} is spent until <t:{reset}:t> (<t:{reset}:R>); try again then."
        )
    if isinstance(cause, RehostError):
        log.info("/%s refused: %s", command, cause.user_message)
        return cause.user_message
    if isinstance(cause, app_commands.MissingPermissions):
        names = _permission_list(cause.missing_permissions)
        # Manage Server comes from roles alone; the others may be granted in one channel.
        per_channel = set(cause.missing_permissions) - {"manage_guild"}
        if isinstance(cause, MissingGuildPermissions) and per_channel:
            return f"You need the {names} permission server-wide for this."
        return f"You need the {names} permission for this."
    if isinstance(cause, app_commands.BotMissingPermissions):
        return f"I need the {_permission_list(cause.missing_permissions)} permission here."
    if isinstance(cause, app_commands.NoPrivateMessage):
        return "This works only in a server, not in direct messages."
    if isinstance(cause, app_commands.CommandOnCooldown):
        return f"Slow down a little: try again in {cause.retry_after:.0f} seconds."
    if isinstance(cause, app_commands.CheckFailure):
        return "You may not use this command here."
    if isinstance(cause, app_commands.TransformerError):
        return "One of the options has a value I cannot use; please check it."
    if isinstance(cause, app_commands.CommandSignatureMismatch | app_commands.CommandNotFound):
        log.warning("/%s is out of date in Discord: %s", command, cause)
        return "This command has changed; please try again in a minute."
    if isinstance(cause, discord.Forbidden):
        log.warning("/%s: Discord refused an action (missing permission): %s", command, cause)
        return "I lack a permission in this channel to finish that."

    log.error("/%s failed unexpectedly", command, exc_info=cause)
    return GENERIC_FAILURE


def _permission_list(names: Iterable[str]) -> str:
    readable = [_PERMISSION_NAMES.get(n, n.replace("_", " ").title()) for n in names]
    return " and ".join(readable) or "right"


def guild_permissions(interaction: discord.Interaction[Any]) -> discord.Permissions:
    """The member's server-wide permissions (owner and administrators: all); none if unknown.

    ``interaction.permissions`` is what Discord resolved for the channel the command was used
    in, overwrites included, so Manage Messages granted in one channel shows there. A power
    over the whole server's uploads must not follow from that.
    """
    member = interaction.user
    if not isinstance(member, discord.Member):
        return discord.Permissions.none()
    guild = member.guild
    if guild.unavailable or guild.default_role is None:
        # The interaction carries the member's role ids, but what the roles allow comes from
        # the cached guild: without it (an outage, or not in the guild as a bot) allow nothing.
        log.warning("cannot check server permissions: guild %s is not available", guild.id)
        return discord.Permissions.none()
    return member.guild_permissions


def has_guild_permissions(**wanted: bool) -> Callable[[T], T]:
    """An app-command check like ``has_permissions`` that ignores channel overwrites."""
    invalid = wanted.keys() - discord.Permissions.VALID_FLAGS.keys()
    if invalid:
        raise TypeError(f"unknown permissions: {', '.join(sorted(invalid))}")

    def predicate(interaction: discord.Interaction[Any]) -> bool:
        if interaction.guild_id is None:
            raise app_commands.NoPrivateMessage()
        held = guild_permissions(interaction)
        missing = [name for name, value in wanted.items() if getattr(held, name) != value]
        if missing:
            raise MissingGuildPermissions(missing)
        return True

    return app_commands.check(predicate)


def guild_of_interaction(interaction: discord.Interaction[Any]) -> int:
    """The guild a command was used in; server-only commands are refused elsewhere."""
    if interaction.guild_id is None:
        raise UsageError("This works only in a server, not in direct messages.")
    return interaction.guild_id


def refuse_when_held_back(bot: RehostBot) -> None:
    """Refuse an upload Imgur's quota would hold back past the interaction's 15 minutes.

    The queue keeps such an upload until the quota refills, perhaps for an hour; by then its
    answer cannot be sent, so the person is told now when to come back.
    """
    resume_at = bot.services.pipeline.scheduler.resume_at
    if resume_at is not None and resume_at - time.time() > ANSWER_WINDOW:
        raise ImgurRateLimited(resume_at)


async def defer_publicly(interaction: discord.Interaction[Any]) -> None:
    """Show "thinking…" to everyone; the public answer follows by editing it."""
    await interaction.response.defer(thinking=True)
    interaction.extras[PUBLIC_ANSWER] = True


async def defer_privately(interaction: discord.Interaction[Any]) -> None:
    """Show "thinking…" to the person who asked alone, before any slow work (the ledger too).

    Discord drops an interaction that is not answered within 3 seconds; ``answer_privately``
    then puts the answer in the place of the "thinking…" message.
    """
    await interaction.response.defer(ephemeral=True, thinking=True)


async def answer_privately(interaction: discord.Interaction[Any], text: str) -> None:
    """Answer only the person who asked, whatever has been answered before."""
    if not interaction.response.is_done():
        await interaction.response.send_message(text, ephemeral=True)
        return
    if interaction.extras.get(PUBLIC_ANSWER):
        # After a public deferral the first followup replaces the "thinking" message and stays
        # public whatever its flags (Discord's followup rules): take the public answer down.
        with contextlib.suppress(discord.NotFound):
            await interaction.delete_original_response()
        interaction.extras[PUBLIC_ANSWER] = False
    elif interaction.response.type is discord.InteractionResponseType.deferred_channel_message:
        # A private "thinking…" (or progress) message: the sentence takes its place.
        await interaction.edit_original_response(content=text)
        return
    await interaction.followup.send(text, ephemeral=True)


class RehostBot(commands.Bot):
    """The bot: the HTTP sessions, the Imgur client, the ledger and the pipeline live here."""

    def __init__(
        self,
        settings: Settings,
        *,
        services: Services | None = None,
        intents: discord.Intents | None = None,
        extensions: Iterable[str] = EXTENSIONS,
        sync_commands: bool = True,
        interrupted: Iterable[tuple[Upload, Origin]] = (),
    ) -> None:
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents or wanted_intents(),
            tree_cls=RehostTree,
            help_command=None,
            allowed_mentions=discord.AllowedMentions.none(),
        )
        self.settings = settings
        self.deleted_messages = RecentIds()
        self._services = services
        self._extensions = tuple(extensions)
        self._sync_commands = sync_commands
        self._carried = list(interrupted)
        self._stack = contextlib.AsyncExitStack()
        self._close_lock = asyncio.Lock()
        self._closing = False
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def services(self) -> Services:
        if self._services is None:
            raise RuntimeError("the bot's services are not open yet (setup_hook has not run)")
        return self._services

    @property
    def reads_message_content(self) -> bool:
        """Whether messages arrive with their attachments, which auto-rehost needs."""
        return self.intents.message_content

    @property
    def closing(self) -> bool:
        return self._closing

    async def setup_hook(self) -> None:
        if self._services is None:
            self._services = await self._stack.enter_async_context(open_services(self.settings))
        if self._carried:
            # An earlier start in this process closed these as interrupted, so the ledger no
            # longer lists them as pending: the recovery cog learns of them from here.
            pipeline = self.services.pipeline
            pipeline.interrupted = [*self._carried, *pipeline.interrupted]
        endpoint = await start_web(self.services)
        if endpoint is not None:
            # Closed before the services, which the stack closes after it.
            self._stack.push_async_callback(endpoint.cleanup)
        for name in self._extensions:
            await self.load_extension(name)
        if self._sync_commands:
            synced = await self.tree.sync()
            log.info("synced %d application commands", len(synced))
        if not self.reads_message_content:
            log.info("auto-rehost is off: the Message Content intent is not available")

    async def on_ready(self) -> None:
        log.info("connected to Discord as %s in %d servers", self.user, len(self.guilds))

    async def on_message(self, message: discord.Message, /) -> None:
        """No text commands: features listen to messages in their cogs."""

    @contextlib.asynccontextmanager
    async def working(self) -> AsyncIterator[None]:
        """Mark work a shutdown should wait for; refused once the bot is stopping."""
        if self._closing:
            raise ShuttingDown("The bot is restarting; please try again in a minute.")
        self._busy += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._busy -= 1
            if self._busy == 0:
                self._idle.set()

    async def close(self) -> None:
        async with self._close_lock:
            if not self._closing:
                self._closing = True
                await self._drain()
            await super().close()
            await self._stack.aclose()

    async def _drain(self) -> None:
        if self._busy == 0:
            return
        log.info("waiting up to %.0f s for %d uploads in flight", DRAIN_SECONDS, self._busy)
        try:
            await asyncio.wait_for(self._idle.wait(), DRAIN_SECONDS)
        except TimeoutError:
            log.warning("stopping with %d uploads still in flight", self._busy)


# --- running --------------------------------------------------------------------------------

OK, FAILED = 0, 1


class _Restart(Exception):
    """Start again without the Message Content intent, carrying what is left to recover."""

    def __init__(self, interrupted: list[tuple[Upload, Origin]]) -> None:
        super().__init__("restart without the Message Content intent")
        self.interrupted = interrupted


def point_at_discord(settings: Settings) -> None:
    """Aim discord.py's REST and gateway connections at the configured endpoints."""
    discord.http.Route.BASE = settings.discord_api_url
    gateway = yarl.URL(settings.discord_gateway_url)
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = gateway.with_path(gateway.path or "/")


async def run_bot(settings: Settings) -> int:
    """Run the bot until SIGINT or SIGTERM; 0 after a clean shutdown, 1 if it cannot run."""
    token = settings.require_discord_token()
    point_at_discord(settings)
    # The bot never joins voice; discord.py would warn at start-up about missing voice libraries.
    discord.VoiceClient.warn_nacl = False
    discord.VoiceClient.warn_dave = False
    stop = asyncio.Event()
    installed = _install_signal_handlers(stop)

    try:
        intents = wanted_intents()
        interrupted: list[tuple[Upload, Origin]] = []
        while True:
            try:
                return await _run_once(settings, token, intents, stop, interrupted)
            except _Restart as restart:
                intents = wanted_intents(message_content=False)
                interrupted = restart.interrupted
    finally:
        loop = asyncio.get_running_loop()
        for sig in installed:
            loop.remove_signal_handler(sig)


async def _run_once(
    settings: Settings,
    token: str,
    intents: discord.Intents,
    stop: asyncio.Event,
    interrupted: list[tuple[Upload, Origin]],
) -> int:
    async with RehostBot(settings, intents=intents, interrupted=interrupted) as bot:
        started = time.monotonic()
        runner = asyncio.create_task(bot.start(token), name="discord-bot")
        stopper = asyncio.create_task(stop.wait(), name="stop-signal")
        try:
            await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()

        if stop.is_set():
            log.info("shutting down")
            await bot.close()
            await _finish(runner)
            log.info("stopped cleanly after %.0f s", time.monotonic() - started)
            return OK

        try:
            runner.result()
        except discord.LoginFailure:
            log.error(
                "DISCORD_TOKEN was refused by Discord: copy the token again from the "
                "Developer Portal (your application > Bot > Reset Token) into .env"
            )
            return FAILED
        except discord.PrivilegedIntentsRequired as exc:
            if not intents.message_content:
                raise
            log.warning(
                "Discord refused the Message Content intent; auto-rehost is off until it is "
                "switched on in the %s (slash commands and the menu keep working)",
                PORTAL_HINT,
            )
            # Refused at identify, before ready: the recovery cog has not acted yet.
            raise _Restart(bot.services.pipeline.interrupted) from exc
        except (discord.GatewayNotFound, discord.ConnectionClosed) as exc:
            log.error("the Discord gateway could not be reached or closed the connection: %s", exc)
            return FAILED
        except (discord.HTTPException, aiohttp.ClientError, OSError) as exc:
            log.error("Discord could not be reached at %s: %s", discord.http.Route.BASE, exc)
            return FAILED
        log.info("the Discord connection ended")
        return OK


async def _finish(runner: asyncio.Task[None]) -> None:
    """Let the connection loop end on its own after close(); cancel it if it lingers."""
    done, _ = await asyncio.wait({runner}, timeout=10)
    if not done:
        runner.cancel()
        await asyncio.wait({runner})
    if not runner.cancelled() and runner.exception() is not None:
        log.debug("the connection ended with %r while stopping", runner.exception())


def _install_signal_handlers(stop: asyncio.Event) -> list[signal.Signals]:
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, _on_signal, sig, stop)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - not on Windows
            continue
        installed.append(sig)
    return installed


def _on_signal(sig: signal.Signals, stop: asyncio.Event) -> None:
    if stop.is_set():
        log.info("%s again: still shutting down", sig.name)
        return
    log.info("%s received", sig.name)
    stop.set()
