"""REST API v10: routing, recording, errors, and the handlers the bot's requests reach."""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web

from . import interactions as ix
from .cdn import clean_filename
from .permissions import Permission as P
from .world import (
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    FLAG_SUPPRESS_EMBEDS,
    FLAG_SUPPRESS_NOTIFICATIONS,
    Channel,
    Message,
    MessageType,
    StoredAttachment,
    User,
)

if TYPE_CHECKING:
    from .server import DiscordStandIn

log = logging.getLogger(__name__)

Payload = dict[str, Any]
JSON_CONTENT_TYPE = "application/json"
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024
INTERACTION_TOKEN_LIFETIME = 15 * 60


# -- records and errors ------------------------------------------------------------------------


@dataclass(eq=False)
class RecordedFile:
    """A file part of a multipart request (``form_name`` is e.g. ``files[0]``)."""

    form_name: str
    filename: str
    content_type: str | None
    data: bytes = field(repr=False)

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(eq=False)
class RecordedRequest:
    """One HTTP request the bot made, REST or CDN. The bot token is never stored."""

    kind: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float
    route: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    json: Any = None
    files: list[RecordedFile] = field(default_factory=list)
    authorized: bool = False
    body_error: bool = False
    status: int | None = None
    response: Any = None

    def __repr__(self) -> str:
        return f"<RecordedRequest {self.method} {self.path} -> {self.status}>"

    @property
    def multipart(self) -> bool:
        return bool(self.files) or "multipart/" in self.headers.get("Content-Type", "")


class ApiError(Exception):
    """An error answer in Discord's JSON shape."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        *,
        errors: Payload | None = None,
        handle: ix.InteractionHandle | None = None,
        headers: dict[str, str] | None = None,
        body: Payload | None = None,
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors
        self.handle = handle
        self.headers = headers or {}
        self.body = body

    def payload(self) -> Payload:
        if self.body is not None:
            return self.body
        payload: Payload = {"message": self.message, "code": self.code}
        if self.errors is not None:
            payload["errors"] = self.errors
        return payload


def form_error(path: list[str], code: str, message: str) -> ApiError:
    """Discord's 50035 "Invalid Form Body" with the error placed at ``path``."""
    errors: Payload = {"_errors": [{"code": code, "message": message}]}
    for part in reversed(path):
        errors = {part: errors}
    return ApiError(400, 50035, "Invalid Form Body", errors=errors)


def unknown_message() -> ApiError:
    return ApiError(404, 10008, "Unknown Message")


def missing_permissions() -> ApiError:
    return ApiError(403, 50013, "Missing Permissions")


def missing_access() -> ApiError:
    return ApiError(403, 50001, "Missing Access")


@dataclass
class Reply:
    status: int = 200
    body: Any = None


@dataclass
class Injection:
    """A canned failure for the next ``remaining`` requests of a route."""

    route: str
    remaining: int
    error: ApiError


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    # Exactly "application/json": with a charset suffix discord.py reads the body as text.
    all_headers = {"Content-Type": JSON_CONTENT_TYPE, **(headers or {})}
    return web.Response(status=status, body=json.dumps(body).encode(), headers=all_headers)


# -- routing -----------------------------------------------------------------------------------

Handler = Callable[["DiscordStandIn", RecordedRequest], Awaitable[Reply]]


@dataclass
class Route:
    method: str
    template: str
    handler: Handler
    auth: bool
    pattern: re.Pattern[str] = field(init=False)

    def __post_init__(self) -> None:
        regex = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.template)
        self.pattern = re.compile(f"^{regex}$")

    @property
    def key(self) -> str:
        return f"{self.method} {self.template}"


ROUTES: list[Route] = []


def route(method: str, template: str, *, auth: bool = True) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        ROUTES.append(Route(method, template, handler, auth))
        return handler

    return register


def match_route(method: str, path: str) -> tuple[Route | None, dict[str, str], bool]:
    """The route for a request, its parameters, and whether the path exists for another method."""
    path_known = False
    for candidate in ROUTES:
        found = candidate.pattern.match(path)
        if found is None:
            continue
        if candidate.method == method:
            return candidate, found.groupdict(), True
        path_known = True
    return None, {}, path_known


async def read_body(request: web.Request, record: RecordedRequest) -> None:
    """Fill ``record.json`` and ``record.files`` from a JSON or multipart body."""
    content_type = request.headers.get("Content-Type", "")
    if content_type.startswith("multipart/"):
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                continue
            name = part.name or ""
            data = await part.read()
            if name == "payload_json":
                try:
                    record.json = json.loads(data)
                except ValueError:
                    record.body_error = True
            else:
                record.files.append(
                    RecordedFile(
                        name,
                        part.filename or name,
                        part.headers.get("Content-Type"),
                        bytes(data),
                    )
                )
        return

    raw = await request.read()
    if raw and "json" in content_type:
        try:
            record.json = json.loads(raw)
        except ValueError:
            record.body_error = True
    elif raw:
        record.body_error = True


