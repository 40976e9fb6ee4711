"""A local stand-in for Imgur's API v3, faithful to what /work/shared/IMGUR_API.md records.

It is an aiohttp server on 127.0.0.1 that the unit tests, the end-to-end tests (the bot as a
subprocess), the benchmark and the demo talk to over real HTTP. It emulates:

- ``POST /3/image`` and ``POST /3/upload`` in all three encodings Imgur accepts: multipart with
  the file as a part (read in a streaming way: 200 MB go through it without being held in
  memory), urlencoded ``image=<base64>&type=base64``, and ``image=<url>&type=URL`` (the stand-in
  fetches the URL itself, loopback addresses only);
- ``GET /3/image/{id}``, ``DELETE /3/image/{deletehash}``, ``POST /3/album``,
  ``GET /3/album/{id}``, ``DELETE /3/album/{deletehash}`` and ``GET /3/credits``;
- the ugly parts: errors whose ``data.error`` is sometimes a string and sometimes an object,
  429s with no ``data`` envelope at all, HTML pages where JSON was expected, 404s in HTML,
  videos that come back ``pending`` and finish later, PNGs over 5 MB turned into JPEGs;
- the quota: the ``X-RateLimit-*`` headers (reset as a unix epoch) and the
  ``X-Post-Rate-Limit-*`` headers (reset in seconds from now), counting down on a clock that
  tests can move forward, and a 429 once credits run out;
- injected faults (``fail_next``) for the transient failures Imgur is known for.

Faults for ``fail_next``, each as Imgur has been seen to fail:

=====================  =================================================================
``over_capacity_403``  403, ``data.error`` "Imgur is temporarily over capacity. ..."
``over_capacity_500``  500, the same text
``server_error``       500, "File was not uploaded correctly"
``html``               500 with an HTML page (text/html)
``empty``              502 (or a chosen status, e.g. 200) with an empty body
``invalid_json``       200 (or a chosen status), application/json cut off mid-way
``slow``               handled normally, answered after ``delay`` seconds
``drop``               the connection is cut mid-request, no answer at all
``rate_limited``       429 in the configured (or a chosen) shape
``invalid_client``     403 "Invalid client_id"
``reject``             400 with a string error (a chosen message)
``bad_link``           stored as usual, answered with a malformed ``link`` (a chosen one)
=====================  =================================================================

Where IMGUR_API.md leaves a point open, the stand-in makes a choice and says so here:
an upload costs 10 credits and any other call 1 (``GET /3/credits`` is free); the POST limit
counts POST requests; a call that a window cannot pay for gets a 429 and costs nothing;
injected faults and refused credentials cost nothing; an unknown deletehash gets an HTML 404;
a video sent in the ``image`` field is refused as ``File type invalid`` (the documented field
is ``video``); a GIF is animated when it carries a looping extension in its first 64 KiB.

Everything it was sent is recorded (``requests``, ``images``, ``albums``) so tests can assert
on what the client did. It imports nothing from the bot: it is an independent specification.

Run it alone with ``python -m tests.imgur_standin --port 8765``; it prints its URL when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import hashlib
import ipaddress
import json
import logging
import math
import secrets
import signal
import string
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, get_args

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, MultiDict
from yarl import URL

log = logging.getLogger(__name__)

RateLimitShape = Literal["errors", "nested", "html"]
Fault = Literal[
    "over_capacity_403",
    "over_capacity_500",
    "server_error",
    "html",
    "empty",
    "invalid_json",
    "slow",
    "drop",
    "rate_limited",
    "invalid_client",
    "reject",
    "bad_link",
]
FAULTS: frozenset[str] = frozenset(get_args(Fault))

UPLOAD_PATHS = ("/3/image", "/3/upload")
MB = 1024 * 1024

# Texts Imgur answers with, word for word.
NO_IMAGE_DATA = "No image data was sent to the upload api"
OVER_SIZE_LIMIT = "File is over the size limit"
OVER_CAPACITY = "Imgur is temporarily over capacity. Please try again later."
BAD_LINK = "javascript:alert(1)"  # not Imgur's: what a broken proxy or answer could carry
NOT_UPLOADED = "File was not uploaded correctly"
INVALID_CLIENT = "Invalid client_id"
INVALID_TOKEN = "The access token provided is invalid."
CORRUPT_IMAGE = "Image format not supported, or image is corrupt."
FILE_TYPE_INVALID: dict[str, Any] = {
    "code": 1003,
    "message": "File type invalid (1)",
    "type": "ImgurException",
    "exception": [],
}

# Imgur sometimes answers with a web page instead of JSON.
OVER_CAPACITY_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Imgur: The magic of the Internet</title>
</head><body><div class="wrapper"><h1>Imgur is over capacity!</h1>
<p>We're experiencing heavy load right now. Please try again in a few moments.</p>
</div></body></html>
"""
NOT_FOUND_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>imgur: the simple 404 page</title></head>
<body><h1>Zoinks! You've taken a wrong turn.</h1><p>404 Not Found</p></body></html>
"""
TOO_MANY_REQUESTS_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>429 Too Many Requests</title></head>
<body><h1>Too Many Requests</h1><p>Slow down, please try again later.</p></body></html>
"""
# What arrives when the connection is cut off in the middle of a JSON answer.
TRUNCATED_JSON = '{"data":{"id":"aB3dE5g","deletehash":"x1Y2z3'

