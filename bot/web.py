"""The HTTP upload endpoint: other services on the server push a file and get an Imgur link.

    POST   /api/upload        multipart field ``file`` (``title`` before it), or JSON ``{"url"}``
    DELETE /api/upload/{id}   take down an upload made through this endpoint
    GET    /healthz           liveness, and whether the ledger and Imgur answer

Every request needs ``Authorization: Bearer <HTTP_TOKEN>``. Answers are JSON; a failure is
``{"error": "<one sentence>"}`` with a status that says what kind. ``openapi.json`` at the
repository root describes all of it. Uploads go through the same pipeline as every other door,
so one Imgur client, one quota and one ledger serve the Discord bot and this endpoint alike.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import signal
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from typing import Any, Final, TypeVar

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.log import server_logger
from aiohttp.web_protocol import RequestPayloadError

from bot.errors import NotFound, NotPermitted, RehostError
from bot.imgur import (
    ImgurAuthError,
    ImgurError,
    ImgurRateLimited,
    ImgurRejected,
    ImgurUnavailable,
)
from bot.ledger import LedgerError, Origin, Rehost
from bot.media import MediaError, MediaTooLarge, TruncatedMedia, UnsupportedMedia
from bot.scheduler import QueueFull
from bot.services import Services, open_services
from bot.settings import Settings, SettingsError
from bot.sources import SourceError, StreamSource, clean_title

log = logging.getLogger(__name__)

T = TypeVar("T")

DOOR: Final = "http"
READ_CHUNK: Final = 256 * 1024
# Bounds what is read whole: a JSON body, a title field. The file part streams past it.
SMALL_BODY_LIMIT: Final = 64 * 1024
# Room for the multipart boundaries, part headers and a title around the file itself.
FORM_OVERHEAD: Final = 128 * 1024
QUEUE_RETRY_AFTER: Final = 30
UNKNOWN_RESET_RETRY_AFTER: Final = 3600
HEALTH_TTL: Final = 60.0
HEALTH_TIMEOUT: Final = 10.0
SHUTDOWN_TIMEOUT: Final = 30.0
# A file part that sends nothing for this long is given up: while it streams it holds one of
# the scheduler's turns to fetch, and a few stalled callers would hold them all, for Discord too.
BODY_IDLE_TIMEOUT: Final = 60.0
USAGE: Final = 2


class BadRequest(RehostError):
    """The request itself is malformed (missing field, bad JSON, wrong order of fields)."""


class UnsupportedRequest(RehostError):
    """The request body is neither a multipart form nor JSON."""


class HealthCheck:
    """Whether the ledger answers (every time) and Imgur does (at most once per ``ttl``).

    The Imgur check asks for the credit count, which spends no upload quota; caching it keeps
    a busy liveness probe from turning into a stream of calls to Imgur.
    """

    def __init__(
        self,
        services: Services,
        *,
        ttl: float = HEALTH_TTL,
        timeout: float = HEALTH_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._services = services
        self._ttl = ttl
        self._timeout = timeout
        self._clock = clock
        self._lock = asyncio.Lock()
        self._imgur: tuple[float, bool] | None = None

    async def database_ok(self) -> bool:
        try:
            await self._services.ledger.count_uploads_since(time.time())
        except LedgerError:
            return False
        return True

    async def imgur_ok(self) -> bool:
        async with self._lock:
            now = self._clock()
            if self._imgur is not None and now - self._imgur[0] < self._ttl:
                return self._imgur[1]

            try:
                async with asyncio.timeout(self._timeout):
                    await self._services.imgur.credits()
            except (ImgurError, TimeoutError) as exc:
                log.warning("health check: Imgur does not answer (%s)", type(exc).__name__)
                ok = False
            else:
                ok = True
            self._imgur = (self._clock(), ok)
            return ok


class ProtocolLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server log, with a request it could not parse told in one line.

    aiohttp answers a request it cannot parse (a header over 8 KB, a broken chunk, an unknown
    Content-Encoding) itself, before any middleware runs, and logs the parse error with its
    traceback at ERROR: any stranger could fill the log with them. Other failures keep theirs.
    """

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError | RequestPayloadError):
            # The message quotes the offending bytes, which may be anything: name the kind only.
            self.logger.info("refused a malformed HTTP request (%s)", type(exc_info).__name__)
            return
        self.logger.error(msg, *args, exc_info=exc_info, **kwargs)


