"""`DiscordStandIn`: the server, the world it serves, and the API tests drive it with."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from . import gateway as gw
from . import interactions as ix
from . import rest
from .cdn import Cdn, clean_filename
from .interactions import InteractionHandle, OptionBuilder, StandInUsageError
from .permissions import BOT_DEFAULT, DM_PERMISSIONS
from .permissions import Permission as P
from .world import (
    DISCORD_EPOCH_MS,
    Attachment,
    Channel,
    ChannelType,
    Guild,
    Member,
    Message,
    MessageType,
    StoredAttachment,
    User,
    guess_content_type,
    iso,
    sniff_dimensions,
)

log = logging.getLogger(__name__)

Payload = dict[str, Any]
T = TypeVar("T")

DEFAULT_FILESIZE_LIMIT = 10 * 1024 * 1024

# Application flags Discord reports for an unverified bot with the privileged intents enabled.
APP_FLAG_GATEWAY_PRESENCE_LIMITED = 1 << 13
APP_FLAG_GATEWAY_GUILD_MEMBERS_LIMITED = 1 << 15
APP_FLAG_GATEWAY_MESSAGE_CONTENT_LIMITED = 1 << 19
APP_FLAG_APPLICATION_COMMAND_BADGE = 1 << 23

_EVENT_INTENTS = {
    "CHANNEL_CREATE": gw.GUILDS,
    "CHANNEL_UPDATE": gw.GUILDS,
    "THREAD_CREATE": gw.GUILDS,
    "GUILD_ROLE_CREATE": gw.GUILDS,
    "GUILD_ROLE_UPDATE": gw.GUILDS,
    "GUILD_MEMBER_ADD": gw.GUILD_MEMBERS,
    "GUILD_MEMBER_UPDATE": gw.GUILD_MEMBERS,
}


class Clock:
    """The stand-in's clock: real time plus an offset tests can advance."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class Snowflakes:
    """Increasing snowflakes whose timestamps follow the stand-in clock."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._last = 0

    def next(self) -> int:
        millis = int(self._clock.time() * 1000) - DISCORD_EPOCH_MS
        value = (millis << 22) | (1 << 17)
        self._last = max(value, self._last + 1)
        return self._last


class DiscordStandIn:
    """A local Discord: REST API v10, gateway and CDN on one loopback port. See the package doc."""

    def __init__(
        self,
        token: str = "bot-token",
        app_id: int | None = None,
        *,
        bot_name: str = "Rehost Bot",
        message_content_allowed: bool = True,
        members_intent_allowed: bool = True,
        presences_intent_allowed: bool = False,
        heartbeat_interval: int = 41250,
        interaction_deadline: float = 3.0,
        cdn_link_ttl: float = 24 * 3600.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.token = token
        self.message_content_allowed = message_content_allowed
        self.members_intent_allowed = members_intent_allowed
        self.presences_intent_allowed = presences_intent_allowed
        self.interaction_deadline = interaction_deadline
        self.clock = Clock()
        self.snowflakes = Snowflakes(self.clock)
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        self._waiters: list[asyncio.Future[None]] = []

        self.users: dict[int, User] = {}
        self.guilds: dict[int, Guild] = {}
        self.channels: dict[int, Channel] = {}
        self.messages: dict[int, Message] = {}
        self._channel_history: dict[int, list[Message]] = {}
        self._dm_channels: dict[int, Channel] = {}

        self.app_id = app_id or self.snowflakes.next()
        self.bot_user = User(self.app_id, bot_name, bot=True)
        self.users[self.bot_user.id] = self.bot_user
        self.app_owner = self.add_user("app owner")

        self._global_commands: dict[str, Payload] = {}
        self._guild_commands: dict[int, dict[str, Payload]] = {}
        self._command_ids: dict[tuple[int | None, str, int], int] = {}

        self.interactions: list[InteractionHandle] = []
        self._interactions_by_id: dict[int, InteractionHandle] = {}
        self._interactions_by_token: dict[str, InteractionHandle] = {}

        self.requests: list[rest.RecordedRequest] = []
        self._injections: list[rest.Injection] = []
        self.identify_payload: Payload | None = None
        #: Exceptions raised by the stand-in itself (bugs), answered with 503 / close 1011.
        self.internal_errors: list[BaseException] = []

        self.cdn = Cdn(self, link_ttl=cdn_link_ttl)
        self.gateway = gw.Gateway(self, heartbeat_interval=heartbeat_interval)

    def __repr__(self) -> str:
        return f"<DiscordStandIn {self.base_url} guilds={len(self.guilds)}>"

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> DiscordStandIn:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._handle_api)
        for path in ("/gateway", "/gateway/", "/gateway/resume"):
            app.router.add_get(path, self.gateway.handle)
        app.router.add_get(r"/{path:(?:media/)?(?:ephemeral-)?attachments/.+}", self.cdn.handle)
        runner = web.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        await site.start()
        self._runner = runner
        self._port = runner.addresses[0][1]
        log.info("discord stand-in listening on %s", self.base_url)
        return self

    async def stop(self) -> None:
        self.gateway.accepting.set()
        await self.gateway.close_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        for waiter in self._waiters:
            waiter.cancel()

    async def __aenter__(self) -> DiscordStandIn:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _handle_api(self, request: web.Request) -> web.Response:
        return await rest.handle_api(self, request)

    @property
    def base_url(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def api_url(self) -> str:
        """The value for ``DISCORD_API_URL`` (``discord.http.Route.BASE``)."""
        return f"{self.base_url}/api/v10"

    @property
    def gateway_url(self) -> str:
        """The value for ``DISCORD_GATEWAY_URL`` (``DiscordWebSocket.DEFAULT_GATEWAY``)."""
        return f"ws://{self._host}:{self._port}/gateway"

    @property
    def resume_gateway_url(self) -> str:
        return f"ws://{self._host}:{self._port}/gateway/resume"

    @property
    def cdn_url(self) -> str:
        return self.base_url

    # -- waiting ------------------------------------------------------------------------------

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_until(
        self, predicate: Callable[[], T | None], timeout: float = 10.0, what: str = "a condition"
    ) -> T:
        """Wait until ``predicate()`` is truthy; return its value or raise ``TimeoutError``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
            waiter = loop.create_future()
            self._waiters.append(waiter)
            # Woken by every change; the short cap also catches conditions that follow the
            # clock alone (an interaction that passed its 3 second window).
            await asyncio.wait([waiter], timeout=min(remaining, 0.25))

    # -- world building -----------------------------------------------------------------------

    def add_user(
        self,
        name: str,
        *,
        bot: bool = False,
        global_name: str | None = None,
        accepts_dms: bool = True,
        locale: str = "en-US",
    ) -> User:
        user = User(self.snowflakes.next(), name, bot, global_name, accepts_dms, locale)
        self.users[user.id] = user
        return user

    def add_guild(
        self,
        name: str,
        *,
        bot_permissions: int = BOT_DEFAULT,
        everyone_permissions: int = 0,
        filesize_limit: int = DEFAULT_FILESIZE_LIMIT,
        locale: str = "en-US",
    ) -> Guild:
        """Add a guild the bot is in; it has an owner member with admin rights (``guild.owner``)."""
        guild = Guild(
            self,
            guild_id=self.snowflakes.next(),
            name=name,
            everyone_permissions=everyone_permissions,
            bot_permissions=bot_permissions,
            filesize_limit=filesize_limit,
            locale=locale,
        )
        self.guilds[guild.id] = guild
        session = self.gateway.current
        if session is not None and not session.invalidated:
            # A guild joined mid-session has no "unavailable" key (discord.py: guild_join).
            payload = self._guild_create_payload(guild, session)
            del payload["unavailable"]
            session.append("GUILD_CREATE", payload)
            self._notify()
        return guild

    def open_dm(self, user: User | Member) -> Channel:
        """The DM channel between the bot and a user."""
        user = user.user if isinstance(user, Member) else user
        channel = self._dm_channels.get(user.id)
        if channel is None:
            channel = Channel(
                self.snowflakes.next(),
                ChannelType.DM,
                "",
                recipient=user,
                created_at=self.clock.time(),
            )
            self._dm_channels[user.id] = channel
            self.channels[channel.id] = channel
        return channel

    def advance_clock(self, seconds: float) -> None:
        """Move the stand-in clock forward (interaction deadlines, token lifetimes, CDN links)."""
        self.clock.advance(seconds)
        self._notify()

    # -- permissions --------------------------------------------------------------------------

    def permissions_of(self, user: User | Member, channel: Channel) -> int:
        """A user's effective permissions in a channel (DMs: Discord's fixed DM set)."""
        if channel.guild is None:
            return DM_PERMISSIONS
        member = channel.guild.members.get(user.id)
        return member.permissions_in(channel) if member is not None else 0

    def bot_permissions_in(self, channel: Channel) -> int:
        return self.permissions_of(self.bot_user, channel)

    # -- gateway helpers ----------------------------------------------------------------------

    def guilds_for(self, session: gw.GatewaySession) -> list[Guild]:
        guilds = list(self.guilds.values())
        if session.shard is None:
            return guilds
        shard_id, count = session.shard
        return [g for g in guilds if (g.id >> 22) % count == shard_id]

    def _ready_payload(self, session: gw.GatewaySession) -> Payload:
        user = self.bot_user.to_payload()
        user.update({"verified": True, "mfa_enabled": False})
        payload: Payload = {
            "v": 10,
            "user": user,
            "guilds": [{"id": str(g.id), "unavailable": True} for g in self.guilds_for(session)],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.resume_gateway_url,
            "application": {"id": str(self.app_id), "flags": self._application_flags()},
            "private_channels": [],
            "presences": [],
            "relationships": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "user_settings": {},
            "_trace": ["discord-standin"],
        }
        if session.shard is not None:
            payload["shard"] = list(session.shard)
        return payload

    def _guild_create_payload(self, guild: Guild, session: gw.GatewaySession) -> Payload:
        # Without the GUILD_MEMBERS intent Discord sends only the bot's own member.
        if session.has_intent(gw.GUILD_MEMBERS):
            return guild.to_payload()
        return guild.to_payload(members=[guild.me])

    def _dispatch(
        self,
        event: str,
        data: Payload | Callable[[gw.GatewaySession], Payload | None],
        *,
        intent: int | None = None,
    ) -> tuple[gw.GatewaySession, int] | None:
        session = self.gateway.current
        if session is None or session.invalidated:
            return None
        if intent is not None and not session.has_intent(intent):
            return None
        payload = data(session) if callable(data) else data
        if payload is None:
            return None
        seq = session.append(event, payload)
        self._notify()
        return session, seq

    def _dispatch_world(self, event: str, data: Payload) -> None:
        self._dispatch(event, data, intent=_EVENT_INTENTS.get(event))

    async def _delivered(self, sent: tuple[gw.GatewaySession, int] | None) -> None:
        """Wait until a dispatched event was written to the bot's socket (if it is connected)."""
        if sent is None:
            return
        session, seq = sent

        def written() -> bool:
            conn = session.connection
            return conn is None or not conn.open or conn.delivered_seq >= seq

        await self.wait_until(written, 10.0, f"gateway event {seq} to be written")

    @property
    def connections(self) -> list[gw.GatewayConnection]:
        """Every gateway connection the bot opened, in order."""
        return self.gateway.connections

    @property
    def session(self) -> gw.GatewaySession | None:
        return self.gateway.current

    def _connected(self) -> gw.GatewayConnection | None:
        session = self.gateway.current
        if session is None or session.connection is None or not session.connection.open:
            return None
        return session.connection

    async def wait_until_ready(self, timeout: float = 10.0) -> gw.GatewaySession:
        """Wait until the bot identified and READY plus every GUILD_CREATE reached its socket."""

        def ready() -> gw.GatewaySession | None:
            conn = self._connected()
            if conn is None or conn.session is None:
                return None
            return conn.session if conn.delivered_seq >= conn.session.seq else None

        return await self.wait_until(ready, timeout, "the bot to connect to the gateway")

    async def wait_for_connection(self, count: int, timeout: float = 10.0) -> gw.GatewayConnection:
        """Wait until the bot opened ``count`` gateway connections; return the last of them."""
        await self.wait_until(
            lambda: len(self.connections) >= count, timeout, "a gateway connection"
        )
        return self.connections[count - 1]

    async def wait_for_resume(self, timeout: float = 10.0) -> gw.GatewayConnection:
        """Wait for a connection that resumed the current session and got its replay."""

        def resumed() -> gw.GatewayConnection | None:
            conn = self._connected()
            if conn is None or conn.kind != "resume" or conn.session is None:
                return None
            return conn if conn.delivered_seq >= conn.session.seq else None

        return await self.wait_until(resumed, timeout, "the bot to resume")

    async def disconnect(self, code: int = 4000, *, resumable: bool = True) -> None:
        """Close the bot's gateway socket with ``code``; ``resumable=False`` ends the session."""
        conn = self._connected()
        if conn is None:
            raise StandInUsageError("the bot is not connected to the gateway")
        if not resumable and conn.session is not None:
            conn.session.invalidated = True
        await self.gateway.close(conn, code, "Stand-in disconnect.")

    def hold_gateway(self) -> None:
        """Simulate a gateway outage: new connections get no HELLO until ``release_gateway``."""
        self.gateway.accepting.clear()

    def release_gateway(self) -> None:
        self.gateway.accepting.set()

    async def send_reconnect(self) -> None:
        """Send opcode 7 RECONNECT: the bot should close and resume."""
        conn = self._connected()
        if conn is None:
            raise StandInUsageError("the bot is not connected to the gateway")
        await self.gateway.send_op(conn, {"op": gw.RECONNECT, "d": None})

    # -- application commands -----------------------------------------------------------------

    def _command_store(self, guild_id: int | None) -> dict[str, Payload]:
        if guild_id is None:
            return self._global_commands
        return self._guild_commands.setdefault(guild_id, {})

    def _stored_command(self, guild_id: int | None, data: Payload) -> Payload:
        kind = int(data.get("type", 1))
        key = (guild_id, data["name"], kind)
        command_id = self._command_ids.setdefault(key, self.snowflakes.next())
        stored: Payload = {
            "id": str(command_id),
            "application_id": str(self.app_id),
            "version": str(self.snowflakes.next()),
            "type": kind,
            "name": data["name"],
            "name_localizations": data.get("name_localizations"),
            "description": data.get("description", ""),
            "description_localizations": data.get("description_localizations"),
            "options": data.get("options") or [],
            "default_member_permissions": data.get("default_member_permissions"),
            "dm_permission": data.get("dm_permission", True),
            "contexts": data.get("contexts"),
            "integration_types": data.get("integration_types") or [0],
            "nsfw": bool(data.get("nsfw", False)),
        }
        if guild_id is not None:
            stored["guild_id"] = str(guild_id)
        return stored

    def _replace_commands(self, guild_id: int | None, commands: list[Payload]) -> list[Payload]:
        store = self._command_store(guild_id)
        store.clear()
        for data in commands:
            stored = self._stored_command(guild_id, data)
            store[f"{stored['name']}\x00{stored['type']}"] = stored
        self._notify()
        return list(store.values())

    def _upsert_command(self, guild_id: int | None, data: Payload) -> Payload:
        stored = self._stored_command(guild_id, data)
        self._command_store(guild_id)[f"{stored['name']}\x00{stored['type']}"] = stored
        self._notify()
        return stored

    @property
    def commands(self) -> list[Payload]:
        """The synced global commands, as Discord stores them (with ids)."""
        return list(self._global_commands.values())

    def guild_commands(self, guild: Guild) -> list[Payload]:
        return list(self._guild_commands.get(guild.id, {}).values())

    def command(self, name: str, *, guild: Guild | None = None, type: int = 1) -> Payload | None:
        """A synced command: the guild's own first, then the global one."""
        key = f"{name}\x00{type}"
        if guild is not None and key in self._guild_commands.get(guild.id, {}):
            return self._guild_commands[guild.id][key]
        return self._global_commands.get(key)

    async def wait_for_commands(
        self, *names: str, guild: Guild | None = None, timeout: float = 10.0
    ) -> list[Payload]:
        """Wait until commands with these names (any type) were synced."""

        def synced() -> list[Payload] | None:
            available = self.commands + (self.guild_commands(guild) if guild else [])
            found = [c for c in available if c["name"] in names]
            return found if {c["name"] for c in found} >= set(names) else None

        return await self.wait_until(synced, timeout, f"commands {names} to be synced")

    # -- application --------------------------------------------------------------------------

    def _application_flags(self) -> int:
        flags = APP_FLAG_APPLICATION_COMMAND_BADGE
        if self.message_content_allowed:
            flags |= APP_FLAG_GATEWAY_MESSAGE_CONTENT_LIMITED
        if self.members_intent_allowed:
            flags |= APP_FLAG_GATEWAY_GUILD_MEMBERS_LIMITED
        if self.presences_intent_allowed:
            flags |= APP_FLAG_GATEWAY_PRESENCE_LIMITED
        return flags

    def _application_payload(self) -> Payload:
        return {
            "id": str(self.app_id),
            "name": self.bot_user.name,
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "hook": True,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": "0" * 64,
            "owner": self.app_owner.to_payload(),
            "team": None,
            "flags": self._application_flags(),
            "rpc_origins": [],
            "redirect_uris": [],
            "tags": [],
            "interactions_endpoint_url": None,
            "role_connections_verification_url": None,
            "integration_types_config": {"0": {}},
            "approximate_guild_count": len(self.guilds),
            "bot": self.bot_user.to_payload(),
        }

    # -- attachments --------------------------------------------------------------------------

    def _store_bytes(
        self,
        filename: str,
        data: bytes | Path,
        *,
        channel_id: int | None = None,
        ephemeral: bool = False,
        description: str | None = None,
        content_type: str | None = None,
        omit_content_type: bool = False,
        width: int | None = None,
        height: int | None = None,
    ) -> StoredAttachment:
        attachment_id = self.snowflakes.next()
        if isinstance(data, Path):
            size = data.stat().st_size
            with data.open("rb") as handle:
                head = handle.read(64 * 1024)
        else:
            size, head = len(data), data[: 64 * 1024]

        if ephemeral:
            path = f"ephemeral-attachments/{self.app_id}/{attachment_id}/{filename}"
        else:
            path = f"attachments/{channel_id}/{attachment_id}/{filename}"
        if width is None or height is None:
            dimensions = sniff_dimensions(head)
            if dimensions is not None:
                width, height = dimensions
        resolved_type = (
            None if omit_content_type else (content_type or guess_content_type(filename))
        )

        stored = StoredAttachment(
            attachment_id,
            filename,
            size,
            resolved_type,
            data,
            path,
            ephemeral=ephemeral,
            description=description,
            width=width,
            height=height,
        )
        self.cdn.register(stored)
        return stored

    def _store_attachment(
        self, spec: Attachment, *, channel_id: int | None = None, ephemeral: bool = False
    ) -> StoredAttachment:
        filename = clean_filename(spec.filename)
        if spec.spoiler and not filename.startswith("SPOILER_"):
            filename = f"SPOILER_{filename}"
        data = spec.data if isinstance(spec.data, bytes) else Path(os.fspath(spec.data))
        return self._store_bytes(
            filename,
            data,
            channel_id=channel_id,
            ephemeral=ephemeral,
            description=spec.description,
            content_type=spec.content_type,
            omit_content_type=spec.omit_content_type,
            width=spec.width,
            height=spec.height,
        )

    def attachment_payload(self, attachment: StoredAttachment) -> Payload:
        """The attachment object with a freshly signed URL."""
        return attachment.to_payload(self.cdn.signed_url(attachment))

    def _record_cdn(self, request: web.Request) -> rest.RecordedRequest:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
        record = rest.RecordedRequest(
            "cdn", request.method, request.path, dict(request.query), headers, time.monotonic()
        )
        self.requests.append(record)
        return record

    # -- messages -----------------------------------------------------------------------------

    def _new_message(self, channel: Channel, author: User, **fields: Any) -> Message:
        message = Message(self.snowflakes.next(), channel, author, created_at=self.clock.time())
        for key, value in fields.items():
            setattr(message, key, value)
        if message.content:
            message.mentions = rest.parse_mentions(self, message.content)
        if message.reference is not None and message.type is MessageType.DEFAULT:
            message.type = MessageType.REPLY
        self.messages[message.id] = message
        return message

    def _publish(self, message: Message) -> tuple[gw.GatewaySession, int] | None:
        """Make a new message part of its channel and dispatch MESSAGE_CREATE (not ephemeral)."""
        if message.ephemeral:
            self._notify()
            return None
        channel = message.channel
        self._channel_history.setdefault(channel.id, []).append(message)
        channel.last_message_id = message.id
        if channel.is_thread:
            channel.message_count += 1
        return self._dispatch(
            "MESSAGE_CREATE",
            lambda session: self.message_payload(message, session=session),
            intent=self._message_intent(channel),
        )

    def _publish_update(self, message: Message) -> tuple[gw.GatewaySession, int] | None:
        if message.ephemeral:
            self._notify()
            return None
        return self._dispatch(
            "MESSAGE_UPDATE",
            lambda session: self.message_payload(message, session=session),
            intent=self._message_intent(message.channel),
        )

    def _delete(self, message: Message) -> tuple[gw.GatewaySession, int] | None:
        message.deleted = True
        for attachment in message.attachments:
            attachment.available = False
        if message.ephemeral:
            self._notify()
            return None
        payload: Payload = {"id": str(message.id), "channel_id": str(message.channel.id)}
        if message.guild is not None:
            payload["guild_id"] = str(message.guild.id)
        return self._dispatch(
            "MESSAGE_DELETE", payload, intent=self._message_intent(message.channel)
        )

    def _delete_many(
        self, channel: Channel, messages: list[Message]
    ) -> tuple[gw.GatewaySession, int] | None:
        for message in messages:
            message.deleted = True
            for attachment in message.attachments:
                attachment.available = False
        payload: Payload = {
            "ids": [str(m.id) for m in messages],
            "channel_id": str(channel.id),
        }
        if channel.guild is not None:
            payload["guild_id"] = str(channel.guild.id)
        return self._dispatch("MESSAGE_DELETE_BULK", payload, intent=self._message_intent(channel))

    @staticmethod
    def _message_intent(channel: Channel) -> int:
        return gw.DIRECT_MESSAGES if channel.is_dm else gw.GUILD_MESSAGES

    def _hides_content(
        self, message: Message, *, rest: bool, session: gw.GatewaySession | None
    ) -> bool:
        """Discord's MESSAGE_CONTENT rule: empty content unless DM, own message or mention."""
        if message.author is self.bot_user or message.channel.is_dm:
            return False
        if message.mentions_user(self.bot_user):
            return False
        if rest:
            return not self.message_content_allowed
        return session is not None and not session.has_intent(gw.MESSAGE_CONTENT)

    def message_payload(
        self,
        message: Message,
        *,
        rest: bool = False,
        session: gw.GatewaySession | None = None,
        full: bool = False,
        nested: bool = False,
    ) -> Payload:
        """Serialize a message; ``full`` skips the content rule (context-menu targets)."""
        channel = message.channel
        hidden = not full and self._hides_content(message, rest=rest, session=session)
        payload: Payload = {
            "id": str(message.id),
            "channel_id": str(channel.id),
            "author": message.author.to_payload(),
            "content": "" if hidden else message.content,
            "timestamp": iso(message.created_at),
            "edited_timestamp": iso(message.edited_at) if message.edited_at else None,
            "tts": message.tts,
            "mention_everyone": message.mention_everyone,
            "mentions": [user.to_payload() for user in message.mentions],
            "mention_roles": [],
            "attachments": (
                [] if hidden else [self.attachment_payload(a) for a in message.attachments]
            ),
            "embeds": [] if hidden else list(message.embeds),
            "components": [] if hidden else list(message.components),
            "pinned": False,
            "type": int(message.type),
            "flags": message.flags,
        }
        if channel.guild is not None:
            payload["guild_id"] = str(channel.guild.id)
            member = channel.guild.members.get(message.author.id)
            if member is not None and not rest and message.webhook_id is None:
                payload["member"] = member.to_payload(include_user=False)
        if message.nonce is not None:
            payload["nonce"] = message.nonce
        if message.webhook_id is not None:
            payload["webhook_id"] = str(message.webhook_id)
            payload["application_id"] = str(self.app_id)
        if message.reactions:
            payload["reactions"] = [_reaction(emoji) for emoji in message.reactions]
        if message.interaction is not None:
            payload.update(self._interaction_metadata(message))
        if message.reference is not None:
            target = message.reference
            payload["message_reference"] = {
                "type": 0,
                "message_id": str(target.id),
                "channel_id": str(target.channel.id),
            }
            if target.guild is not None:
                payload["message_reference"]["guild_id"] = str(target.guild.id)
            if not nested:
                payload["referenced_message"] = (
                    None
                    if target.deleted
                    else self.message_payload(target, rest=rest, session=session, nested=True)
                )
        return payload

    def _interaction_metadata(self, message: Message) -> Payload:
        handle = message.interaction
        assert handle is not None
        command_type = handle.payload["data"].get("type", 1)
        metadata: Payload = {
            "id": str(handle.id),
            "type": handle.type,
            "user": handle.user.to_payload(),
            "authorizing_integration_owners": handle.payload["authorizing_integration_owners"],
            "name": handle.name,
            "command_type": command_type,
        }
        if handle.original is not None and handle.original is not message:
            metadata["original_response_message_id"] = str(handle.original.id)
        legacy = {
            "id": str(handle.id),
            "type": handle.type,
            "name": handle.name,
            "user": handle.user.to_payload(),
        }
        return {"interaction_metadata": metadata, "interaction": legacy}

    def history(self, channel: Channel) -> list[Message]:
        """Every non-ephemeral message of a channel, oldest first, deleted ones included."""
        return list(self._channel_history.get(channel.id, []))

    def channel_messages(self, channel: Channel, *, include_users: bool = False) -> list[Message]:
        """What the bot posted in a channel (public interaction answers included), oldest first.

        Deleted messages stay in the list with ``deleted=True``; edits change ``content`` and
        keep earlier versions in ``history``. ``include_users=True`` adds everyone's messages.
        """
        return [m for m in self.history(channel) if include_users or m.author is self.bot_user]

    async def wait_for_bot_message(
        self,
        channel: Channel,
        predicate: Callable[[Message], object] | None = None,
        timeout: float = 10.0,
    ) -> Message:
        """The first message the bot posted in ``channel`` that matches, waiting for it."""

        def found() -> Message | None:
            for message in self.channel_messages(channel):
                if predicate is None or predicate(message):
                    return message
            return None

        return await self.wait_until(found, timeout, f"a bot message in #{channel.name}")

    # -- driving: messages --------------------------------------------------------------------

    def _author(self, channel: Channel, author: User | Member) -> User:
        user = author.user if isinstance(author, Member) else author
        if channel.is_dm:
            if channel.recipient is None or channel.recipient.id != user.id:
                raise StandInUsageError(f"{user.name} is not part of this DM")
            return user
        assert channel.guild is not None
        if user.id not in channel.guild.members:
            raise StandInUsageError(f"{user.name} is not a member of {channel.guild.name}")
        return user

    async def post_message(
        self,
        channel: Channel,
        author: User | Member,
        content: str = "",
        *,
        attachments: Iterable[Attachment] = (),
        mentions_bot: bool = False,
        reply_to: Message | None = None,
        embeds: list[Payload] | None = None,
    ) -> Message:
        """A user posts a message: stored, files on the CDN, MESSAGE_CREATE dispatched."""
        user = self._author(channel, author)
        specs = list(attachments)
        if not channel.accepts_messages:
            raise StandInUsageError(f"#{channel.name} does not take messages")
        if not channel.is_dm:
            needed = P.SEND_MESSAGES_IN_THREADS if channel.is_thread else P.SEND_MESSAGES
            if specs:
                needed |= P.ATTACH_FILES
            if self.permissions_of(user, channel) & needed != needed:
                raise StandInUsageError(f"{user.name} may not post that in #{channel.name}")
        if mentions_bot and self.bot_user.mention not in content:
            content = f"{self.bot_user.mention} {content}".strip()

        stored = [self._store_attachment(spec, channel_id=channel.id) for spec in specs]
        message = self._new_message(
            channel,
            user,
            content=content,
            attachments=stored,
            embeds=list(embeds or []),
            reference=reply_to,
        )
        await self._delivered(self._publish(message))
        return message

    async def edit_message(self, message: Message, content: str) -> Message:
        """A user edits their message (MESSAGE_UPDATE)."""
        message.history.append(message.content)
        message.content = content
        message.mentions = rest.parse_mentions(self, content)
        message.edited_at = self.clock.time()
        await self._delivered(self._publish_update(message))
        return message

    async def delete_message(self, message: Message) -> None:
        """Delete a message (MESSAGE_DELETE); its attachments stop being served."""
        await self._delivered(self._delete(message))

    async def bulk_delete(self, messages: Iterable[Message]) -> None:
        """Delete messages of one channel at once (MESSAGE_DELETE_BULK)."""
        found = list(messages)
        channels = {m.channel.id for m in found}
        if len(channels) != 1:
            raise StandInUsageError("bulk_delete needs messages of exactly one channel")
        await self._delivered(self._delete_many(found[0].channel, found))

    # -- driving: interactions ----------------------------------------------------------------

    def _find_command(self, name: str, channel: Channel, kind: int) -> Payload:
        command = self.command(name, guild=channel.guild, type=kind)
        if command is None:
            synced = sorted(c["name"] for c in [*self.commands, *self._all_guild_commands()])
            raise StandInUsageError(f"command {name!r} (type {kind}) was never synced: {synced}")
        return command

    def _all_guild_commands(self) -> list[Payload]:
        return [c for store in self._guild_commands.values() for c in store.values()]

    def _check_usable(
        self, command: Payload, member: Member | None, channel: Channel, bypass: bool
    ) -> None:
        contexts = command.get("contexts")
        context = 1 if channel.is_dm else 0
        if contexts is not None and context not in contexts:
            raise StandInUsageError(f"/{command['name']} is not available in this context")
        if channel.is_dm and command.get("dm_permission") is False:
            raise StandInUsageError(f"/{command['name']} is not available in DMs")

        required = command.get("default_member_permissions")
        if member is None or required is None or bypass:
            return
        needed = int(required)
        if needed == 0 or member.permissions_in(channel) & needed != needed:
            raise StandInUsageError(
                f"{member.name} cannot see /{command['name']} (default_member_permissions); "
                "pass bypass_default_permissions=True to model a server override"
            )

    def _invoker(self, user: User | Member, channel: Channel) -> tuple[User, Member | None]:
        user_obj = self._author(channel, user)
        member = channel.guild.members[user_obj.id] if channel.guild is not None else None
        return user_obj, member

    async def _dispatch_interaction(
        self,
        *,
        type: int,
        data: Payload,
        name: str,
        user: User,
        member: Member | None,
        channel: Channel,
        locale: str | None,
        message: Message | None = None,
    ) -> InteractionHandle:
        if self._connected() is None:
            raise StandInUsageError("the bot is not connected to the gateway")
        interaction_id = self.snowflakes.next()
        token = "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(48)
        guild = channel.guild
        payload: Payload = {
            "id": str(interaction_id),
            "application_id": str(self.app_id),
            "type": type,
            "data": data,
            "token": token,
            "version": 1,
            "channel_id": str(channel.id),
            "channel": channel.to_payload(),
            "locale": locale or user.locale,
            "app_permissions": str(self.bot_permissions_in(channel)),
            "entitlements": [],
            "entitlement_sku_ids": [],
            "context": 1 if channel.is_dm else 0,
            "attachment_size_limit": guild.filesize_limit if guild else DEFAULT_FILESIZE_LIMIT,
        }
        if guild is not None and member is not None:
            payload["guild_id"] = str(guild.id)
            payload["guild"] = guild.partial_payload()
            payload["guild_locale"] = guild.locale
            payload["member"] = member.to_payload(permissions=member.permissions_in(channel))
            payload["authorizing_integration_owners"] = {"0": str(guild.id)}
        else:
            payload["user"] = user.to_payload()
            payload["authorizing_integration_owners"] = {"0": "0"}
        if message is not None:
            payload["message"] = self.message_payload(message, full=True)

        handle = InteractionHandle(
            self,
            interaction_id=interaction_id,
            token=token,
            type=type,
            name=name,
            user=user,
            member=member,
            channel=channel,
            payload=payload,
            target_message=message,
        )
        self.interactions.append(handle)
        self._interactions_by_id[interaction_id] = handle
        self._interactions_by_token[token] = handle
        await self._delivered(self._dispatch("INTERACTION_CREATE", payload))
        return handle

    async def invoke_slash(
        self,
        name: str,
        user: User | Member,
        channel: Channel,
        options: Mapping[str, Any] | None = None,
        *,
        subcommand: str | None = None,
        attachments: Mapping[str, Attachment] | None = None,
        locale: str | None = None,
        bypass_default_permissions: bool = False,
    ) -> InteractionHandle:
        """A user runs ``/name [group] [sub]`` with options, built from the synced definition.

        ``options`` maps option names to values: str/int/float/bool, a ``User``/``Member``, a
        ``Channel``, a ``Role``, or an :class:`Attachment` for attachment options (uploaded
        to the CDN as an ephemeral attachment). ``attachments`` is merged into ``options``.
        """
        parts = name.split()
        if subcommand:
            parts += subcommand.split()
        command = self._find_command(parts[0], channel, 1)
        user_obj, member = self._invoker(user, channel)
        self._check_usable(command, member, channel, bypass_default_permissions)

        definitions, walked = ix.split_command_path(command, parts[1:])
        builder = OptionBuilder(self, channel, member)
        values = {**(options or {}), **(attachments or {})}
        leaf = builder.build(definitions, values)
        data: Payload = {
            "id": command["id"],
            "name": command["name"],
            "type": 1,
            "options": ix.nest_options(command, walked, leaf),
        }
        if builder.resolved:
            data["resolved"] = builder.resolved
        if "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        return await self._dispatch_interaction(
            type=ix.APPLICATION_COMMAND,
            data=data,
            name=" ".join([command["name"], *walked]),
            user=user_obj,
            member=member,
            channel=channel,
            locale=locale,
        )

    async def invoke_autocomplete(
        self,
        name: str,
        user: User | Member,
        channel: Channel,
        options: Mapping[str, Any],
        focused: str,
        *,
        subcommand: str | None = None,
        timeout: float = 10.0,
    ) -> list[Payload]:
        """A user types into an autocomplete option; returns the choices the bot answered."""
        parts = name.split() + (subcommand.split() if subcommand else [])
        command = self._find_command(parts[0], channel, 1)
        user_obj, member = self._invoker(user, channel)
        if focused not in options:
            raise StandInUsageError(f"focused option {focused!r} needs a typed value in options")

        definitions, walked = ix.split_command_path(command, parts[1:])
        builder = OptionBuilder(self, channel, member)
        leaf = builder.build(definitions, options, focused=focused)
        data: Payload = {
            "id": command["id"],
            "name": command["name"],
            "type": 1,
            "options": ix.nest_options(command, walked, leaf),
        }
        if "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        handle = await self._dispatch_interaction(
            type=ix.AUTOCOMPLETE,
            data=data,
            name=" ".join([command["name"], *walked]),
            user=user_obj,
            member=member,
            channel=channel,
            locale=None,
        )
        await handle.wait_for_callback(timeout)
        if handle.choices is None:
            raise AssertionError(f"autocomplete was not answered: {handle.errors}")
        return handle.choices

    async def invoke_message_command(
        self,
        name: str,
        user: User | Member,
        target_message: Message,
        *,
        locale: str | None = None,
        bypass_default_permissions: bool = False,
    ) -> InteractionHandle:
        """A user picks "Apps > name" on a message (the target arrives with full content)."""
        channel = target_message.channel
        command = self._find_command(name, channel, 3)
        user_obj, member = self._invoker(user, channel)
        self._check_usable(command, member, channel, bypass_default_permissions)
        if target_message.deleted:
            raise StandInUsageError("the target message was deleted")

        data: Payload = {
            "id": command["id"],
            "name": command["name"],
            "type": 3,
            "target_id": str(target_message.id),
            "resolved": {
                "messages": {
                    str(target_message.id): self.message_payload(target_message, full=True)
                }
            },
        }
        if "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        return await self._dispatch_interaction(
            type=ix.APPLICATION_COMMAND,
            data=data,
            name=command["name"],
            user=user_obj,
            member=member,
            channel=channel,
            locale=locale,
        )

    async def invoke_user_command(
        self,
        name: str,
        user: User | Member,
        target: User | Member,
        channel: Channel,
        *,
        bypass_default_permissions: bool = False,
    ) -> InteractionHandle:
        """A user picks "Apps > name" on another user."""
        command = self._find_command(name, channel, 2)
        user_obj, member = self._invoker(user, channel)
        self._check_usable(command, member, channel, bypass_default_permissions)
        builder = OptionBuilder(self, channel, member)
        target_id = builder._resolve_user("target", target)
        data: Payload = {
            "id": command["id"],
            "name": command["name"],
            "type": 2,
            "target_id": target_id,
            "resolved": builder.resolved,
        }
        if "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        return await self._dispatch_interaction(
            type=ix.APPLICATION_COMMAND,
            data=data,
            name=command["name"],
            user=user_obj,
            member=member,
            channel=channel,
            locale=None,
        )

    async def use_component(
        self,
        message: Message,
        user: User | Member,
        custom_id: str,
        *,
        values: list[str] | None = None,
    ) -> InteractionHandle:
        """A user clicks a button (or picks ``values`` in a select menu) on a bot message."""
        component = _find_component(message.components, custom_id)
        if component is None or message.deleted:
            raise StandInUsageError(f"no component {custom_id!r} on that message")
        user_obj, member = self._invoker(user, message.channel)
        invoker = message.interaction.user if message.interaction is not None else None
        if message.ephemeral and invoker is not None and invoker.id != user_obj.id:
            raise StandInUsageError("only the invoker sees that ephemeral message")
        data: Payload = {"custom_id": custom_id, "component_type": component["type"]}
        if values is not None:
            data["values"] = values
        return await self._dispatch_interaction(
            type=ix.MESSAGE_COMPONENT,
            data=data,
            name=custom_id,
            user=user_obj,
            member=member,
            channel=message.channel,
            locale=None,
            message=message,
        )

    async def submit_modal(
        self, handle: InteractionHandle, values: Mapping[str, str]
    ) -> InteractionHandle:
        """The invoker submits the modal the bot answered ``handle`` with.

        ``values`` maps a text input's ``custom_id`` (or its label) to the typed text.
        """
        if handle.modal is None:
            raise StandInUsageError("the bot did not answer that interaction with a modal")
        components: list[Payload] = []
        used: set[str] = set()
        for row in handle.modal.get("components", []):
            inner = row.get("components") if row.get("type") == 1 else [row.get("component")]
            submitted: list[Payload] = []
            for component in inner or []:
                if not component or "custom_id" not in component:
                    continue
                names = (component["custom_id"], row.get("label"), component.get("label"))
                key = next((name for name in names if name in values), None)
                if key is not None:
                    used.add(key)
                submitted.append(
                    {
                        "type": component["type"],
                        "custom_id": component["custom_id"],
                        "value": values[key] if key is not None else "",
                    }
                )
            if row.get("type") == 18:
                components += [{"type": 18, "component": c} for c in submitted]
            else:
                components.append({"type": 1, "components": submitted})
        unknown = set(values) - used
        if unknown:
            raise StandInUsageError(f"the modal has no fields {sorted(unknown)}")
        data = {"custom_id": handle.modal["custom_id"], "components": components}
        return await self._dispatch_interaction(
            type=ix.MODAL_SUBMIT,
            data=data,
            name=handle.modal["custom_id"],
            user=handle.user,
            member=handle.member,
            channel=handle.channel,
            locale=None,
            message=handle.target_message,
        )

    # -- faults and inspection ----------------------------------------------------------------

    def inject_error(
        self,
        route: str,
        status: int,
        *,
        code: int = 0,
        message: str | None = None,
        count: int = 1,
    ) -> None:
        """Answer the next ``count`` requests of ``route`` with an error.

        ``route`` is ``"METHOD /template"`` as listed in ``rest.ROUTES`` (for example
        ``"POST /channels/{channel_id}/messages"``) or a concrete ``"METHOD /path"``.
        """
        known = {500: "500: Internal Server Error", 502: "502: Bad Gateway"}
        text = message or known.get(status, f"{status}: Error")
        self._injections.append(rest.Injection(route, count, rest.ApiError(status, code, text)))

    def inject_rate_limit(
        self,
        route: str,
        *,
        count: int = 1,
        retry_after: float = 0.2,
        is_global: bool = False,
        scope: str | None = None,
    ) -> None:
        """Answer the next ``count`` requests of ``route`` with 429; discord.py waits, retries."""
        reset = time.time() + retry_after
        scope = scope or ("global" if is_global else "user")
        headers = {
            "Retry-After": str(max(1, round(retry_after))),
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": f"{reset:.3f}",
            "X-RateLimit-Reset-After": f"{retry_after:.3f}",
            "X-RateLimit-Bucket": secrets.token_hex(16),
            "X-RateLimit-Scope": scope,
            "Via": "1.1 google",
        }
        if is_global:
            headers["X-RateLimit-Global"] = "true"
        text = "You are being rate limited."
        body = {"message": text, "retry_after": retry_after, "global": is_global}
        error = rest.ApiError(429, 0, text, headers=headers, body=body)
        self._injections.append(rest.Injection(route, count, error))

    def _apply_injections(self, record: rest.RecordedRequest) -> None:
        concrete = f"{record.method} {record.path}"
        for injection in self._injections:
            if injection.remaining > 0 and injection.route in (record.route, concrete):
                injection.remaining -= 1
                raise injection.error

    async def wait_for_request(
        self,
        predicate: Callable[[rest.RecordedRequest], object],
        timeout: float = 10.0,
        *,
        since: int = 0,
    ) -> rest.RecordedRequest:
        """The first answered request from index ``since`` on that matches ``predicate``."""

        def found() -> rest.RecordedRequest | None:
            for record in self.requests[since:]:
                if record.status is not None and predicate(record):
                    return record
            return None

        return await self.wait_until(found, timeout, "a matching request")


def _reaction(emoji: str) -> Payload:
    return {
        "emoji": {"id": None, "name": emoji},
        "count": 1,
        "count_details": {"burst": 0, "normal": 1},
        "me": True,
        "me_burst": False,
        "burst_colors": [],
    }


def _find_component(components: list[Payload], custom_id: str) -> Payload | None:
    for component in components:
        if component.get("custom_id") == custom_id:
            return component
        nested = list(component.get("components") or [])
        for key in ("accessory", "component"):
            if isinstance(component.get(key), dict):
                nested.append(component[key])
        found = _find_component(nested, custom_id)
        if found is not None:
            return found
    return None


__all__ = ["Clock", "DiscordStandIn", "Snowflakes"]