HOUR = 3600.0
DAY = 86400.0
HEAD_BYTES = 64 * 1024  # enough of a file to tell its type, its size in pixels, animation
CHUNK_BYTES = 256 * 1024
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=120)
ACCOUNT_ID = 4242  # the account behind a Bearer token
ID_ALPHABET = string.ascii_letters + string.digits
EXTRA_IMAGE_FIELDS: dict[str, Any] = {
    # Fields real answers carry besides the documented ones (recorded_bodies mode).
    "views": 0,
    "bandwidth": 0,
    "vote": None,
    "favorite": False,
    "section": None,
    "account_url": None,
    "is_ad": False,
    "in_most_viral": False,
    "tags": [],
    "ad_type": 0,
    "ad_url": "",
    "edited": "0",
    "ad_config": {
        "safeFlags": ["not_in_gallery", "share"],
        "highRiskFlags": [],
        "unsafeFlags": ["sixth_mod_unsafe"],
        "wallUnsafeFlags": [],
        "showsAds": False,
        "showAdLevel": 1,
        "nsfw_score": 0,
    },
}


@dataclass
class RecordedRequest:
    """One request as the stand-in saw it (file contents are not kept, only counted)."""

    method: str
    path: str
    query: MultiDict[str]
    headers: CIMultiDict[str]
    content_type: str
    fields: MultiDict[str] = field(default_factory=MultiDict)
    encoding: str | None = None  # "multipart", "base64" or "url" for uploads
    file_field: str | None = None  # "image" or "video"
    filename: str | None = None
    bytes_received: int = 0  # bytes of the file itself (decoded, fetched or streamed)
    fault: str | None = None
    status: int | None = None  # None when the connection was dropped


@dataclass
class ImageRecord:
    """What the stand-in keeps of an upload: metadata only, never the bytes."""

    id: str
    deletehash: str
    sha256: str
    size: int
    mime: str  # the type Imgur reports, after its conversions
    kind: Literal["image", "video"]
    ext: str
    width: int
    height: int
    animated: bool
    title: str | None
    description: str | None
    name: str | None
    album: str | None  # the `album` field as sent
    created: float
    processing: Literal["pending", "completed"] | None
    bytes_received: int
    encoding: str
    file_field: str  # "image" or "video"
    filename: str | None
    disable_audio: bool
    account_id: int
    gets: int = 0
    deleted: bool = False
    deleted_at: float | None = None


@dataclass
class AlbumRecord:
    """An album: anonymous ones are changed or deleted through their deletehash."""

    id: str
    deletehash: str
    title: str | None
    description: str | None
    privacy: str
    cover: str | None
    image_ids: list[str]
    created: float
    account_id: int
    deleted: bool = False


@dataclass
class _Media:
    """What the first bytes of a file say it is."""

    mime: str
    ext: str
    kind: Literal["image", "video"]
    width: int = 0
    height: int = 0
    animated: bool = False


@dataclass
class _Intake:
    """A file counted and hashed as it streams by; only its first bytes are kept."""

    field_name: str
    filename: str | None = None
    size: int = 0
    head: bytes = b""
    _sha: Any = field(default_factory=hashlib.sha256)

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        self._sha.update(chunk)
        if len(self.head) < HEAD_BYTES:
            self.head += chunk[: HEAD_BYTES - len(self.head)]

    @property
    def sha256(self) -> str:
        return str(self._sha.hexdigest())


@dataclass
class _Form:
    """A request body: text fields, and the image either as a streamed file or as text."""

    fields: MultiDict[str] = field(default_factory=MultiDict)
    file: _Intake | None = None
    image_text: str | None = None  # base64 or URL sent in `image`/`video`
    image_text_field: str | None = None


@dataclass
class _PendingFault:
    fault: str
    remaining: int
    path: str | None
    method: str | None
    delay: float
    status: int | None
    message: str | None
    shape: str | None

    def matches(self, request: web.Request) -> bool:
        if self.method is not None and request.method.upper() != self.method.upper():
            return False
        if self.path is None:
            return True
        prefix = self.path.rstrip("/")
        return request.path == self.path or request.path.startswith(prefix + "/")


RECORD_KEY = web.RequestKey("imgur_standin_record", RecordedRequest)
FORM_KEY = web.RequestKey("imgur_standin_form", _Form)