SERVICES_KEY: Final = web.AppKey("services", Services)
TOKEN_KEY: Final = web.AppKey("token", bytes)
HEALTH_KEY: Final = web.AppKey("health", HealthCheck)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(services: Services, *, health_ttl: float = HEALTH_TTL) -> web.Application:
    """The endpoint's application, serving ``services``; needs ``HTTP_TOKEN`` to be set.

    Raises:
        SettingsError: no token is configured (an endpoint without one would be open to all).
    """
    token = services.settings.http_token
    if not token:
        raise SettingsError("HTTP_TOKEN is not set: the HTTP endpoint never runs without one.")

    app = web.Application(
        middlewares=[_answer_errors, _authenticate], client_max_size=SMALL_BODY_LIMIT
    )
    app[SERVICES_KEY] = services
    app[TOKEN_KEY] = token.encode()
    app[HEALTH_KEY] = HealthCheck(services, ttl=health_ttl)
    app.router.add_post("/api/upload", _post_upload)
    app.router.add_delete("/api/upload/{id}", _delete_upload)
    app.router.add_get("/healthz", _health)
    return app


def web_enabled(settings: Settings) -> bool:
    """Whether the settings ask for the HTTP endpoint (``HTTP_PORT`` and ``HTTP_TOKEN``)."""
    return settings.http_port is not None and bool(settings.http_token)


async def start_web(services: Services) -> web.AppRunner | None:
    """Start listening when the settings ask for it; None when they do not.

    The caller stops it with ``await runner.cleanup()`` before closing the services.

    Raises:
        SettingsError: the address cannot be listened on (in use, or not this machine's).
    """
    settings = services.settings
    if not web_enabled(settings):
        return None
    assert settings.http_port is not None

    runner = web.AppRunner(
        create_app(services),
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        logger=ProtocolLog(server_logger),
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.http_host, settings.http_port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise SettingsError(
            f"The HTTP endpoint cannot listen on {settings.http_host}:{settings.http_port} "
            f"({exc.strerror or exc}); check HTTP_HOST and HTTP_PORT."
        ) from exc

    if len(settings.http_token or "") < 16:
        log.warning("HTTP_TOKEN is short; a long random value keeps the endpoint safe")
    for host, port, *_ in runner.addresses:
        log.info("HTTP upload endpoint listening on %s port %d", host, port)
    return runner


async def serve(settings: Settings) -> int:
    """``python -m bot serve``: the endpoint alone, until SIGINT or SIGTERM."""
    if not web_enabled(settings):
        log.error("set HTTP_PORT and HTTP_TOKEN to serve the HTTP endpoint (see .env.example)")
        return USAGE

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)

    try:
        async with open_services(settings) as services:
            runner = await start_web(services)
            assert runner is not None
            try:
                await stopping.wait()
                log.info("stopping the HTTP endpoint")
            finally:
                await runner.cleanup()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    return 0


# --- middlewares -----------------------------------------------------------------------------


@web.middleware
async def _authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every request carries the bearer token; compared in constant time."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    expected = request.app[TOKEN_KEY]
    # aiohttp keeps header bytes that are not UTF-8 as surrogates; they must not raise here.
    offered = given.strip().encode("utf-8", "surrogateescape")
    if scheme.lower() != "bearer" or not hmac.compare_digest(offered, expected):
        log.info("refused %s %s: no valid token", request.method, request.path)
        return _error(
            401,
            "Send the token as 'Authorization: Bearer <HTTP_TOKEN>'.",
            {"WWW-Authenticate": 'Bearer realm="imgur-rehost"'},
        )
    return await handler(request)


