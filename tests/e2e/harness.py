"""Running the real bot (``python -m bot run``) against the Discord and Imgur stand-ins.

Shared by the end-to-end tests and the demo (``demo/run.py``). The stand-ins run in the
caller's event loop; the bot is a subprocess configured through its environment only, with
a working directory of its own so no developer ``.env`` is read.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import hashlib
import itertools
import os
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from tests import samples
from tests.discord_standin import (
    MODERATOR,
    Attachment,
    Channel,
    DiscordStandIn,
    Guild,
    InteractionHandle,
    Member,
    Message,
)
from tests.imgur_standin import ImageRecord, ImgurStandIn

REPO = Path(__file__).resolve().parents[2]

# Generous: the machine is small and shared.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 45.0
ANSWER_TIMEOUT = 30.0

# Lines in the bot's stderr that mean it did not shut down cleanly, or failed unseen.
UNCLEAN_MARKERS = (
    "Unclosed",
    "unclosed",
    "ResourceWarning",
    "Traceback",
    "Task was destroyed",
    "was never awaited",
    "Exception ignored",
)

_seeds = itertools.count(1)

# Linux's prctl, looked up before any fork: the child only calls it.
_LIBC = (
    ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True) if sys.platform == "linux" else None
)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the bot's process: SIGTERM when the test process dies, however abruptly."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def fresh_png() -> bytes:
    """A small PNG no other test uses, so the ledger never answers it from an earlier upload."""
    seed = next(_seeds)
    return samples.png(width=4 + seed // 256, seed=seed)


def new_secret(prefix: str) -> str:
    """A credential unique to one run, so a scan for it cannot match anything by chance."""
    return f"{prefix}-{secrets.token_urlsafe(18)}"


# --- the stand-ins and the bot process ---------------------------------------------------------


@contextlib.asynccontextmanager
async def stand_ins(**discord_options: bool) -> AsyncIterator[tuple[DiscordStandIn, ImgurStandIn]]:
    """A Discord and an Imgur with credentials made up for this run; checked for own bugs."""
    token = new_secret("bot-token")
    client_id = new_secret("imgur-client")
    async with (
        DiscordStandIn(token=token, **discord_options) as discord,
        ImgurStandIn(client_id=client_id) as imgur,
    ):
        yield discord, imgur
        assert not discord.internal_errors, discord.internal_errors


def bot_environment(
    discord: DiscordStandIn,
    imgur: ImgurStandIn,
    database: Path,
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    """The whole environment of the bot: the stand-ins' addresses, nothing of the caller's."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        # ResourceWarnings (unclosed sockets and files) are shown, not hidden as by default.
        "PYTHONWARNINGS": "default::ResourceWarning",
        "DISCORD_TOKEN": discord.token,
        "IMGUR_CLIENT_ID": imgur.client_id,
        "IMGUR_API_URL": imgur.url,
        "DISCORD_API_URL": discord.api_url,
        "DISCORD_GATEWAY_URL": discord.gateway_url,
        "DATABASE_PATH": str(database),
        # The CDN stand-in and the linked files are on 127.0.0.1.
        "ALLOW_PRIVATE_URLS": "true",
        # The most the bot ever logs, so the secrets scan sees everything.
        "LOG_LEVEL": "DEBUG",
    }
    env.update(extra or {})
    return env