async def handle_api(standin: DiscordStandIn, request: web.Request) -> web.Response:
    """Entry point for every ``/api/v10/...`` request."""
    path = "/" + request.match_info["tail"]
    headers = {k: v for k, v in request.headers.items() if k.lower() != "authorization"}
    auth = request.headers.get("Authorization")
    if auth is not None:
        headers["Authorization"] = "Bot <redacted>"

    record = RecordedRequest(
        "rest", request.method, path, dict(request.query), headers, time.monotonic()
    )
    record.authorized = auth == f"Bot {standin.token}"
    standin.requests.append(record)
    await read_body(request, record)

    route_, params, path_known = match_route(request.method, path)
    record.route = route_.key if route_ else None
    record.params = params
    response_headers: dict[str, str] = {}
    handle: ix.InteractionHandle | None = None
    try:
        if route_ is None:
            if path_known:
                raise ApiError(405, 0, "405: Method Not Allowed")
            raise ApiError(404, 0, "404: Not Found")
        if route_.auth and not record.authorized:
            raise ApiError(401, 0, "401: Unauthorized")
        standin._apply_injections(record)
        if record.body_error:
            raise ApiError(400, 50109, "The request body contains invalid JSON.")
        reply = await route_.handler(standin, record)
        status, body = reply.status, reply.body
    except ApiError as exc:
        status, body = exc.status, exc.payload()
        response_headers = exc.headers
        handle = exc.handle
        if handle is not None:
            handle.errors.append(
                ix.ApiErrorRecord(
                    exc.status, exc.code, exc.message, request.method, record.route or path
                )
            )
    except Exception as exc:
        # A stand-in bug, not Discord behaviour: 503 makes discord.py fail at once, no retries.
        log.exception("stand-in error handling %s %s", request.method, record.route)
        standin.internal_errors.append(exc)
        status, body = 503, {"message": f"stand-in internal error: {exc!r}", "code": 0}

    record.status = status
    record.response = body
    standin._notify()
    if status == 204:
        return web.Response(status=204, headers=response_headers)
    return json_response(status, body, response_headers)


# -- message bodies ------------------------------------------------------------------------


