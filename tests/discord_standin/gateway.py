"""The gateway websocket: hello, identify, heartbeats, dispatches, resume and close codes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

if TYPE_CHECKING:
    from .server import DiscordStandIn

log = logging.getLogger(__name__)

Payload = dict[str, Any]

# Opcodes.
DISPATCH, HEARTBEAT, IDENTIFY, PRESENCE_UPDATE, VOICE_STATE_UPDATE = 0, 1, 2, 3, 4
RESUME, RECONNECT, REQUEST_GUILD_MEMBERS, INVALID_SESSION, HELLO, HEARTBEAT_ACK = (
    6,
    7,
    8,
    9,
    10,
    11,
)

# Gateway intents.
GUILDS = 1 << 0
GUILD_MEMBERS = 1 << 1
GUILD_PRESENCES = 1 << 8
GUILD_MESSAGES = 1 << 9
GUILD_MESSAGE_REACTIONS = 1 << 10
DIRECT_MESSAGES = 1 << 12
DIRECT_MESSAGE_REACTIONS = 1 << 13
MESSAGE_CONTENT = 1 << 15

# Close codes.
UNKNOWN_OPCODE, DECODE_ERROR, NOT_AUTHENTICATED, AUTHENTICATION_FAILED = 4001, 4002, 4003, 4004
ALREADY_AUTHENTICATED, INVALID_SHARD, INVALID_INTENTS, DISALLOWED_INTENTS = 4005, 4010, 4013, 4014

_CLOSE_REASONS = {
    UNKNOWN_OPCODE: "Unknown opcode.",
    DECODE_ERROR: "Decode error.",
    NOT_AUTHENTICATED: "Not authenticated.",
    AUTHENTICATION_FAILED: "Authentication failed.",
    ALREADY_AUTHENTICATED: "Already authenticated.",
    INVALID_SHARD: "Invalid shard.",
    INVALID_INTENTS: "Invalid intent(s).",
    DISALLOWED_INTENTS: "Disallowed intent(s).",
}


def redact(data: Payload) -> Payload:
    """A copy of an identify/resume payload without the token."""
    copy = dict(data)
    if "token" in copy:
        copy["token"] = "<redacted>"
    return copy


@dataclass(eq=False)
class GatewaySession:
    """A gateway session: its numbered event log survives disconnects and is replayed on resume."""

    id: str
    intents: int
    identify: Payload
    shard: tuple[int, int] | None
    log: list[Payload] = field(default_factory=list)
    connection: GatewayConnection | None = None
    invalidated: bool = False
    new_event: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def seq(self) -> int:
        return len(self.log)

    def has_intent(self, intent: int) -> bool:
        return bool(self.intents & intent)

    def append(self, event: str, data: Payload) -> int:
        seq = len(self.log) + 1
        self.log.append({"op": DISPATCH, "t": event, "s": seq, "d": data})
        self.new_event.set()
        return seq


@dataclass(eq=False)
class GatewayConnection:
    """One websocket connection the bot opened."""

    number: int
    path: str
    query: dict[str, str]
    kind: str | None = None
    session: GatewaySession | None = None
    received: list[Payload] = field(default_factory=list)
    heartbeats: int = 0
    delivered_seq: int = 0
    close_code: int | None = None
    closed_by: str | None = None
    ws: web.WebSocketResponse | None = field(default=None, repr=False)
    writer: asyncio.Task[None] | None = field(default=None, repr=False)
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)

    @property
    def open(self) -> bool:
        return self.ws is not None and not self.ws.closed and self.close_code is None

    @property
    def session_id(self) -> str | None:
        return self.session.id if self.session else None


class Gateway:
    """Serves ``/gateway`` (identify) and ``/gateway/resume`` (the ``resume_gateway_url``)."""

    def __init__(self, standin: DiscordStandIn, *, heartbeat_interval: int) -> None:
        self._standin = standin
        self.heartbeat_interval = heartbeat_interval
        self.connections: list[GatewayConnection] = []
        self.sessions: dict[str, GatewaySession] = {}
        self.current: GatewaySession | None = None
        # Cleared by DiscordStandIn.hold_gateway(): new connections wait before HELLO.
        self.accepting = asyncio.Event()
        self.accepting.set()

    # -- websocket handler --------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)

        conn = GatewayConnection(len(self.connections) + 1, request.path, dict(request.query))
        conn.ws = ws
        self.connections.append(conn)
        log.debug("gateway connection %s opened on %s", conn.number, request.path)
        self._standin._notify()

        try:
            await self._send(
                conn, {"op": HELLO, "d": {"heartbeat_interval": self.heartbeat_interval}}
            )
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    try:
                        await self._on_frame(conn, message.data)
                    except Exception as exc:
                        log.exception("stand-in error on gateway connection %s", conn.number)
                        self._standin.internal_errors.append(exc)
                        await self.close(conn, 1011, "Stand-in internal error.")
                elif message.type is WSMsgType.BINARY:
                    await self.close(conn, DECODE_ERROR)
                if conn.close_code is not None:
                    break
        finally:
            await self._detach(conn)
            if conn.close_code is None:
                conn.close_code = ws.close_code
                conn.closed_by = "client"
            log.debug("gateway connection %s closed with %s", conn.number, conn.close_code)
            self._standin._notify()
        return ws

    async def _on_frame(self, conn: GatewayConnection, text: str) -> None:
        try:
            frame = json.loads(text)
            op = frame["op"]
            data = frame.get("d")
        except (ValueError, KeyError, TypeError):
            await self.close(conn, DECODE_ERROR)
            return

        record = {"op": op, "d": redact(data) if isinstance(data, dict) else data}
        conn.received.append(record)

        if op == HEARTBEAT:
            conn.heartbeats += 1
            await self._send(conn, {"op": HEARTBEAT_ACK})
        elif op == IDENTIFY:
            await self._identify(conn, data)
        elif op == RESUME:
            await self._resume(conn, data)
        elif conn.session is None:
            await self.close(conn, NOT_AUTHENTICATED)
        elif op == REQUEST_GUILD_MEMBERS:
            self._request_members(conn.session, data)
        elif op in (PRESENCE_UPDATE, VOICE_STATE_UPDATE):
            pass
        else:
            await self.close(conn, UNKNOWN_OPCODE)
        self._standin._notify()

    async def _identify(self, conn: GatewayConnection, data: Payload) -> None:
        standin = self._standin
        if conn.session is not None:
            await self.close(conn, ALREADY_AUTHENTICATED)
            return
        if not isinstance(data, dict) or data.get("token") != standin.token:
            await self.close(conn, AUTHENTICATION_FAILED)
            return

        intents = data.get("intents")
        if not isinstance(intents, int) or intents < 0:
            await self.close(conn, INVALID_INTENTS)
            return
        if not self._intents_allowed(intents):
            await self.close(conn, DISALLOWED_INTENTS)
            return

        shard = data.get("shard")
        if shard is not None:
            valid = isinstance(shard, list) and len(shard) == 2 and 0 <= shard[0] < shard[1]
            if not valid:
                await self.close(conn, INVALID_SHARD)
                return

        if self.current is not None:
            self.current.invalidated = True
        session = GatewaySession(
            secrets.token_hex(16),
            intents,
            redact(data),
            (shard[0], shard[1]) if shard else None,
        )
        self.sessions[session.id] = session
        self.current = session
        standin.identify_payload = session.identify

        conn.kind = "identify"
        session.append("READY", standin._ready_payload(session))
        for guild in standin.guilds_for(session):
            session.append("GUILD_CREATE", standin._guild_create_payload(guild, session))
        self._attach(conn, session, delivered=0)
        log.info("bot identified (session %s, intents %s)", session.id[:8], intents)

    def _intents_allowed(self, intents: int) -> bool:
        standin = self._standin
        if intents & MESSAGE_CONTENT and not standin.message_content_allowed:
            return False
        if intents & GUILD_MEMBERS and not standin.members_intent_allowed:
            return False
        return not (intents & GUILD_PRESENCES and not standin.presences_intent_allowed)

    async def _resume(self, conn: GatewayConnection, data: Payload) -> None:
        if conn.session is not None:
            await self.close(conn, ALREADY_AUTHENTICATED)
            return
        if not isinstance(data, dict) or data.get("token") != self._standin.token:
            await self.close(conn, AUTHENTICATION_FAILED)
            return

        session = self.sessions.get(str(data.get("session_id")))
        seq = data.get("seq")
        if session is None or session.invalidated or not isinstance(seq, int) or seq > session.seq:
            conn.kind = "resume-rejected"
            await self._send(conn, {"op": INVALID_SESSION, "d": False})
            return

        old = session.connection
        if old is not None:
            await self.close(old, 4000)

        conn.kind = "resume"
        session.append("RESUMED", {"_trace": ["standin"]})
        self._attach(conn, session, delivered=seq)
        log.info("bot resumed session %s from seq %s", session.id[:8], seq)

    def _request_members(self, session: GatewaySession, data: Payload) -> None:
        standin = self._standin
        guild = standin.guilds.get(int(data.get("guild_id", 0)))
        if guild is None:
            return
        wanted = data.get("user_ids")
        members = list(guild.members.values())
        if wanted:
            ids = {int(x) for x in (wanted if isinstance(wanted, list) else [wanted])}
            members = [m for m in members if m.id in ids]
        chunk: Payload = {
            "guild_id": str(guild.id),
            "members": [m.to_payload() for m in members],
            "chunk_index": 0,
            "chunk_count": 1,
        }
        if data.get("nonce"):
            chunk["nonce"] = data["nonce"]
        session.append("GUILD_MEMBERS_CHUNK", chunk)

    # -- delivery -----------------------------------------------------------------------------

    def _attach(self, conn: GatewayConnection, session: GatewaySession, *, delivered: int) -> None:
        conn.session = session
        conn.delivered_seq = delivered
        session.connection = conn
        conn.writer = asyncio.create_task(self._write_events(conn, session))

    async def _write_events(self, conn: GatewayConnection, session: GatewaySession) -> None:
        while conn.open and session.connection is conn:
            session.new_event.clear()
            while conn.delivered_seq < session.seq and conn.open:
                frame = session.log[conn.delivered_seq]
                if not await self._send(conn, frame):
                    return
                conn.delivered_seq += 1
                self._standin._notify()
            await session.new_event.wait()

    async def _send(self, conn: GatewayConnection, frame: Payload) -> bool:
        ws = conn.ws
        if ws is None or ws.closed:
            return False
        async with conn.send_lock:
            try:
                await ws.send_str(json.dumps(frame))
            except (ConnectionError, RuntimeError):
                return False
        return True

    async def _detach(self, conn: GatewayConnection) -> None:
        session = conn.session
        if session is not None and session.connection is conn:
            session.connection = None
            session.new_event.set()
        writer = conn.writer
        if writer is not None and writer is not asyncio.current_task():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def close(self, conn: GatewayConnection, code: int, reason: str | None = None) -> None:
        """Close a connection from the server side with a gateway close code."""
        if conn.close_code is not None:
            return
        conn.close_code = code
        conn.closed_by = "server"
        text = reason or _CLOSE_REASONS.get(code, "")
        await self._detach(conn)
        if conn.ws is not None and not conn.ws.closed:
            await conn.ws.close(code=code, message=text.encode())
        self._standin._notify()

    async def send_op(self, conn: GatewayConnection, frame: Payload) -> None:
        await self._send(conn, frame)

    async def close_all(self) -> None:
        for conn in self.connections:
            if conn.open:
                await self.close(conn, 1001, "Stand-in shutting down.")