class BotProcess:
    """``python -m bot run`` as a child process; its stderr goes to a file."""

    def __init__(self, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def log(self) -> str:
        """Everything the bot wrote to stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_lines(self, level: str | None = None) -> list[str]:
        """The stderr lines, or only those logged at ``level`` (``"WARNING"``, ``"ERROR"``)."""
        lines = self.log.splitlines()
        if level is None:
            return lines
        return [line for line in lines if f" {level:<7} " in line]

    def unclean_lines(self) -> list[str]:
        return [line for line in self.log.splitlines() if any(m in line for m in UNCLEAN_MARKERS)]

    async def wait_for_log(
        self, text: str, level: str | None = None, timeout: float = ANSWER_TIMEOUT
    ) -> str:
        """The first stderr line (at ``level``) containing ``text``; the file is polled."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for line in self.log_lines(level):
                if text in line:
                    return line
            if self.returncode is not None or loop.time() > deadline:
                raise AssertionError(f"the bot never logged {text!r}:\n{self.tail()}")
            await asyncio.sleep(0.05)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.splitlines()[-lines:])

    async def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, then wait for the exit status; killed (and an error) if it hangs."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            await self.kill()
            raise AssertionError(
                f"the bot did not stop within {timeout:.0f} s of SIGTERM:\n{self.tail()}"
            ) from None

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
        await self.process.wait()

    def assert_stopped_cleanly(self, status: int) -> None:
        """Exit status 0, the shutdown logged, nothing left open, no traceback."""
        assert status == 0, f"exit status {status}:\n{self.tail()}"
        assert "stopped cleanly" in self.log, self.tail()
        assert not self.unclean_lines(), "\n".join(self.unclean_lines())


async def launch_bot(
    discord: DiscordStandIn,
    imgur: ImgurStandIn,
    workdir: Path,
    *,
    database: Path | None = None,
    log_name: str = "bot.log",
    extra_env: dict[str, str] | None = None,
) -> BotProcess:
    """Start ``python -m bot run`` in ``workdir``; return at once."""
    workdir.mkdir(parents=True, exist_ok=True)
    database = database or workdir / "ledger.sqlite3"
    log_path = workdir / log_name
    with log_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bot",
            "run",
            cwd=workdir,
            env=bot_environment(discord, imgur, database, extra_env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
            preexec_fn=_die_with_parent,
        )
    return BotProcess(process, log_path)


async def start_bot(
    discord: DiscordStandIn,
    imgur: ImgurStandIn,
    workdir: Path,
    *,
    database: Path | None = None,
    log_name: str = "bot.log",
    extra_env: dict[str, str] | None = None,
) -> BotProcess:
    """Start the bot and wait until it synced its commands and is connected and ready."""
    connections_before = len(discord.connections)
    bot = await launch_bot(
        discord, imgur, workdir, database=database, log_name=log_name, extra_env=extra_env
    )
    try:
        await _until_ready(discord, bot, connections_before)
    except BaseException:
        await bot.kill()
        raise
    return bot


async def _until_ready(discord: DiscordStandIn, bot: BotProcess, connections_before: int) -> None:
    """Ready: a new gateway connection got READY and every GUILD_CREATE (commands come first)."""

    async def ready() -> None:
        await discord.wait_for_connection(connections_before + 1, timeout=START_TIMEOUT)
        await discord.wait_until_ready(timeout=START_TIMEOUT)

    waiting = asyncio.ensure_future(ready())
    exited = asyncio.ensure_future(bot.process.wait())
    try:
        await asyncio.wait({waiting, exited}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiting, exited):
            task.cancel()
        await asyncio.wait({waiting, exited})
    if bot.returncode is not None:
        raise AssertionError(f"the bot exited with {bot.returncode} at start:\n{bot.tail()}")
    waiting.result()