@dataclass
class MessageBody:
    """The message fields of a create/edit request (``None``: not given)."""

    content: str | None = None
    embeds: list[Payload] | None = None
    components: list[Payload] | None = None
    flags: int | None = None
    attachments: list[Payload] | None = None
    files: list[RecordedFile] = field(default_factory=list)
    message_reference: Payload | None = None
    nonce: str | None = None
    tts: bool = False
    sticker_ids: list[Any] | None = None
    poll: Payload | None = None

    @classmethod
    def parse(cls, data: Any, files: list[RecordedFile]) -> MessageBody:
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise form_error([], "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType")
        content = data.get("content")
        flags = data.get("flags")
        return cls(
            content=None if content is None else str(content),
            embeds=data.get("embeds"),
            components=data.get("components"),
            flags=None if flags is None else int(flags),
            attachments=data.get("attachments"),
            files=list(files),
            message_reference=data.get("message_reference"),
            nonce=data.get("nonce"),
            tts=bool(data.get("tts", False)),
            sticker_ids=data.get("sticker_ids"),
            poll=data.get("poll"),
        )

    def validate(self, *, creating: bool) -> None:
        if self.content is not None and len(self.content) > 2000:
            raise form_error(
                ["content"], "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length."
            )
        embeds = self.embeds or []
        if len(embeds) > 10:
            raise form_error(["embeds"], "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        total = 0
        for index, embed in enumerate(embeds):
            total += _check_embed(index, embed)
        if total > 6000:
            raise form_error(
                ["embeds"], "MAX_EMBED_SIZE_EXCEEDED", "Embed size exceeds maximum size of 6000"
            )
        if len(self.files) > 10:
            raise form_error(["files"], "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")

        if creating and not (
            self.content or embeds or self.files or self.components or self.sticker_ids or self.poll
        ):
            raise ApiError(400, 50006, "Cannot send an empty message")


def _check_embed(index: int, embed: Payload) -> int:
    limits = {"title": 256, "description": 4096}
    size = 0
    for key, limit in limits.items():
        value = embed.get(key) or ""
        if len(value) > limit:
            raise form_error(
                ["embeds", str(index), key],
                "BASE_TYPE_MAX_LENGTH",
                f"Must be {limit} or fewer in length.",
            )
        size += len(value)
    fields = embed.get("fields") or []
    if len(fields) > 25:
        raise form_error(
            ["embeds", str(index), "fields"],
            "BASE_TYPE_MAX_LENGTH",
            "Must be 25 or fewer in length.",
        )
    for item in fields:
        size += len(item.get("name") or "") + len(item.get("value") or "")
    size += len((embed.get("footer") or {}).get("text") or "")
    size += len((embed.get("author") or {}).get("name") or "")
    return size


_MENTION = re.compile(r"<@!?(\d+)>")


def parse_mentions(standin: DiscordStandIn, content: str) -> list[User]:
    found: list[User] = []
    for raw in _MENTION.findall(content):
        user = standin.users.get(int(raw))
        if user is not None and user not in found:
            found.append(user)
    return found


def store_uploads(
    standin: DiscordStandIn, body: MessageBody, channel: Channel, *, limit: int
) -> list[StoredAttachment]:
    """Turn uploaded files into CDN attachments, honouring the ``attachments`` metadata."""
    meta: dict[int, Payload] = {}
    for item in body.attachments or []:
        try:
            meta[int(item["id"])] = item
        except (KeyError, TypeError, ValueError):
            continue

    stored: list[StoredAttachment] = []
    for position, upload in enumerate(body.files):
        found = re.fullmatch(r"files\[(\d+)\]", upload.form_name)
        index = int(found.group(1)) if found else position
        info = meta.get(index, {})
        if upload.size > limit:
            raise ApiError(413, 40005, "Request entity too large")
        filename = clean_filename(str(info.get("filename") or upload.filename))
        stored.append(
            standin._store_bytes(
                filename,
                upload.data,
                channel_id=channel.id,
                description=info.get("description"),
            )
        )
    return stored


def upload_limit(channel: Channel) -> int:
    return channel.guild.filesize_limit if channel.guild is not None else DEFAULT_UPLOAD_LIMIT


def apply_edit(standin: DiscordStandIn, message: Message, body: MessageBody, *, limit: int) -> None:
    """Apply an edit request to a stored message."""
    body.validate(creating=False)
    if body.content is not None:
        message.history.append(message.content)
        message.content = body.content
        message.mentions = parse_mentions(standin, body.content)
    if body.embeds is not None:
        message.embeds = list(body.embeds)
    if body.components is not None:
        message.components = list(body.components)
    if body.flags is not None:
        suppress = body.flags & FLAG_SUPPRESS_EMBEDS
        message.flags = (message.flags & ~FLAG_SUPPRESS_EMBEDS) | suppress

    if body.attachments is not None:
        keep_ids = set()
        for item in body.attachments:
            try:
                keep_ids.add(int(item["id"]))
            except (KeyError, TypeError, ValueError):
                continue
        kept = [a for a in message.attachments if a.id in keep_ids]
        for removed in message.attachments:
            if removed not in kept:
                removed.available = False
        message.attachments = kept
    if body.files:
        message.attachments += store_uploads(standin, body, message.channel, limit=limit)

    if not (message.content or message.embeds or message.attachments or message.components):
        raise ApiError(400, 50006, "Cannot send an empty message")
    message.edited_at = standin.clock.time()


# -- users, application, gateway -------------------------------------------------------------


@route("GET", "/users/@me")
async def get_me(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    payload = standin.bot_user.to_payload()
    payload.update({"verified": True, "mfa_enabled": False, "locale": "en-US", "email": None})
    return Reply(body=payload)


@route("GET", "/users/{user_id}")
async def get_user(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    user = standin.users.get(_snowflake(req.params["user_id"]))
    if user is None:
        raise ApiError(404, 10013, "Unknown User")
    return Reply(body=user.to_payload())


@route("POST", "/users/@me/channels")
async def open_dm(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    data = req.json or {}
    user = standin.users.get(_snowflake(str(data.get("recipient_id", ""))))
    if user is None:
        raise form_error(["recipient_id"], "NUMBER_TYPE_COERCE", "Value is not a valid snowflake.")
    return Reply(body=standin.open_dm(user).to_payload())


@route("GET", "/oauth2/applications/@me")
async def get_application(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    return Reply(body=standin._application_payload())


@route("GET", "/applications/@me")
async def get_application_alias(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    return Reply(body=standin._application_payload())


@route("GET", "/gateway", auth=False)
async def get_gateway(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    return Reply(body={"url": standin.gateway_url})


@route("GET", "/gateway/bot")
async def get_gateway_bot(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    return Reply(
        body={
            "url": standin.gateway_url,
            "shards": 1,
            "session_start_limit": {
                "total": 1000,
                "remaining": 999,
                "reset_after": 86_400_000,
                "max_concurrency": 1,
            },
        }
    )


# -- application commands ----------------------------------------------------------------------


def _check_app(standin: DiscordStandIn, req: RecordedRequest) -> None:
    if req.params["application_id"] != str(standin.app_id):
        raise missing_access()


def _guild_param(standin: DiscordStandIn, req: RecordedRequest) -> int | None:
    raw = req.params.get("guild_id")
    if raw is None:
        return None
    guild_id = _snowflake(raw)
    if guild_id not in standin.guilds:
        raise missing_access()
    return guild_id


@route("GET", "/applications/{application_id}/commands")
@route("GET", "/applications/{application_id}/guilds/{guild_id}/commands")
async def list_commands(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    _check_app(standin, req)
    guild_id = _guild_param(standin, req)
    return Reply(body=list(standin._command_store(guild_id).values()))


@route("PUT", "/applications/{application_id}/commands")
@route("PUT", "/applications/{application_id}/guilds/{guild_id}/commands")
async def bulk_overwrite_commands(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    _check_app(standin, req)
    guild_id = _guild_param(standin, req)
    if not isinstance(req.json, list):
        raise form_error([], "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType")
    if len(req.json) > 110:
        raise form_error([], "BASE_TYPE_MAX_LENGTH", "Must be 110 or fewer in length.")

    seen: set[tuple[str, int]] = set()
    for index, command in enumerate(req.json):
        _validate_command(command, [str(index)])
        key = (command["name"], int(command.get("type", 1)))
        if key in seen:
            raise form_error(
                [str(index), "name"],
                "APPLICATION_COMMANDS_DUPLICATE_NAME",
                "Application command names must be unique",
            )
        seen.add(key)

    stored = standin._replace_commands(guild_id, req.json)
    return Reply(body=stored)


@route("POST", "/applications/{application_id}/commands")
@route("POST", "/applications/{application_id}/guilds/{guild_id}/commands")
async def upsert_command(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    _check_app(standin, req)
    guild_id = _guild_param(standin, req)
    _validate_command(req.json, [])
    stored = standin._upsert_command(guild_id, req.json)
    return Reply(status=201, body=stored)


@route("GET", "/applications/{application_id}/commands/{command_id}")
@route("GET", "/applications/{application_id}/guilds/{guild_id}/commands/{command_id}")
async def get_command(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    _check_app(standin, req)
    guild_id = _guild_param(standin, req)
    return Reply(body=_find_command(standin, guild_id, req.params["command_id"]))


@route("PATCH", "/applications/{application_id}/commands/{command_id}")
@route("PATCH", "/applications/{application_id}/guilds/{guild_id}/commands/{command_id}")
async def edit_command(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    _check_app(standin, req)
    guild_id = _guild_param(standin, req)
    current = _find_command(standin, guild_id, req.params["command_id"])
    merged = {**current, **(req.json or {})}
    _validate_command(merged, [])
    return Reply(body=standin._upsert_command(guild_id, merged))


@route("DELETE", "/applications/{application_id}/commands/{command_id}")
@route("DELETE", "/applications/{application_id}/guilds/{guild_id}/commands/{command_id}")
async def delete_command(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    _check_app(standin, req)
    guild_id = _guild_param(standin, req)
    current = _find_command(standin, guild_id, req.params["command_id"])
    standin._command_store(guild_id).pop(current["name"] + "\x00" + str(current["type"]))
    standin._notify()
    return Reply(status=204)


def _find_command(standin: DiscordStandIn, guild_id: int | None, raw_id: str) -> Payload:
    for command in standin._command_store(guild_id).values():
        if command["id"] == raw_id:
            return command
    raise ApiError(404, 10063, "Unknown application command")


_COMMAND_NAME = re.compile(r"^[-_\w]{1,32}$")


def _validate_command(command: Any, path: list[str]) -> None:
    if not isinstance(command, dict):
        raise form_error(path, "DICT_TYPE_CONVERT", "Only dictionaries may be used in a DictType")
    kind = int(command.get("type", 1))
    name = command.get("name")
    if not isinstance(name, str) or not name:
        raise form_error([*path, "name"], "BASE_TYPE_REQUIRED", "This field is required")
    if kind == 1:
        if not _COMMAND_NAME.match(name) or name != name.lower():
            raise form_error(
                [*path, "name"], "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid"
            )
        description = command.get("description") or ""
        if not 1 <= len(description) <= 100:
            raise form_error(
                [*path, "description"],
                "BASE_TYPE_BAD_LENGTH",
                "Must be between 1 and 100 in length.",
            )
    elif len(name) > 32:
        raise form_error(
            [*path, "name"], "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 32 in length."
        )
    elif command.get("description"):
        raise form_error(
            [*path, "description"],
            "APPLICATION_COMMAND_CONTEXT_MENU_DESCRIPTION",
            "Context menu commands cannot have description",
        )
    _validate_options(command.get("options") or [], [*path, "options"])


def _validate_options(options: list[Payload], path: list[str]) -> None:
    if len(options) > 25:
        raise form_error(path, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
    names: set[str] = set()
    optional_seen = False
    for index, option in enumerate(options):
        where = [*path, str(index)]
        name = option.get("name", "")
        if not _COMMAND_NAME.match(name) or name != name.lower():
            raise form_error(
                [*where, "name"], "APPLICATION_COMMAND_INVALID_NAME", "Command name is invalid"
            )
        if name in names:
            raise form_error(
                [*where, "name"],
                "APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS",
                "Option names must be unique",
            )
        names.add(name)
        description = option.get("description") or ""
        if not 1 <= len(description) <= 100:
            raise form_error(
                [*where, "description"],
                "BASE_TYPE_BAD_LENGTH",
                "Must be between 1 and 100 in length.",
            )
        if option.get("type") in (ix.SUB_COMMAND, ix.SUB_COMMAND_GROUP):
            _validate_options(option.get("options") or [], [*where, "options"])
            continue
        if option.get("required"):
            if optional_seen:
                raise form_error(
                    where,
                    "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                    "Required options must be placed before non-required options",
                )
        else:
            optional_seen = True


# -- channels and messages ---------------------------------------------------------------------


def _snowflake(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise form_error(["id"], "NUMBER_TYPE_COERCE", "Value is not a valid snowflake.") from None


def _channel(standin: DiscordStandIn, req: RecordedRequest) -> Channel:
    channel = standin.channels.get(_snowflake(req.params["channel_id"]))
    if channel is None:
        raise ApiError(404, 10003, "Unknown Channel")
    if not standin.bot_permissions_in(channel) & P.VIEW_CHANNEL:
        raise missing_access()
    return channel


def _message(standin: DiscordStandIn, channel: Channel, raw_id: str) -> Message:
    message = standin.messages.get(_snowflake(raw_id))
    if message is None or message.channel is not channel or message.deleted or message.ephemeral:
        raise unknown_message()
    return message


def _require(standin: DiscordStandIn, channel: Channel, permission: int) -> None:
    if standin.bot_permissions_in(channel) & permission != permission:
        raise missing_permissions()


@route("GET", "/channels/{channel_id}")
async def get_channel(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    return Reply(body=_channel(standin, req).to_payload())


@route("GET", "/channels/{channel_id}/messages")
async def get_history(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    channel = _channel(standin, req)
    if not standin.bot_permissions_in(channel) & P.READ_MESSAGE_HISTORY:
        return Reply(body=[])
    limit = max(1, min(100, int(req.query.get("limit", "50"))))
    messages = [m for m in standin.history(channel) if not m.deleted]
    if "before" in req.query:
        messages = [m for m in messages if m.id < int(req.query["before"])]
    if "after" in req.query:
        messages = [m for m in messages if m.id > int(req.query["after"])]
        messages = messages[:limit]
    messages = sorted(messages, key=lambda m: m.id, reverse=True)[:limit]
    return Reply(body=[standin.message_payload(m, rest=True) for m in messages])


@route("GET", "/channels/{channel_id}/messages/{message_id}")
async def get_message(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    channel = _channel(standin, req)
    if not standin.bot_permissions_in(channel) & P.READ_MESSAGE_HISTORY:
        raise missing_access()
    message = _message(standin, channel, req.params["message_id"])
    return Reply(body=standin.message_payload(message, rest=True))


@route("POST", "/channels/{channel_id}/messages")
async def create_message(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    channel = _channel(standin, req)
    if not channel.accepts_messages:
        raise ApiError(400, 50008, "Cannot send messages in a non-text channel")
    if channel.is_dm:
        assert channel.recipient is not None
        if not channel.recipient.accepts_dms:
            raise ApiError(403, 50007, "Cannot send messages to this user")
    else:
        needed = P.SEND_MESSAGES_IN_THREADS if channel.is_thread else P.SEND_MESSAGES
        _require(standin, channel, needed)

    body = MessageBody.parse(req.json, req.files)
    if body.files and not channel.is_dm:
        _require(standin, channel, P.ATTACH_FILES)
    body.validate(creating=True)
    reference = _reference(standin, channel, body.message_reference)
    if reference is not None and not channel.is_dm:
        _require(standin, channel, P.READ_MESSAGE_HISTORY)

    attachments = store_uploads(standin, body, channel, limit=upload_limit(channel))
    message = standin._new_message(
        channel,
        standin.bot_user,
        content=body.content or "",
        embeds=list(body.embeds or []),
        components=list(body.components or []),
        attachments=attachments,
        flags=(body.flags or 0) & (FLAG_SUPPRESS_EMBEDS | FLAG_SUPPRESS_NOTIFICATIONS),
        reference=reference,
        tts=body.tts,
        nonce=body.nonce,
    )
    standin._publish(message)
    return Reply(body=standin.message_payload(message, rest=True))


def _reference(standin: DiscordStandIn, channel: Channel, raw: Payload | None) -> Message | None:
    if not raw:
        return None
    message_id = raw.get("message_id")
    target = standin.messages.get(int(message_id)) if message_id else None
    if target is None or target.deleted or target.channel is not channel:
        if raw.get("fail_if_not_exists", True):
            raise form_error(
                ["message_reference"], "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message"
            )
        return None
    return target


@route("PATCH", "/channels/{channel_id}/messages/{message_id}")
async def edit_message(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    channel = _channel(standin, req)
    message = _message(standin, channel, req.params["message_id"])
    body = MessageBody.parse(req.json, req.files)
    if message.author is not standin.bot_user:
        only_flags = body.content is None and body.embeds is None and not body.files
        if not only_flags:
            raise ApiError(403, 50005, "Cannot edit a message authored by another user")
        _require(standin, channel, P.MANAGE_MESSAGES)

    apply_edit(standin, message, body, limit=upload_limit(channel))
    standin._publish_update(message)
    return Reply(body=standin.message_payload(message, rest=True))


@route("DELETE", "/channels/{channel_id}/messages/{message_id}")
async def delete_message(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    channel = _channel(standin, req)
    message = _message(standin, channel, req.params["message_id"])
    if message.author is not standin.bot_user:
        if channel.is_dm:
            raise ApiError(403, 50003, "Cannot execute action on a DM channel")
        _require(standin, channel, P.MANAGE_MESSAGES)
    standin._delete(message)
    return Reply(status=204)


@route("POST", "/channels/{channel_id}/messages/bulk-delete")
async def bulk_delete(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    channel = _channel(standin, req)
    if channel.is_dm:
        raise ApiError(403, 50003, "Cannot execute action on a DM channel")
    _require(standin, channel, P.MANAGE_MESSAGES)
    ids = (req.json or {}).get("messages") or []
    if not 2 <= len(ids) <= 100:
        raise form_error(
            ["messages"], "BASE_TYPE_BAD_LENGTH", "Must be between 2 and 100 in length."
        )

    found = [_message(standin, channel, str(raw)) for raw in ids]
    two_weeks = 14 * 24 * 3600
    if any(standin.clock.time() - m.created_at > two_weeks for m in found):
        raise ApiError(400, 50034, "You can only bulk delete messages that are under 14 days old.")
    standin._delete_many(channel, found)
    return Reply(status=204)


@route("POST", "/channels/{channel_id}/typing")
async def typing(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    channel = _channel(standin, req)
    if not channel.is_dm:
        _require(
            standin, channel, P.SEND_MESSAGES_IN_THREADS if channel.is_thread else P.SEND_MESSAGES
        )
    return Reply(status=204)


@route("PUT", "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me")
async def add_reaction(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    channel = _channel(standin, req)
    message = _message(standin, channel, req.params["message_id"])
    if not channel.is_dm:
        _require(standin, channel, P.ADD_REACTIONS | P.READ_MESSAGE_HISTORY)
    emoji = req.params["emoji"]
    if emoji not in message.reactions:
        message.reactions.append(emoji)
    standin._notify()
    return Reply(status=204)


@route("DELETE", "/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me")
async def remove_reaction(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    channel = _channel(standin, req)
    message = _message(standin, channel, req.params["message_id"])
    emoji = req.params["emoji"]
    if emoji in message.reactions:
        message.reactions.remove(emoji)
    standin._notify()
    return Reply(status=204)


# -- guilds ------------------------------------------------------------------------------------


def _guild(standin: DiscordStandIn, req: RecordedRequest) -> Any:
    guild = standin.guilds.get(_snowflake(req.params["guild_id"]))
    if guild is None:
        raise ApiError(404, 10004, "Unknown Guild")
    return guild


@route("GET", "/guilds/{guild_id}")
async def get_guild(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    payload = _guild(standin, req).to_payload()
    for key in ("members", "channels", "threads", "presences", "voice_states", "joined_at"):
        payload.pop(key, None)
    return Reply(body=payload)


@route("GET", "/guilds/{guild_id}/channels")
async def get_guild_channels(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    guild = _guild(standin, req)
    return Reply(body=[channel.to_payload() for channel in guild.channels])


@route("GET", "/guilds/{guild_id}/roles")
async def get_roles(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    guild = _guild(standin, req)
    return Reply(body=[role.to_payload() for role in guild.roles])


@route("GET", "/guilds/{guild_id}/members/{user_id}")
async def get_member(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    guild = _guild(standin, req)
    member = guild.members.get(_snowflake(req.params["user_id"]))
    if member is None:
        raise ApiError(404, 10007, "Unknown Member")
    return Reply(body=member.to_payload())


# -- interactions ------------------------------------------------------------------------------

_ALLOWED_CALLBACKS = {
    ix.APPLICATION_COMMAND: {4, 5, 9},
    ix.MESSAGE_COMPONENT: {4, 5, 6, 7, 9},
    ix.AUTOCOMPLETE: {8},
    ix.MODAL_SUBMIT: {4, 5, 6, 7},
}
_NEEDS_MESSAGE = {ix.DEFERRED_UPDATE_MESSAGE, ix.UPDATE_MESSAGE}


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true")


@route("POST", "/interactions/{interaction_id}/{interaction_token}/callback", auth=False)
async def interaction_callback(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    handle = standin._interactions_by_id.get(_snowflake(req.params["interaction_id"]))
    if handle is None or handle.token != req.params["interaction_token"]:
        raise ApiError(404, 10062, "Unknown interaction")
    if handle.acknowledged:
        raise ApiError(400, 40060, "Interaction has already been acknowledged.", handle=handle)
    if handle.expired:
        raise ApiError(404, 10062, "Unknown interaction", handle=handle)

    body = req.json if isinstance(req.json, dict) else {}
    raw_kind = body.get("type")
    kind = raw_kind if isinstance(raw_kind, int) else -1
    data = body.get("data") or {}
    allowed = kind in _ALLOWED_CALLBACKS[handle.type]
    if kind in _NEEDS_MESSAGE and handle.target_message is None:
        allowed = False
    if not allowed:
        error = form_error(
            ["type"], "INTERACTION_RESPONSE_TYPE_INVALID", "Invalid interaction response type"
        )
        error.handle = handle
        raise error

    try:
        _apply_callback(standin, handle, kind, data, req.files)
    except ApiError as exc:
        exc.handle = handle
        raise

    handle.callback_type = kind
    handle.callback_data = data
    log.debug("interaction %s answered with callback type %s", handle.id, kind)
    standin._notify()
    if not _truthy(req.query.get("with_response")):
        return Reply(status=204)
    return Reply(body=_callback_response(standin, handle, kind))


def _apply_callback(
    standin: DiscordStandIn,
    handle: ix.InteractionHandle,
    kind: int,
    data: Payload,
    files: list[RecordedFile],
) -> None:
    limit = int(handle.payload["attachment_size_limit"])
    if kind == ix.CHANNEL_MESSAGE_WITH_SOURCE:
        body = MessageBody.parse(data, files)
        body.validate(creating=True)
        handle.original = _interaction_message(standin, handle, body, original=True, limit=limit)
    elif kind == ix.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE:
        flags = FLAG_LOADING | (int(data.get("flags") or 0) & FLAG_EPHEMERAL)
        handle.original = _interaction_message(
            standin, handle, MessageBody(flags=flags), original=True, limit=limit
        )
    elif kind in (ix.DEFERRED_UPDATE_MESSAGE, ix.UPDATE_MESSAGE):
        target = handle.target_message
        assert target is not None
        if kind == ix.UPDATE_MESSAGE:
            apply_edit(standin, target, MessageBody.parse(data, files), limit=limit)
            standin._publish_update(target)
        handle.original = target
    elif kind == ix.APPLICATION_COMMAND_AUTOCOMPLETE_RESULT:
        choices = data.get("choices")
        if not isinstance(choices, list) or len(choices) > 25:
            raise form_error(
                ["data", "choices"], "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
            )
        for index, choice in enumerate(choices):
            if not 1 <= len(str(choice.get("name", ""))) <= 100:
                raise form_error(
                    ["data", "choices", str(index), "name"],
                    "BASE_TYPE_BAD_LENGTH",
                    "Must be between 1 and 100 in length.",
                )
        handle.choices = choices
    elif kind == ix.MODAL:
        for key in ("custom_id", "title", "components"):
            if not data.get(key):
                raise form_error(["data", key], "BASE_TYPE_REQUIRED", "This field is required")
        handle.modal = data


def _interaction_message(
    standin: DiscordStandIn,
    handle: ix.InteractionHandle,
    body: MessageBody,
    *,
    original: bool,
    limit: int,
) -> Message:
    flags = (body.flags or 0) & (
        FLAG_EPHEMERAL | FLAG_LOADING | FLAG_SUPPRESS_EMBEDS | FLAG_SUPPRESS_NOTIFICATIONS
    )
    kind = MessageType.DEFAULT
    if original and handle.type == ix.APPLICATION_COMMAND:
        context_menu = handle.payload["data"].get("type", 1) in (2, 3)
        kind = MessageType.CONTEXT_MENU_COMMAND if context_menu else MessageType.CHAT_INPUT_COMMAND
    attachments = store_uploads(standin, body, handle.channel, limit=limit)
    message = standin._new_message(
        handle.channel,
        standin.bot_user,
        content=body.content or "",
        embeds=list(body.embeds or []),
        components=list(body.components or []),
        attachments=attachments,
        flags=flags,
        type=kind,
        interaction=handle,
        webhook_id=standin.app_id,
        tts=body.tts,
    )
    standin._publish(message)
    return message


def _callback_response(standin: DiscordStandIn, handle: ix.InteractionHandle, kind: int) -> Payload:
    interaction: Payload = {"id": str(handle.id), "type": handle.type}
    resource: Payload = {"type": kind}
    message = handle.original
    if message is not None and kind in (4, 5, 7):
        interaction["response_message_id"] = str(message.id)
        interaction["response_message_loading"] = message.thinking
        interaction["response_message_ephemeral"] = message.ephemeral
        resource["message"] = standin.message_payload(message, rest=True)
    return {"interaction": interaction, "resource": resource}


def _webhook_interaction(standin: DiscordStandIn, req: RecordedRequest) -> ix.InteractionHandle:
    handle = standin._interactions_by_token.get(req.params["interaction_token"])
    if handle is None or req.params["application_id"] != str(standin.app_id):
        raise ApiError(404, 10015, "Unknown Webhook")
    age = standin.clock.monotonic() - handle.dispatched_at
    if age > INTERACTION_TOKEN_LIFETIME:
        raise ApiError(401, 50027, "Invalid Webhook Token", handle=handle)
    return handle


@route("POST", "/webhooks/{application_id}/{interaction_token}", auth=False)
async def execute_followup(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    handle = _webhook_interaction(standin, req)
    if not handle.acknowledged:
        raise ApiError(404, 10015, "Unknown Webhook", handle=handle)

    body = MessageBody.parse(req.json, req.files)
    try:
        body.validate(creating=True)
        message = _followup(standin, handle, body)
    except ApiError as exc:
        exc.handle = handle
        raise

    handle.followups.append(message)
    standin._notify()
    if not _truthy(req.query.get("wait")):
        return Reply(status=204)
    return Reply(body=standin.message_payload(message, rest=True))


def _followup(standin: DiscordStandIn, handle: ix.InteractionHandle, body: MessageBody) -> Message:
    limit = int(handle.payload["attachment_size_limit"])
    original = handle.original
    replaces_placeholder = (
        handle.callback_type == ix.DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE
        and original is not None
        and original.thinking
        and not original.deleted
    )
    if not replaces_placeholder:
        return _interaction_message(standin, handle, body, original=False, limit=limit)

    # Discord: the first followup after a deferral edits the "thinking" message, which keeps
    # the deferral's visibility whatever flags the followup carries.
    assert original is not None
    requested = (body.flags or 0) & ~(FLAG_EPHEMERAL | FLAG_LOADING)
    body.flags = None
    body.attachments = body.attachments if body.files else None
    apply_edit(standin, original, body, limit=limit)
    original.flags = (original.flags & FLAG_EPHEMERAL) | requested
    standin._publish_update(original)
    return original


def _webhook_message(handle: ix.InteractionHandle, raw_id: str) -> Message:
    if raw_id == "@original":
        message = handle.original
    else:
        try:
            message = handle.find_message(int(raw_id))
        except ValueError:
            message = None
    if message is None or message.deleted:
        error = unknown_message()
        error.handle = handle
        raise error
    return message


@route("GET", "/webhooks/{application_id}/{interaction_token}/messages/{message_id}", auth=False)
async def get_webhook_message(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    handle = _webhook_interaction(standin, req)
    message = _webhook_message(handle, req.params["message_id"])
    return Reply(body=standin.message_payload(message, rest=True))


@route("PATCH", "/webhooks/{application_id}/{interaction_token}/messages/{message_id}", auth=False)
async def edit_webhook_message(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    handle = _webhook_interaction(standin, req)
    message = _webhook_message(handle, req.params["message_id"])
    body = MessageBody.parse(req.json, req.files)
    try:
        apply_edit(standin, message, body, limit=int(handle.payload["attachment_size_limit"]))
    except ApiError as exc:
        exc.handle = handle
        raise
    message.flags &= ~FLAG_LOADING
    standin._publish_update(message)
    return Reply(body=standin.message_payload(message, rest=True))


@route("DELETE", "/webhooks/{application_id}/{interaction_token}/messages/{message_id}", auth=False)
async def delete_webhook_message(standin: DiscordStandIn, req: RecordedRequest) -> Reply:
    handle = _webhook_interaction(standin, req)
    message = _webhook_message(handle, req.params["message_id"])
    standin._delete(message)
    return Reply(status=204)