@web.middleware
async def _answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into ``{"error": ...}`` with the status that says what kind."""
    try:
        return await handler(request)
    except RehostError as exc:
        status = status_for(exc)
        headers = _retry_after(exc)
        if status >= 500:
            log.warning(
                "%s %s failed with %d: %s", request.method, request.path, status, type(exc).__name__
            )
        else:
            log.info(
                "%s %s refused with %d: %s",
                request.method,
                request.path,
                status,
                type(exc).__name__,
            )
        return _error(status, exc.user_message, headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return _error(exc.status, _http_sentence(exc), headers)
    except Exception:
        log.exception("%s %s failed unexpectedly", request.method, request.path)
        return _error(500, "Something went wrong on this side; the error is logged.")


def status_for(error: RehostError) -> int:
    """The HTTP status that tells a caller what kind of failure ``error`` is.

    Imgur refusing a file is a 400 rather than a 502: the refusal is about the file, the same
    file will be refused again, and a 5xx would invite callers to retry it. A refusal for
    size (Imgur's limit can be lower than ours) is a 413. A client id Imgur no longer accepts
    is a 502: Imgur answered, but not in a way this side can use until an operator acts;
    Imgur being down or over capacity is a 503, worth a retry later.
    """
    if isinstance(error, MediaTooLarge):
        return 413
    if isinstance(error, UnsupportedMedia):
        return 415
    if isinstance(error, MediaError | SourceError | BadRequest):
        return 400
    if isinstance(error, UnsupportedRequest):
        return 415
    if isinstance(error, ImgurRateLimited):
        return 429
    if isinstance(error, ImgurRejected):
        return 413 if "size limit" in error.reason.lower() else 400
    if isinstance(error, ImgurUnavailable | QueueFull):
        return 503
    if isinstance(error, ImgurAuthError | ImgurError):
        return 502
    if isinstance(error, NotFound):
        return 404
    if isinstance(error, NotPermitted):
        return 403
    if isinstance(error, LedgerError):
        return 503
    return 500


def _retry_after(error: RehostError) -> dict[str, str] | None:
    if isinstance(error, ImgurRateLimited):
        if error.reset_at is None:
            return {"Retry-After": str(UNKNOWN_RESET_RETRY_AFTER)}
        return {"Retry-After": str(max(1, math.ceil(error.reset_at - time.time())))}
    if isinstance(error, QueueFull):
        return {"Retry-After": str(QUEUE_RETRY_AFTER)}
    return None


def _http_sentence(exc: web.HTTPException) -> str:
    if exc.status == 404:
        return "There is nothing at this address."
    if exc.status == 405:
        return f"{exc.headers.get('Allow', 'Another method')} is what this address accepts."
    if exc.status == 413:
        return "The request body is too large."
    return f"{exc.reason}."


def _error(status: int, sentence: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": sentence}, status=status, headers=headers)


# --- handlers --------------------------------------------------------------------------------


async def _post_upload(request: web.Request) -> web.Response:
    """``POST /api/upload``: a file as multipart, or a URL as JSON."""
    services = request.app[SERVICES_KEY]
    resume_at = services.pipeline.scheduler.resume_at
    if resume_at is not None:
        # The queue would hold this upload until the quota refills, perhaps for an hour: a
        # caller is better told when to come back, before it sends the body.
        raise ImgurRateLimited(resume_at)

    if request.content_type == "multipart/form-data":
        rehost = await _upload_form(request, services)
    elif request.content_type == "application/json":
        rehost = await _upload_url(request, services)
    else:
        raise UnsupportedRequest(
            "Send a file as multipart/form-data (field 'file') or a link as JSON "
            '({"url": "..."}).'
        )

    upload = rehost.upload
    log.debug("HTTP upload answered with %s (reused: %s)", upload.imgur_id, rehost.reused)
    # The deletehash goes only to the door that made the upload: the same bytes posted first
    # on Discord belong to that member, and this caller must not be able to delete them.
    earlier = await services.ledger.rehosts_of(upload.id, live_only=False)
    first = min(earlier, key=lambda r: r.created_at, default=rehost)
    deletehash = upload.deletehash if first.origin.door == "http" else None
    return web.json_response(
        {"imageUrl": upload.link, "id": upload.imgur_id, "deletehash": deletehash}
    )


async def _upload_form(request: web.Request, services: Services) -> Rehost:
    """Stream the ``file`` part into the pipeline; a ``title`` part must come before it."""
    ceiling = services.pipeline.limits.ceiling
    if request.content_length is not None and request.content_length > ceiling + FORM_OVERHEAD:
        # Refused before a byte is read; the pipeline enforces the limit of the actual kind.
        raise MediaTooLarge(f"Files may be at most {ceiling / 1024 / 1024:.3g} MB.")

    try:
        reader = await request.multipart()
    except ValueError as exc:
        raise BadRequest("The multipart body is malformed (no boundary?).") from exc

    title: str | None = None
    while True:
        part = await _next_part(reader)
        if part is None:
            raise BadRequest("The form has no 'file' field.")
        if part.name == "title":
            title = await _read_title(part)
        elif part.name == "file":
            break
        else:
            await _skip(part)  # fields this endpoint does not know are skipped

    stream = _file_chunks(reader, part)
    source = StreamSource(stream, filename=part.filename or "upload", declared_size=None)
    origin = Origin(door=DOOR, title=title, filename=part.filename)
    try:
        return await services.pipeline.rehost(source, origin)
    finally:
        await stream.aclose()


async def _next_part(reader: MultipartReader) -> BodyPartReader | None:
    """The next plain part (nested multiparts are skipped), or None at the end."""
    while True:
        try:
            part = await reader.next()
        except (ValueError, HttpProcessingError, RequestPayloadError) as exc:
            raise BadRequest("The multipart body is malformed.") from exc
        if part is None or isinstance(part, BodyPartReader):
            return part
        try:
            await part.release()
        except (ValueError, HttpProcessingError, RequestPayloadError) as exc:
            raise BadRequest("The multipart body is malformed.") from exc


async def _skip(part: BodyPartReader) -> None:
    try:
        await part.release()
    except (ValueError, HttpProcessingError, RequestPayloadError) as exc:
        raise BadRequest("The multipart body is malformed.") from exc


async def _read_title(part: BodyPartReader) -> str | None:
    try:
        raw = await part.read()
    except (ValueError, HttpProcessingError, RequestPayloadError) as exc:
        raise BadRequest("The multipart body is malformed.") from exc
    try:
        text = raw.decode(part.get_charset("utf-8"))
    except (ValueError, LookupError) as exc:
        raise BadRequest("The title is not readable text.") from exc
    return clean_title(text)


async def _file_chunks(
    reader: MultipartReader, part: BodyPartReader
) -> AsyncGenerator[bytes, None]:
    """The file part's bytes as they arrive; then make sure nothing meant for it follows."""
    while True:
        try:
            chunk = await _unless_stalled(part.read_chunk(READ_CHUNK))
        except (ValueError, HttpProcessingError, RequestPayloadError, ConnectionError) as exc:
            raise TruncatedMedia("The upload was cut short or malformed; try again.") from exc
        if not chunk:
            break
        yield chunk

    # The upload is under way once the file has arrived: a title after it would be lost.
    while (extra := await _unless_stalled(_next_part(reader))) is not None:
        if extra.name == "title":
            raise BadRequest("Send the 'title' field before the 'file' field.")
        if extra.name == "file":
            raise BadRequest("Send one file per request.")
        await _skip(extra)


async def _unless_stalled(step: Awaitable[T]) -> T:
    """``step``'s result, unless the caller sends nothing for ``BODY_IDLE_TIMEOUT`` seconds."""
    try:
        async with asyncio.timeout(BODY_IDLE_TIMEOUT):
            return await step
    except TimeoutError as exc:
        raise TruncatedMedia(
            f"The upload stalled: nothing arrived for {BODY_IDLE_TIMEOUT:g} seconds; try again."
        ) from exc


async def _upload_url(request: web.Request, services: Services) -> Rehost:
    """Fetch ``{"url": ...}`` under the same address rules as every other door."""
    try:
        body: Any = await request.json()
    except RequestPayloadError as exc:
        raise BadRequest("The body could not be decoded; check its Content-Encoding.") from exc
    except LookupError as exc:  # a charset Python does not know
        raise BadRequest("The body's charset is unknown; send JSON as UTF-8.") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("The body is not valid JSON.") from exc

    url = body.get("url") if isinstance(body, dict) else None
    if not isinstance(url, str) or not url.strip():
        raise BadRequest('Send the link as {"url": "https://..."}.')
    title = body.get("title")
    if title is not None and not isinstance(title, str):
        raise BadRequest("The title must be text.")

    source = services.pipeline.url_source(url.strip())
    origin = Origin(door=DOOR, title=clean_title(title), filename=source.filename)
    return await services.pipeline.rehost(source, origin)


async def _delete_upload(request: web.Request) -> web.Response:
    """``DELETE /api/upload/{id}``: only uploads this endpoint made; others are not found.

    An upload that a Discord message or the command line also uses stays on Imgur: this
    endpoint's records of it are withdrawn, and the answer says ``"deleted": false``.
    """
    services = request.app[SERVICES_KEY]
    imgur_id = request.match_info["id"]
    missing = NotFound("No upload with that id was made through this endpoint.")
    if not imgur_id.isascii() or not imgur_id.isalnum():
        raise missing

    upload = await services.ledger.get_upload(imgur_id)
    if upload is None or upload.state != "done":
        raise missing
    rehosts = await services.ledger.rehosts_of(upload.id, live_only=False)
    mine = [r for r in rehosts if r.origin.door == DOOR]
    if not mine:
        raise missing

    live = [r for r in mine if r.deleted_at is None]
    reason = "deleted through the HTTP endpoint"
    if not live:
        if any(r.deleted_at is None for r in rehosts):
            raise missing  # withdrawn here before; another door's rehost keeps it on Imgur
        # On Imgur yet used by nothing: a take-down that stopped half way. Finish it.
        await services.pipeline.delete_upload(upload, by=None, reason=reason)
        return web.json_response({"id": imgur_id, "deleted": True})

    # release() decides under the lock of the upload's bytes whether another rehost still
    # uses it, so a Discord post of the same bytes arriving now cannot lose its image.
    deleted = await services.pipeline.release(live, by=None, reason=reason)
    if any(d.id == upload.id for d in deleted):
        return web.json_response({"id": imgur_id, "deleted": True})
    current = await services.ledger.get_upload(imgur_id)
    if current is None or current.state != "done":
        raise missing  # a concurrent DELETE of the same id took it down first
    log.info("kept upload %s on Imgur: other rehosts use it", imgur_id)
    return web.json_response({"id": imgur_id, "deleted": False})


async def _health(request: web.Request) -> web.Response:
    """``GET /healthz``: 200 when the ledger and Imgur both answer, else 503 naming which."""
    health = request.app[HEALTH_KEY]
    database, imgur = await asyncio.gather(health.database_ok(), health.imgur_ok())
    if database and imgur:
        return web.json_response({"status": "ok", "database": True, "imgur": True})

    if not database and not imgur:
        sentence = "Neither the database nor Imgur answers."
    else:
        sentence = "The database does not answer." if imgur else "Imgur does not answer."
    return web.json_response(
        {
            "status": "failing",
            "database": database,
            "imgur": imgur,
            "error": sentence,
        },
        status=503,
    )