@contextlib.asynccontextmanager
async def running_bot(
    discord: DiscordStandIn,
    imgur: ImgurStandIn,
    workdir: Path,
    *,
    database: Path | None = None,
    log_name: str = "bot.log",
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[BotProcess]:
    """The bot, running for the block; stopped with SIGTERM after it (and checked), or killed."""
    bot = await start_bot(
        discord, imgur, workdir, database=database, log_name=log_name, extra_env=extra_env
    )
    try:
        yield bot
    except BaseException:
        await bot.kill()
        raise
    try:
        status = await bot.stop()
    finally:
        await bot.kill()
    bot.assert_stopped_cleanly(status)


# --- a server to talk in --------------------------------------------------------------------


@dataclass
class Server:
    """A guild with a media channel, two members, a moderator and the owner (an admin)."""

    guild: Guild
    media: Channel
    alice: Member
    bob: Member
    mod: Member
    _sentinel: Channel | None = field(default=None, repr=False)

    @property
    def owner(self) -> Member:
        return self.guild.owner


def new_server(discord: DiscordStandIn, name: str) -> Server:
    """A fresh guild; added while the bot is connected, it arrives as GUILD_CREATE."""
    guild = discord.add_guild(name)
    media = guild.add_text_channel("media")
    alice = guild.add_member("alice")
    bob = guild.add_member("bob")
    mod = guild.add_member("mod", permissions=MODERATOR)
    return Server(guild, media, alice, bob, mod)


async def answered(handle: InteractionHandle) -> InteractionHandle:
    """Wait until the user sees the bot's answer; fail on errors the stand-in recorded.

    An answer is something visible and no "thinking…": a public deferral that ends in a
    private error is first taken down, and only then is the private sentence sent.
    """

    def seen(h: InteractionHandle) -> bool:
        if h.failed_to_respond or (h.errors and not h.acknowledged):
            return True
        return h.done and bool(h.visible_messages().all)

    await handle.wait_until(seen, ANSWER_TIMEOUT)
    assert not handle.failed_to_respond, f"{handle!r}: the application did not respond"
    assert not handle.errors, f"{handle!r}: {handle.errors}"
    return handle


async def enable_auto_rehost(discord: DiscordStandIn, server: Server, channel: Channel) -> None:
    """The owner switches auto-rehost on for ``channel`` with ``/imgur-auto add``."""
    handle = await discord.invoke_slash(
        "imgur-auto add", server.owner, channel, {"channel": channel}
    )
    await answered(handle)
    assert handle.ephemeral, handle.response_content
    assert "Auto-rehost is on" in (handle.response_content or ""), handle.response_content


async def sentinel(discord: DiscordStandIn, imgur: ImgurStandIn, server: Server) -> None:
    """Post an image in an auto-rehosted channel of ``server`` and wait for the bot's reply.

    Gateway events reach the bot in order, and this reply takes a download, an upload and
    several ledger round trips after its message arrived: once it exists, the bot has long
    decided what to do with everything that reached it before. A test that expects the bot
    to ignore something checks after this.
    """
    if server._sentinel is None:
        server._sentinel = server.guild.add_text_channel("sentinel")
        await enable_auto_rehost(discord, server, server._sentinel)
    channel = server._sentinel
    # A new poster each time: one member's uploads are spaced by the member cooldown.
    poster = server.guild.add_member(f"sentinel poster {len(server.guild.members)}")
    data = fresh_png()
    message = await discord.post_message(
        channel, poster, attachments=[Attachment("sentinel.png", data)]
    )
    await reply_to(discord, message)
    assert copy_of(imgur, data) is not None


async def reply_to(discord: DiscordStandIn, message: Message) -> Message:
    """The bot's public reply to ``message``, waiting for it."""
    return await discord.wait_for_bot_message(
        message.channel,
        lambda m: m.reference is message,
        timeout=ANSWER_TIMEOUT,
    )


# --- what Imgur holds -----------------------------------------------------------------------


def copy_of(imgur: ImgurStandIn, data: bytes) -> ImageRecord | None:
    """The Imgur upload holding exactly these bytes, if any."""
    digest = hashlib.sha256(data).hexdigest()
    for image in imgur.images.values():
        if image.sha256 == digest:
            return image
    return None


def link_of(imgur: ImgurStandIn, image: ImageRecord) -> str:
    return f"{imgur.link_base}/{image.id}.{image.ext}"


# --- secrets --------------------------------------------------------------------------------


def secrets_of(discord: DiscordStandIn, imgur: ImgurStandIn) -> dict[str, str]:
    """Every value that must never be shown: the bot token, the client id, each deletehash."""
    found = {"the bot token": discord.token, "the Imgur client id": imgur.client_id}
    for image in imgur.images.values():
        found[f"the deletehash of image {image.id}"] = image.deletehash
    for album in imgur.albums.values():
        found[f"the deletehash of album {album.id}"] = album.deletehash
    return found


def everything_the_bot_said(discord: DiscordStandIn) -> list[tuple[str, str]]:
    """(where, text) for every message the bot posted or edited, and every body it sent."""
    said: list[tuple[str, str]] = []
    for channel in discord.channels.values():
        for message in discord.channel_messages(channel):
            where = f"#{channel.name} message {message.id}"
            for text in [message.content, *message.history]:
                said.append((where, text))
            said.append((where + " embeds", repr(message.embeds)))
    for handle in discord.interactions:
        for message in handle.messages():
            kind = "private" if message.ephemeral else "public"
            for text in [message.content, *message.history]:
                said.append((f"{kind} answer to {handle.name}", text))
        if handle.choices is not None:
            said.append((f"autocomplete of {handle.name}", repr(handle.choices)))
    for record in discord.requests:
        # The token belongs in the Authorization header (which the stand-in never stores),
        # nowhere else: not in a path, a query or a body.
        said.append((f"{record.method} {record.route}", f"{record.path}?{record.query}"))
        if record.json is not None:
            said.append((f"{record.method} {record.route} body", repr(record.json)))
    return said


def leaks(discord: DiscordStandIn, imgur: ImgurStandIn, logs: Iterable[str] = ()) -> list[str]:
    """Where a secret shows up in what the bot said on Discord or wrote to its logs."""
    found: list[str] = []
    secret_values = secrets_of(discord, imgur)
    places = everything_the_bot_said(discord)
    for index, log in enumerate(logs):
        places += [(f"log {index} line {n}", line) for n, line in enumerate(log.splitlines(), 1)]
    for name, value in secret_values.items():
        for where, text in places:
            if value in text:
                found.append(f"{name} in {where}: {text[:200]!r}")
    return found


# --- linked files -----------------------------------------------------------------------------


class HeldFile:
    """A linked file whose download waits until the test releases it (a slow web server)."""

    def __init__(self) -> None:
        self.requested = asyncio.Event()
        self._released = asyncio.Event()

    async def wait_until_requested(self, timeout: float = ANSWER_TIMEOUT) -> None:
        await asyncio.wait_for(self.requested.wait(), timeout)

    def release(self) -> None:
        self._released.set()


class LinkedFiles:
    """A small web server for files that members link to with ``/imgur url:``."""

    def __init__(self) -> None:
        self._files: dict[str, tuple[bytes, str]] = {}
        self._held: dict[str, HeldFile] = {}
        self._runner: web.AppRunner | None = None
        self.base = ""
        self.hits: list[str] = []

    def add(self, name: str, data: bytes, content_type: str = "image/png") -> str:
        """Serve ``data`` at ``/name``; returns its URL."""
        self._files[f"/{name}"] = (data, content_type)
        return f"{self.base}/{name}"

    def add_held(self, name: str, data: bytes) -> tuple[str, HeldFile]:
        """Serve ``data`` at ``/name`` once released: the URL, and the handle to release it."""
        held = self._held[f"/{name}"] = HeldFile()
        return self.add(name, data), held

    async def _serve(self, request: web.Request) -> web.Response:
        self.hits.append(request.path)
        held = self._held.get(request.path)
        if held is not None:
            held.requested.set()
            await held._released.wait()
        found = self._files.get(request.path)
        if found is None:
            raise web.HTTPNotFound()
        data, content_type = found
        return web.Response(body=data, content_type=content_type)

    async def __aenter__(self) -> LinkedFiles:
        app = web.Application()
        app.router.add_get("/{name}", self._serve)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for held in self._held.values():
            held.release()
        if self._runner is not None:
            await self._runner.cleanup()