def sniff(head: bytes) -> _Media | None:
    """Tell a file's type from its magic bytes, as Imgur does; None for anything else."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        width, height = _png_size(head)
        return _Media("image/png", "png", "image", width, height)
    if head.startswith(b"\xff\xd8\xff"):
        width, height = _jpeg_size(head)
        return _Media("image/jpeg", "jpg", "image", width, height)
    if head[:6] in (b"GIF87a", b"GIF89a"):
        width, height = struct.unpack("<HH", head[6:10]) if len(head) >= 10 else (0, 0)
        animated = b"NETSCAPE2.0" in head or b"ANIMEXTS1.0" in head
        return _Media("image/gif", "gif", "image", width, height, animated)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _Media("image/webp", "webp", "image")
    if head.startswith(b"BM") and len(head) >= 26:
        width, height = struct.unpack("<ii", head[18:26])
        return _Media("image/bmp", "bmp", "image", abs(width), abs(height))
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return _Media("image/tiff", "tiff", "image")
    if head[4:8] == b"ftyp":
        if head[8:12] == b"qt  ":
            return _Media("video/quicktime", "mov", "video")
        return _Media("video/mp4", "mp4", "video")
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return _Media("video/webm", "webm", "video")
    return None


def _png_size(head: bytes) -> tuple[int, int]:
    if len(head) < 24 or head[12:16] != b"IHDR":
        return 0, 0
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def _jpeg_size(head: bytes) -> tuple[int, int]:
    """Walk the JPEG segments in the first bytes up to a start-of-frame marker."""
    pos = 2
    while pos + 9 <= len(head):
        if head[pos] != 0xFF:
            return 0, 0
        marker = head[pos + 1]
        length = int.from_bytes(head[pos + 2 : pos + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE):
            height, width = struct.unpack(">HH", head[pos + 5 : pos + 9])
            return int(width), int(height)
        pos += 2 + length
    return 0, 0


def _new_token(length: int) -> str:
    return "".join(secrets.choice(ID_ALPHABET) for _ in range(length))


def _is_loopback(url: URL) -> bool:
    host = url.host or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _split_list(form: MultiDict[str], name: str) -> list[str]:
    """Read `name[]` repeated, or `name` as a comma list, as Imgur's album endpoint does."""
    values = form.getall(f"{name}[]", [])
    for value in form.getall(name, []):
        values.extend(item.strip() for item in value.split(",") if item.strip())
    return values


class ImgurStandIn:
    """Imgur's API v3 on a free loopback port, with quota, faults and a record of requests.

    Args:
        client_id: the id expected in ``Authorization: Client-ID <id>``.
        access_token: if given, ``Authorization: Bearer <token>`` is accepted too.
        user_limit: credits per IP per hour (``X-RateLimit-UserLimit``).
        client_limit: credits per application per day (``X-RateLimit-ClientLimit``).
        post_limit: POST requests per IP per hour (``X-Post-Rate-Limit-Limit``).
        upload_cost: credits an upload costs; every other call costs ``call_cost``.
        image_limit: largest still image accepted, in bytes.
        video_limit: largest video or animated GIF accepted, in bytes.
        png_to_jpeg_over: PNGs larger than this come back as JPEG, as on Imgur.
        link_base: where the ``link`` of an upload points.
        rate_limit_shape: the body of a 429: ``errors``, ``nested`` or ``html``.
        recorded_bodies: answer with bodies as recorded from real Imgur: every extra field it
            sends, slashes escaped as ``\\/`` the way its PHP encoder writes them.
        video_ready_after_gets: a pending video answers ``completed`` from this GET on.
        video_ready_after_seconds: or once this much clock time has passed, if given.
        reject_video_in_image_field: answer ``File type invalid`` to a video sent as `image`
            (Imgur documents the `video` field for videos; strict so clients follow it).
        clock: the time source; ``advance()`` moves the stand-in's clock on from it.
    """

    def __init__(
        self,
        *,
        client_id: str = "test-client-id",
        access_token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        user_limit: int = 500,
        client_limit: int = 12500,
        post_limit: int = 1250,
        upload_cost: int = 10,
        call_cost: int = 1,
        image_limit: int = 20 * MB,
        video_limit: int = 200 * MB,
        png_to_jpeg_over: int = 5 * MB,
        link_base: str = "https://i.imgur.com",
        rate_limit_shape: RateLimitShape = "errors",
        recorded_bodies: bool = False,
        video_ready_after_gets: int = 1,
        video_ready_after_seconds: float | None = None,
        reject_video_in_image_field: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not _is_loopback(URL.build(scheme="http", host=host)):
            raise ValueError("the stand-in only listens on loopback addresses")
        if rate_limit_shape not in get_args(RateLimitShape):
            raise ValueError(f"unknown rate limit shape {rate_limit_shape!r}")

        self.client_id = client_id
        self.access_token = access_token
        self.host = host
        self.port = port
        self.upload_cost = upload_cost
        self.call_cost = call_cost
        self.image_limit = image_limit
        self.video_limit = video_limit
        self.png_to_jpeg_over = png_to_jpeg_over
        self.link_base = link_base.rstrip("/")
        self.rate_limit_shape: RateLimitShape = rate_limit_shape
        self.recorded_bodies = recorded_bodies
        self.video_ready_after_gets = video_ready_after_gets
        self.video_ready_after_seconds = video_ready_after_seconds
        self.reject_video_in_image_field = reject_video_in_image_field
        self._clock = clock
        self._offset = 0.0

        # The quota: three windows, each counting down and refilled when its reset passes.
        start = self.now()
        self.user_limit = user_limit
        self.user_remaining = user_limit
        self.user_reset = start + HOUR
        self.client_limit = client_limit
        self.client_remaining = client_limit
        self.client_reset = start + DAY
        self.post_limit = post_limit
        self.post_remaining = post_limit
        self.post_reset = start + HOUR

        # What was asked and what is stored, for assertions.
        self.requests: list[RecordedRequest] = []
        self.images: dict[str, ImageRecord] = {}
        self.albums: dict[str, AlbumRecord] = {}
        self.upload_calls = 0
        self.rate_limited = 0

        self._faults: list[_PendingFault] = []
        self._changed: asyncio.Condition | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # --- clock -------------------------------------------------------------------------------

    def now(self) -> float:
        """The stand-in's time in unix seconds; quota windows and `datetime` follow it."""
        return self._clock() + self._offset

    def advance(self, seconds: float) -> None:
        """Move the stand-in's clock forward, e.g. past an hourly quota reset."""
        self._offset += seconds

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The API base, e.g. ``http://127.0.0.1:41234`` (the bot's IMGUR_API_URL)."""
        if self._runner is None:
            raise RuntimeError("the Imgur stand-in is not started")
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen on the loopback port (a free one if port is 0)."""
        app = web.Application(
            middlewares=[self._middleware],
            # urlencoded base64 is read whole (it is small by nature); multipart streams
            client_max_size=math.ceil(self.video_limit * 4 / 3) + MB,
        )
        app.on_response_prepare.append(self._add_quota_headers)
        for path in UPLOAD_PATHS:
            app.router.add_post(path, self._upload)
        app.router.add_get("/3/image/{id}", self._get_image)
        app.router.add_delete("/3/image/{deletehash}", self._delete_image)
        app.router.add_post("/3/album", self._create_album)
        app.router.add_get("/3/album/{id}", self._get_album)
        app.router.add_delete("/3/album/{deletehash}", self._delete_album)
        app.router.add_get("/3/credits", self._credits)

        self._changed = asyncio.Condition()
        self._session = aiohttp.ClientSession(timeout=FETCH_TIMEOUT)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("Imgur stand-in listening on %s", self.url)

    async def stop(self) -> None:
        """Stop listening and close the connections still open."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> ImgurStandIn:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # --- test controls -----------------------------------------------------------------------

    def fail_next(
        self,
        fault: Fault,
        times: int = 1,
        path: str | None = None,
        *,
        method: str | None = None,
        delay: float = 2.0,
        status: int | None = None,
        message: str | None = None,
        shape: RateLimitShape | None = None,
    ) -> None:
        """Make the next `times` matching requests fail with `fault`, in the order given.

        `path` matches itself and everything under it (``/3/image`` matches
        ``/3/image/abc``); None matches every request. `delay` is for ``slow``, `status`
        overrides the answer's status (``empty`` and ``invalid_json`` may be 200 or 502),
        `message` the text of ``reject``, `shape` the body of ``rate_limited``.
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {sorted(FAULTS)}")
        if times < 1:
            raise ValueError("times must be at least 1")
        pending = _PendingFault(fault, times, path, method, delay, status, message, shape)
        self._faults.append(pending)

    def clear_faults(self) -> None:
        """Forget faults that have not fired yet."""
        self._faults.clear()

    def image_by_deletehash(self, deletehash: str) -> ImageRecord | None:
        """The upload a deletehash belongs to (deleted or not), or None."""
        for image in self.images.values():
            if image.deletehash == deletehash:
                return image
        return None

    def album_by_deletehash(self, deletehash: str) -> AlbumRecord | None:
        """The album a deletehash belongs to (deleted or not), or None."""
        for album in self.albums.values():
            if album.deletehash == deletehash:
                return album
        return None

    def uploads(self) -> list[RecordedRequest]:
        """The upload requests received, in order (failed ones included)."""
        return [r for r in self.requests if r.method == "POST" and r.path in UPLOAD_PATHS]

    async def wait_for(self, predicate: Callable[[], bool], *, within: float = 30.0) -> None:
        """Wait until `predicate()` holds; it is checked after every answered request."""
        if self._changed is None:
            raise RuntimeError("the Imgur stand-in is not started")
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), within)

    @property
    def credits(self) -> dict[str, int]:
        """The quota as ``GET /3/credits`` reports it."""
        self._roll_quota_windows()
        return {
            "UserLimit": self.user_limit,
            "UserRemaining": self.user_remaining,
            "UserReset": int(self.user_reset),
            "ClientLimit": self.client_limit,
            "ClientRemaining": self.client_remaining,
        }

    # --- the request pipeline: record, fault, read the body, authenticate, handle -------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            query=MultiDict(request.query),
            headers=CIMultiDict(request.headers),
            content_type=request.content_type,
        )
        self.requests.append(record)
        request[RECORD_KEY] = record
        if request.method == "POST" and request.path in UPLOAD_PATHS:
            self.upload_calls += 1

        try:
            response = await self._answer(request, handler, record)
        except web.HTTPException as exc:  # aiohttp's own 404, 405, 413
            record.status = exc.status
            raise
        else:
            record.status = response.status
            return response
        finally:
            await self._notify()

    async def _answer(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Any],
        record: RecordedRequest,
    ) -> web.StreamResponse:
        fault = self._take_fault(request)
        if fault is not None:
            record.fault = fault.fault
        if fault is not None and fault.fault == "drop":
            await self._drop(request)

        form = await self._read_form(request, record)
        request[FORM_KEY] = form

        if fault is not None and fault.fault not in ("slow", "bad_link"):
            log.debug("stand-in injects %s on %s %s", fault.fault, request.method, request.path)
            return self._fault_response(request, fault)

        refusal = self._authenticate(request)
        if refusal is not None:
            return refusal

        response: web.StreamResponse = await handler(request)
        if fault is not None and fault.fault == "bad_link":
            return self._with_link(response, fault.message or BAD_LINK)
        if fault is not None:
            # The work is done (an upload is stored) before the late answer: a client that
            # gives up waiting has still uploaded, as with a real timed-out upload.
            await asyncio.sleep(fault.delay)
        return response

    def _take_fault(self, request: web.Request) -> _PendingFault | None:
        for pending in self._faults:
            if pending.matches(request):
                pending.remaining -= 1
                if pending.remaining == 0:
                    self._faults.remove(pending)
                return pending
        return None

    async def _drop(self, request: web.Request) -> None:
        """Read a little of the request, then cut the connection without an answer."""
        with contextlib.suppress(aiohttp.ClientError, ConnectionError):
            await request.content.read(HEAD_BYTES)
        if request.transport is not None:
            request.transport.abort()
        # aiohttp treats a cancelled handler on a closed connection as a client disconnect.
        raise asyncio.CancelledError

    async def _notify(self) -> None:
        if self._changed is not None:
            async with self._changed:
                self._changed.notify_all()

    def _authenticate(self, request: web.Request) -> web.Response | None:
        """Check ``Client-ID`` (or ``Bearer``); None when the caller may go on."""
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        credential = credential.strip()
        if scheme.lower() == "client-id" and credential == self.client_id:
            return None
        if scheme.lower() == "bearer":
            if self.access_token is not None and credential == self.access_token:
                return None
            return self._error(request, 403, INVALID_TOKEN)
        return self._error(request, 403, INVALID_CLIENT)

    def _account_id(self, request: web.Request) -> int:
        scheme = request.headers.get("Authorization", "").partition(" ")[0]
        return ACCOUNT_ID if scheme.lower() == "bearer" else 0

    # --- reading bodies ----------------------------------------------------------------------

    async def _read_form(self, request: web.Request, record: RecordedRequest) -> _Form:
        """Read any body: multipart streams, urlencoded is parsed, anything else is drained."""
        if not request.body_exists:
            return _Form()
        if request.content_type == "multipart/form-data":
            form = await self._read_multipart(request)
        elif request.content_type == "application/x-www-form-urlencoded":
            form = _Form()
            posted = await request.post()
            for name, value in posted.items():
                if isinstance(value, str):
                    self._take_text_field(form, name, value)
        else:
            # JSON or raw bytes: Imgur documents neither, so this counts as no image data.
            while await request.content.readany():
                pass
            form = _Form()

        record.fields = form.fields
        if form.file is not None:
            record.file_field = form.file.field_name
            record.filename = form.file.filename
            record.bytes_received = form.file.size
        elif form.image_text_field is not None:
            record.file_field = form.image_text_field
        return form

    async def _read_multipart(self, request: web.Request) -> _Form:
        """Stream the parts: text fields are kept, a file part is only hashed and counted."""
        form = _Form()
        reader = await request.multipart()
        async for part in reader:
            if not isinstance(part, aiohttp.BodyPartReader):
                if part is not None:
                    await part.release()  # a nested multipart: Imgur reads none
                continue
            name = part.name or ""
            if name in ("image", "video") and form.file is None and self._is_file_part(part, form):
                intake = _Intake(field_name=name, filename=part.filename)
                while chunk := await part.read_chunk(CHUNK_BYTES):
                    intake.feed(chunk)
                form.file = intake
            else:
                self._take_text_field(form, name, await part.text())
        return form

    @staticmethod
    def _is_file_part(part: aiohttp.BodyPartReader, form: _Form) -> bool:
        """A file part says so (a filename, a non-text type), or `type=file` came before it."""
        if part.filename is not None or form.fields.get("type", "").lower() == "file":
            return True
        content_type = part.headers.get("Content-Type", "text/plain")
        return not content_type.startswith("text/")

    @staticmethod
    def _take_text_field(form: _Form, name: str, value: str) -> None:
        if name in ("image", "video") and form.image_text is None and form.file is None:
            form.image_text = value
            form.image_text_field = name
            if value.startswith(("http://", "https://")):
                form.fields.add(name, value)  # a URL is a field; base64 is file content
            return
        form.fields.add(name, value)

    async def _intake_from_text(
        self, request: web.Request, form: _Form, record: RecordedRequest
    ) -> _Intake | web.Response:
        """Turn `image=<base64>` or `image=<url>&type=URL` into a counted file."""
        text = form.image_text or ""
        field_name = form.image_text_field or "image"
        upload_type = form.fields.get("type", "").lower()
        is_url = upload_type == "url" or (
            upload_type != "base64" and text.startswith(("http://", "https://"))
        )

        if is_url:
            record.encoding = "url"
            return await self._fetch(request, text.strip(), field_name)

        record.encoding = "base64"
        try:
            data = base64.b64decode(text, validate=False)
        except (binascii.Error, ValueError):
            return self._error(request, 400, FILE_TYPE_INVALID)
        intake = _Intake(field_name=field_name)
        for start in range(0, len(data), CHUNK_BYTES):
            intake.feed(data[start : start + CHUNK_BYTES])
        return intake

    async def _fetch(
        self, request: web.Request, text: str, field_name: str
    ) -> _Intake | web.Response:
        """Download a URL upload as Imgur does, streaming; only loopback URLs are fetched."""
        try:
            url = URL(text)
        except ValueError:
            return self._error(request, 400, f"Invalid URL ({text})")
        if url.scheme not in ("http", "https") or not _is_loopback(url):
            # Tests run without a network: the stand-in refuses to reach beyond loopback.
            return self._error(request, 400, f"Invalid URL ({text})")

        assert self._session is not None
        intake = _Intake(field_name=field_name, filename=url.name or None)
        try:
            async with self._session.get(url) as response:
                if response.status != 200:
                    return self._error(request, 400, f"Invalid URL ({text})")
                async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                    intake.feed(chunk)
                    if intake.size > self.video_limit:
                        break  # enough to know it is too large
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.debug("stand-in could not fetch a URL upload: %s", type(exc).__name__)
            return self._error(request, 400, f"Invalid URL ({text})")
        return intake

    # --- handlers ----------------------------------------------------------------------------

    async def _upload(self, request: web.Request) -> web.Response:
        """``POST /3/image`` and ``POST /3/upload``."""
        record: RecordedRequest = request[RECORD_KEY]
        form: _Form = request[FORM_KEY]
        refusal = self._spend(request, self.upload_cost, post=True)
        if refusal is not None:
            return refusal

        # Where the file is: a streamed part, or text to decode or fetch.
        if form.file is not None:
            record.encoding = "multipart"
            intake = form.file
        elif form.image_text:
            fetched = await self._intake_from_text(request, form, record)
            if isinstance(fetched, web.Response):
                return fetched
            intake = fetched
            record.bytes_received = intake.size
            record.filename = intake.filename
        else:
            return self._error(request, 400, NO_IMAGE_DATA)
        if intake.size == 0:
            return self._error(request, 400, NO_IMAGE_DATA)

        # What it is, and whether Imgur would take it.
        media = sniff(intake.head)
        if media is None:
            return self._error(request, 400, FILE_TYPE_INVALID)
        if (
            media.kind == "video"
            and intake.field_name == "image"
            and self.reject_video_in_image_field
        ):
            return self._error(request, 400, FILE_TYPE_INVALID)
        becomes_video = media.kind == "video" or media.animated
        limit = self.video_limit if becomes_video else self.image_limit
        if intake.size > limit:
            return self._error(request, 400, OVER_SIZE_LIMIT)

        image = self._store(request, form, intake, media, record.encoding or "multipart")
        log.debug("stand-in stored upload %s (%d bytes, %s)", image.id, image.size, image.mime)
        return self._success(self._image_data(image, with_deletehash=True))

    def _store(
        self, request: web.Request, form: _Form, intake: _Intake, media: _Media, encoding: str
    ) -> ImageRecord:
        """Keep the upload's metadata the way Imgur reports it back."""
        mime, ext, kind = media.mime, media.ext, media.kind
        if media.kind == "video" or media.animated:
            # Imgur turns videos and animated GIFs into MP4 and processes them later.
            mime, ext, kind = "video/mp4", "mp4", "video"
        elif media.mime == "image/png" and intake.size > self.png_to_jpeg_over:
            mime, ext = "image/jpeg", "jpg"

        image_id = self._unused_id(7)
        album = form.fields.get("album")
        image = ImageRecord(
            id=image_id,
            deletehash=_new_token(15),
            sha256=intake.sha256,
            size=intake.size,
            mime=mime,
            kind=kind,
            ext=ext,
            width=media.width,
            height=media.height,
            animated=media.animated or kind == "video",
            title=form.fields.get("title"),
            description=form.fields.get("description"),
            name=form.fields.get("name"),
            album=album,
            created=self.now(),
            processing="pending" if kind == "video" else None,
            bytes_received=intake.size,
            encoding=encoding,
            file_field=intake.field_name,
            filename=intake.filename,
            disable_audio=form.fields.get("disable_audio", "") in ("1", "true"),
            account_id=self._account_id(request),
        )
        self.images[image_id] = image

        # `album` is an anonymous album's deletehash (or, for an account, its id).
        if album:
            for candidate in self.albums.values():
                if not candidate.deleted and album in (candidate.deletehash, candidate.id):
                    candidate.image_ids.append(image_id)
        return image

    async def _get_image(self, request: web.Request) -> web.Response:
        """``GET /3/image/{id}``; a pending video may be finished by now."""
        refusal = self._spend(request, self.call_cost)
        if refusal is not None:
            return refusal

        image_id = request.match_info["id"]
        image = self.images.get(image_id)
        if image is None or image.deleted:
            return self._error(request, 404, f"Unable to find an image with the id, {image_id}")

        image.gets += 1
        if image.processing == "pending" and self._processing_done(image):
            image.processing = "completed"
        owner = image.account_id != 0 and image.account_id == self._account_id(request)
        return self._success(self._image_data(image, with_deletehash=owner))

    def _processing_done(self, image: ImageRecord) -> bool:
        if image.gets >= self.video_ready_after_gets:
            return True
        after = self.video_ready_after_seconds
        return after is not None and self.now() - image.created >= after

    async def _delete_image(self, request: web.Request) -> web.Response:
        """``DELETE /3/image/{deletehash}``; an unknown one gets an HTML 404."""
        refusal = self._spend(request, self.call_cost)
        if refusal is not None:
            return refusal

        key = request.match_info["deletehash"]
        image = self.image_by_deletehash(key)
        account_id = self._account_id(request)
        if image is None and account_id:
            owned = self.images.get(key)
            image = owned if owned is not None and owned.account_id == account_id else None
        if image is None or image.deleted:
            return self._html(404, NOT_FOUND_PAGE)

        image.deleted = True
        image.deleted_at = self.now()
        return self._success(True)

    async def _create_album(self, request: web.Request) -> web.Response:
        """``POST /3/album`` with ``deletehashes[]`` (anonymous) or ``ids[]``."""
        form: _Form = request[FORM_KEY]
        refusal = self._spend(request, self.call_cost, post=True)
        if refusal is not None:
            return refusal

        image_ids: list[str] = []
        for deletehash in _split_list(form.fields, "deletehashes"):
            image = self.image_by_deletehash(deletehash)
            if image is not None and not image.deleted:
                image_ids.append(image.id)
        for image_id in _split_list(form.fields, "ids"):
            if image_id in self.images and not self.images[image_id].deleted:
                image_ids.append(image_id)

        album = AlbumRecord(
            id=self._unused_id(7),
            deletehash=_new_token(15),
            title=form.fields.get("title"),
            description=form.fields.get("description"),
            privacy=form.fields.get("privacy", "hidden"),
            cover=form.fields.get("cover"),
            image_ids=list(dict.fromkeys(image_ids)),
            created=self.now(),
            account_id=self._account_id(request),
        )
        self.albums[album.id] = album
        return self._success({"id": album.id, "deletehash": album.deletehash})

    async def _get_album(self, request: web.Request) -> web.Response:
        """``GET /3/album/{id}``."""
        refusal = self._spend(request, self.call_cost)
        if refusal is not None:
            return refusal

        album = self.albums.get(request.match_info["id"])
        if album is None or album.deleted:
            return self._error(request, 404, "Unable to find an album with the id")

        images = [self.images[i] for i in album.image_ids if not self.images[i].deleted]
        data = {
            "id": album.id,
            "title": album.title,
            "description": album.description,
            "datetime": int(album.created),
            "cover": album.cover or (images[0].id if images else None),
            "privacy": album.privacy,
            "link": f"https://imgur.com/a/{album.id}",
            "images_count": len(images),
            "images": [self._image_data(image, with_deletehash=False) for image in images],
        }
        return self._success(data)

    async def _delete_album(self, request: web.Request) -> web.Response:
        """``DELETE /3/album/{deletehash}``; the album's images stay."""
        refusal = self._spend(request, self.call_cost)
        if refusal is not None:
            return refusal

        album = self.album_by_deletehash(request.match_info["deletehash"])
        if album is None or album.deleted:
            return self._html(404, NOT_FOUND_PAGE)
        album.deleted = True
        return self._success(True)

    async def _credits(self, request: web.Request) -> web.Response:
        """``GET /3/credits``; free, so a client can check its quota without spending it."""
        return self._success(self.credits)

    # --- quota -------------------------------------------------------------------------------

    def _roll_quota_windows(self) -> None:
        """Refill every window whose reset time the clock has passed."""
        now = self.now()
        if now >= self.user_reset:
            self.user_remaining = self.user_limit
            self.user_reset += HOUR * (math.floor((now - self.user_reset) / HOUR) + 1)
        if now >= self.client_reset:
            self.client_remaining = self.client_limit
            self.client_reset += DAY * (math.floor((now - self.client_reset) / DAY) + 1)
        if now >= self.post_reset:
            self.post_remaining = self.post_limit
            self.post_reset += HOUR * (math.floor((now - self.post_reset) / HOUR) + 1)

    def _spend(self, request: web.Request, cost: int, *, post: bool = False) -> web.Response | None:
        """Charge a call; a 429 (and no charge) when any window cannot pay for it."""
        self._roll_quota_windows()
        if self.user_remaining < cost:
            return self._rate_limited(request, self.user_reset)
        if self.client_remaining < cost:
            return self._rate_limited(request, self.client_reset)
        if post and self.post_remaining < 1:
            return self._rate_limited(request, self.post_reset)

        self.user_remaining -= cost
        self.client_remaining -= cost
        if post:
            self.post_remaining -= 1
        return None

    async def _add_quota_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        """Every answer tells the quota; POST answers also tell the POST limit."""
        self._roll_quota_windows()
        now = self.now()
        response.headers["X-RateLimit-UserLimit"] = str(self.user_limit)
        response.headers["X-RateLimit-UserRemaining"] = str(self.user_remaining)
        response.headers["X-RateLimit-UserReset"] = str(int(self.user_reset))
        response.headers["X-RateLimit-ClientLimit"] = str(self.client_limit)
        response.headers["X-RateLimit-ClientRemaining"] = str(self.client_remaining)
        if request.method == "POST":
            # Not an epoch like the others: seconds from now.
            response.headers["X-Post-Rate-Limit-Limit"] = str(self.post_limit)
            response.headers["X-Post-Rate-Limit-Remaining"] = str(self.post_remaining)
            response.headers["X-Post-Rate-Limit-Reset"] = str(max(0, int(self.post_reset - now)))

    def _rate_limited(
        self, request: web.Request, reset_at: float, shape: str | None = None
    ) -> web.Response:
        """A 429 in one of the three shapes Imgur has been seen to send."""
        self.rate_limited += 1
        shape = shape or self.rate_limit_shape
        log.debug("stand-in answers 429 (%s) to %s %s", shape, request.method, request.path)

        if shape == "html":
            return self._html(429, TOO_MANY_REQUESTS_PAGE)
        if shape == "nested":
            minutes = max(1, math.ceil((reset_at - self.now()) / 60))
            error = {
                "code": 429,
                "message": f"You are uploading too fast. Please wait {minutes} more minutes.",
                "type": "ImgurException",
                "exception": [],
            }
            return self._error(request, 429, error)
        body = {
            "errors": [
                {
                    "id": secrets.token_hex(16),
                    "code": "429",
                    "status": "Too Many Requests",
                    "detail": "Too Many Requests",
                }
            ]
        }
        return self._json(429, body)

    # --- answers -----------------------------------------------------------------------------

    def _fault_response(self, request: web.Request, fault: _PendingFault) -> web.Response:
        kind = fault.fault
        if kind == "over_capacity_403":
            return self._error(request, fault.status or 403, OVER_CAPACITY)
        if kind == "over_capacity_500":
            return self._error(request, fault.status or 500, OVER_CAPACITY)
        if kind == "server_error":
            return self._error(request, fault.status or 500, NOT_UPLOADED)
        if kind == "html":
            return self._html(fault.status or 500, OVER_CAPACITY_PAGE)
        if kind == "empty":
            return web.Response(status=fault.status or 502, body=b"")
        if kind == "invalid_json":
            return web.Response(
                status=fault.status or 200, text=TRUNCATED_JSON, content_type="application/json"
            )
        if kind == "rate_limited":
            return self._rate_limited(request, self.user_reset, fault.shape)
        if kind == "invalid_client":
            return self._error(request, fault.status or 403, INVALID_CLIENT)
        if kind == "reject":
            return self._error(request, fault.status or 400, fault.message or CORRUPT_IMAGE)
        raise AssertionError(f"unhandled fault {kind}")

    def _image_data(self, image: ImageRecord, *, with_deletehash: bool) -> dict[str, Any]:
        """An image as Imgur describes it; the deletehash only where Imgur shows it."""
        data: dict[str, Any] = {
            "id": image.id,
            "title": image.title,
            "description": image.description,
            "datetime": int(image.created),
            "type": image.mime,
            "animated": image.animated,
            "width": image.width,
            "height": image.height,
            "size": image.size,
            "nsfw": None,
            "in_gallery": False,
            "account_id": image.account_id,
            "has_sound": False,
            "name": image.name if image.name is not None or not self.recorded_bodies else "",
            "link": f"{self.link_base}/{image.id}.{image.ext}",
        }
        if with_deletehash:
            data["deletehash"] = image.deletehash
        if image.kind == "video":
            completed = image.processing == "completed"
            data["mp4"] = f"{self.link_base}/{image.id}.mp4"
            data["gifv"] = f"{self.link_base}/{image.id}.gifv"
            data["hls"] = f"{self.link_base}/{image.id}.m3u8"
            data["mp4_size"] = image.size if completed else 0
            data["looping"] = True
            data["processing"] = {"status": image.processing}
        if self.recorded_bodies:
            data = {**data, **EXTRA_IMAGE_FIELDS}
            if image.account_id:
                data["account_url"] = "standin-account"
        return data

    def _with_link(self, response: web.StreamResponse, link: str) -> web.Response:
        """The same answer with ``data.link`` replaced: the upload itself stays stored."""
        assert isinstance(response, web.Response)
        assert response.text is not None
        body = json.loads(response.text)
        if isinstance(body.get("data"), dict):
            body["data"]["link"] = link
        return self._json(response.status, body)

    def _success(self, data: Any) -> web.Response:
        return self._json(200, {"data": data, "success": True, "status": 200})

    def _error(
        self, request: web.Request, status: int, error: str | dict[str, Any]
    ) -> web.Response:
        """Imgur's error envelope; `error` is a string or an object, as Imgur mixes both."""
        data = {"error": error, "request": request.path, "method": request.method}
        return self._json(status, {"data": data, "success": False, "status": status})

    def _json(self, status: int, body: Any) -> web.Response:
        text = json.dumps(body, separators=(",", ":"))
        if self.recorded_bodies:
            text = text.replace("/", "\\/")  # Imgur's PHP encoder escapes every slash
        return web.Response(status=status, text=text, content_type="application/json")

    @staticmethod
    def _html(status: int, page: str) -> web.Response:
        return web.Response(status=status, text=page, content_type="text/html")

    def _unused_id(self, length: int) -> str:
        while True:
            candidate = _new_token(length)
            if candidate not in self.images and candidate not in self.albums:
                return candidate


async def _serve(args: argparse.Namespace) -> None:
    """Run the stand-in until SIGINT or SIGTERM."""
    standin = ImgurStandIn(
        client_id=args.client_id,
        access_token=args.access_token,
        port=args.port,
        user_limit=args.user_limit,
        client_limit=args.client_limit,
        post_limit=args.post_limit,
        image_limit=args.image_limit,
        video_limit=args.video_limit,
        link_base=args.link_base,
        rate_limit_shape=args.rate_limit_shape,
        recorded_bodies=args.recorded_bodies,
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)

    async with standin:
        print(standin.url, flush=True)
        await stopping.wait()


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m tests.imgur_standin --port N``."""
    parser = argparse.ArgumentParser(description="A local stand-in for Imgur's API v3.")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--client-id", default="test-client-id")
    parser.add_argument("--access-token", default=None)
    parser.add_argument("--user-limit", type=int, default=500)
    parser.add_argument("--client-limit", type=int, default=12500)
    parser.add_argument("--post-limit", type=int, default=1250)
    parser.add_argument("--image-limit", type=int, default=20 * MB)
    parser.add_argument("--video-limit", type=int, default=200 * MB)
    parser.add_argument("--link-base", default="https://i.imgur.com")
    parser.add_argument("--rate-limit-shape", choices=get_args(RateLimitShape), default="errors")
    parser.add_argument("--recorded-bodies", action="store_true")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(_serve(args))


if __name__ == "__main__":
    main()
