"""An async client for Imgur's v3 API: upload, delete, anonymous albums and the credit count.

    ImgurError (a RehostError)   one sentence safe to show; never a secret or a raw body
     ├── ImgurRejected           400-class: Imgur refused the file or request; never retried
     ├── ImgurAuthError          401/403: the client id or access token is not accepted
     ├── ImgurRateLimited        429: a quota is spent; ``reset_at`` says when it refills
     ├── ImgurUnavailable        5xx, over capacity, timeouts, dropped or unreadable answers
     └── ImgurNotFound           404: no such image or album (for example an old deletehash)

Still images go to ``POST /3/image`` in the ``image`` field (the original endpoint, which every
client id has always accepted); videos go to ``POST /3/upload`` in the ``video`` field, where
clients report video uploads work reliably. Files travel as a streamed ``multipart/form-data``
part, read in chunks in a worker thread: never base64, never read whole.

The session belongs to the caller; this module never creates or closes one.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import math
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import content_disposition_header
from aiohttp.payload import Payload

from bot.errors import RehostError

log = logging.getLogger(__name__)

DEFAULT_API_URL: Final = "https://api.imgur.com"

# An upload may sit for a long time between the last byte sent and Imgur's answer (Imgur
# transcodes video before answering), so only the gaps between reads are bounded.
UPLOAD_TIMEOUT: Final = aiohttp.ClientTimeout(
    total=None, connect=10, sock_connect=10, sock_read=120
)
CALL_TIMEOUT: Final = aiohttp.ClientTimeout(total=30, connect=10, sock_connect=10, sock_read=30)

# Each chunk of an upload is read in a worker thread; the hand-over costs more than the read.
# 1 MiB chunks send 200 MB to a local stand-in in about half the time 64 KiB chunks take
# (bench/), for 1 MiB of memory per upload.
CHUNK_SIZE: Final = 1024 * 1024
MAX_ANSWER_BYTES: Final = 1024 * 1024  # an API answer is a few KB; more is an error page
ANSWER_TIMEOUT: Final = 60.0  # seconds to read an answer's body once its headers came
MAX_REASON_CHARS: Final = 160
UPLOAD_CREDITS: Final = 10  # what Imgur charges an upload, as its documentation states
MAX_RESET_AHEAD: Final = 2 * 86400.0  # seconds; no quota of Imgur's refills later than this
ALBUM_PRIVACY: Final = frozenset({"public", "hidden", "secret"})
# Imgur serves every video as MP4, whatever was sent.
_LINK_SUFFIXES: Final = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "image/bmp": ".bmp",
    "image/tiff": ".tiff",
    "video/mp4": ".mp4",
    "video/webm": ".mp4",
    "video/quicktime": ".mp4",
}

_DELETEHASH = re.compile(r"[A-Za-z0-9]{1,64}")
_IMAGE_ID = re.compile(r"[A-Za-z0-9]{5,64}")  # Imgur's ids have 5 or 7 characters
_LINK = re.compile(r"https?://[A-Za-z0-9.-]{1,253}(?::\d{1,5})?(?:/[!-~]{0,2000})?")
_MIME = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,63}")
_COUNT = re.compile(r"\d{1,15}")
_SECONDS = re.compile(r"\d{1,15}(?:\.\d{1,6})?")
_TAG = re.compile(r"<[^>]*>")
# Terminal control sequences: CSI (colours, cursor), OSC (window title) and two-byte escapes.
_ESCAPE = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-_])")
_WAIT = re.compile(r"wait (\d{1,6}) (?:more )?(second|minute|hour)s?", re.IGNORECASE)
_WAIT_UNITS: Final = {"second": 1, "minute": 60, "hour": 3600}


# --- errors ------------------------------------------------------------------------------


class ImgurError(RehostError):
    """Imgur said no or could not be reached; ``str()`` is one sentence safe to show."""


class ImgurRejected(ImgurError):
    """Imgur refused the file or request (a 400-class answer); retrying will not help."""

    def __init__(self, reason: str, *, subject: str = "file") -> None:
        self.reason = reason
        if reason:
            super().__init__(f"Imgur refused the {subject}: {_as_sentence(reason)}")
        else:
            super().__init__(f"Imgur refused the {subject} without saying why.")


class ImgurAuthError(ImgurError):
    """Imgur did not accept the client id (or the access token); an operator must fix it."""


class ImgurRateLimited(ImgurError):
    """An Imgur quota is spent; ``reset_at`` is the unix time it refills, or None if unknown.

    ``quota`` names it for people: the upload quota, or the request quota that a deletion or
    an album spends.
    """

    def __init__(
        self, reset_at: float | None, *, now: float | None = None, quota: str = "upload quota"
    ) -> None:
        self.reset_at = reset_at
        self.quota = quota
        if reset_at is None:
            super().__init__(f"Imgur's {quota} is spent; try again later.")
        else:
            # The daily budget may refill tomorrow: a bare time would read as today's.
            reset = datetime.fromtimestamp(reset_at, UTC)
            today = datetime.fromtimestamp(time.time() if now is None else now, UTC).date()
            when = reset.strftime("%H:%M UTC" if reset.date() == today else "%Y-%m-%d %H:%M UTC")
            super().__init__(f"Imgur's {quota} is spent; it resets at {when}.")


class ImgurUnavailable(ImgurError):
    """Imgur failed or could not be reached, and retrying did not help."""


class ImgurNotFound(ImgurError):
    """Imgur has no such image or album (it may have been deleted already)."""


# --- values ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImgurImage:
    """An upload Imgur accepted; ``deletehash`` is the only way to delete it again."""

    id: str
    link: str
    deletehash: str = field(repr=False)
    mime: str | None = None
    size: int | None = None
    width: int | None = None
    height: int | None = None
    animated: bool = False
    processing: str | None = None  # "pending" / "completed" for video, else None
    mp4: str | None = None


@dataclass(frozen=True)
class ImgurAlbum:
    """An anonymous album; it is changed or deleted through its ``deletehash``."""

    id: str
    deletehash: str = field(repr=False)

    @property
    def link(self) -> str:
        return f"https://imgur.com/a/{self.id}"


@dataclass(frozen=True)
class ImageReference:
    """An upload as a person names it: its Imgur id, alone or at the end of a link."""

    imgur_id: str
    host: str | None = None  # the host of the link it came in; None for a bare id

    @classmethod
    def parse(cls, text: str) -> ImageReference:
        """Read ``AbC1234``, ``https://i.imgur.com/AbC1234.png``, ``<…>`` or ``||…||``.

        Raises:
            ValueError: with a sentence for the person who typed ``text``.
        """
        # Discord users wrap links in <…> to hide the preview and in ||…|| as a spoiler.
        text = text.strip().strip("<>|").strip()
        host = None
        if "://" in text:
            try:
                parts = urlsplit(text)
                host = parts.hostname
            except ValueError as exc:
                raise ValueError("That is not an Imgur link or id.") from exc
            if parts.path.startswith("/a/"):
                raise ValueError("That is an album link; delete the images in it instead.")
            text = parts.path
        imgur_id = text.rstrip("/").rpartition("/")[2].partition(".")[0]
        if not _IMAGE_ID.fullmatch(imgur_id):
            raise ValueError("That is not an Imgur link or id.")
        return cls(imgur_id, host)

    def names(self, link: str | None) -> bool:
        """Whether this may stand for the upload recorded at ``link``.

        A link of another site that merely ends in a recorded id does not.
        """
        if self.host is None:
            return True
        recorded = urlsplit(link).hostname if link else None
        return self.host in (recorded, "imgur.com") or self.host.endswith(".imgur.com")


@dataclass(frozen=True)
class Quota:
    """The latest rate-limit headers seen; a field stays None until a header has shown it.

    Resets are unix times: ``X-Post-Rate-Limit-Reset`` is seconds from now, so it is
    converted with the clock at the moment the answer arrived.
    """

    user_limit: int | None = None
    user_remaining: int | None = None
    user_reset: float | None = None
    client_limit: int | None = None
    client_remaining: int | None = None
    post_limit: int | None = None
    post_remaining: int | None = None
    post_reset: float | None = None
    observed_at: float | None = None


@dataclass(frozen=True)
class Credits:
    """What ``GET /3/credits`` reports: the hourly per-IP and the daily per-client budget."""

    user_limit: int
    user_remaining: int
    user_reset: float
    client_limit: int
    client_remaining: int


class Reader(Protocol):
    """What an upload's bytes are read from: an open file, or bytes held in memory."""

    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class UploadBody(Protocol):
    """A spooled, re-openable file handed over by the pipeline."""

    @property
    def filename(self) -> str: ...

    @property
    def mime(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def in_memory(self) -> bool:
        """Whether the bytes are held in memory: opening and reading them never blocks."""
        ...

    def open(self) -> Reader:
        """A fresh reader at offset 0; called once per attempt; the client closes it."""
        ...


# --- the client --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    """One API call as the retry loop sees it; ``route`` is what gets logged."""

    method: str
    route: str  # e.g. "/3/image/<deletehash>": the placeholder never holds the real value
    timeout: aiohttp.ClientTimeout
    subject: str  # what a 400 refused: "file", "album", "request"
    deletehash: str | None = None
    fields: tuple[tuple[str, str], ...] = ()
    file_field: str | None = None
    body: UploadBody | None = None
    on_progress: Callable[[int], None] | None = None
    secrets: tuple[str, ...] = ()  # further values never to be echoed (album deletehashes)

    @property
    def path(self) -> str:
        if self.deletehash is None:
            return self.route
        return self.route.replace("<deletehash>", self.deletehash)


class _Transient(Exception):
    """An attempt failed in a way another attempt may not; carries what to report."""

    def __init__(self, detail: str, cause: BaseException | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.cause = cause


class ImgurClient:
    """Talks to Imgur over a caller-owned aiohttp session, retrying what is transient.

    Args:
        session: the shared HTTP session (never closed here).
        client_id: the application's client id, sent as ``Client-ID`` unless a token is set.
        api_url: the API's base address (a local stand-in in tests).
        access_token: an OAuth2 token for account uploads (``Bearer``), optional.
        attempts: tries per call in total, at least 1.
        backoff: seconds; retry ``n`` (from 0) waits ``backoff * 2**n * random()``.
        clock: unix time, for quota resets.
        sleep: awaited between attempts.
        upload_timeout, call_timeout: per-request timeouts for uploads and small calls; an
            upload's ``sock_read`` also bounds each write of the file to a stalled peer.
        answer_timeout: seconds to read a whole answer body once its headers arrived.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        client_id: str,
        *,
        api_url: str = DEFAULT_API_URL,
        access_token: str | None = None,
        attempts: int = 3,
        backoff: float = 1.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        upload_timeout: aiohttp.ClientTimeout = UPLOAD_TIMEOUT,
        call_timeout: aiohttp.ClientTimeout = CALL_TIMEOUT,
        answer_timeout: float = ANSWER_TIMEOUT,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        if backoff < 0:
            raise ValueError("backoff must not be negative")

        self._session = session
        self._client_id = client_id
        self._access_token = access_token
        self._api_url = api_url.rstrip("/")
        self._attempts = attempts
        self._backoff = backoff
        self._clock = clock
        self._sleep = sleep
        self._upload_timeout = upload_timeout
        self._call_timeout = call_timeout
        self._answer_timeout = answer_timeout
        self._jitter = random.Random()  # noqa: S311 - backoff jitter, not cryptography
        self._quota = Quota()

        if access_token:
            self._authorization = f"Bearer {access_token}"
        else:
            self._authorization = f"Client-ID {client_id}"

    def __repr__(self) -> str:
        return f"<ImgurClient api_url={self._api_url!r} attempts={self._attempts}>"

    @property
    def quota(self) -> Quota:
        """The latest rate-limit headers seen on any answer, success or error."""
        return self._quota

    async def upload(
        self,
        body: UploadBody,
        *,
        video: bool = False,
        title: str | None = None,
        description: str | None = None,
        album: str | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> ImgurImage:
        """Upload a file as a streamed multipart part.

        ``album`` is an anonymous album's deletehash. ``on_progress`` gets the file bytes sent
        so far in the current attempt (it starts again from zero on a retry); it is called
        on the event loop. A video may come back with ``processing == "pending"``.

        Raises:
            ImgurRejected, ImgurAuthError, ImgurRateLimited, ImgurUnavailable;
            ImgurNotFound if ``album`` is not a deletehash at all.
        """
        secrets: tuple[str, ...] = ()
        fields = [("type", "file"), ("name", _safe_filename(body.filename))]
        if title:
            fields.append(("title", title))
        if description:
            fields.append(("description", description))
        if album is not None:
            _check_deletehash(album, "album")
            fields.append(("album", album))
            secrets = (album,)

        request = _Request(
            method="POST",
            route="/3/upload" if video else "/3/image",
            timeout=self._upload_timeout,
            subject="file",
            fields=tuple(fields),
            file_field="video" if video else "image",
            body=body,
            on_progress=on_progress,
            secrets=secrets,
        )
        data = await self._call(request)
        return await self._image_from(data, body.mime)

    async def upload_url(self, url: str, *, title: str | None = None) -> ImgurImage:
        """Ask Imgur to fetch ``url`` itself and host what it finds there."""
        if not url.startswith(("https://", "http://")):
            raise ValueError("only http(s) addresses can be uploaded by URL")

        fields = [("image", url), ("type", "URL")]
        if title:
            fields.append(("title", title))

        request = _Request(
            method="POST",
            route="/3/image",
            timeout=self._upload_timeout,
            subject="file",
            fields=tuple(fields),
        )
        data = await self._call(request)
        return await self._image_from(data)

    async def delete_image(self, deletehash: str) -> bool:
        """Delete an upload: True once deleted, False if Imgur says it is already gone."""
        _check_deletehash(deletehash, "image")
        request = _Request(
            method="DELETE",
            route="/3/image/<deletehash>",
            timeout=self._call_timeout,
            subject="request",
            deletehash=deletehash,
        )
        return await self._delete(request)

    async def create_album(
        self,
        deletehashes: Sequence[str],
        *,
        title: str | None = None,
        description: str | None = None,
        privacy: str = "hidden",
    ) -> ImgurAlbum:
        """Create an anonymous album holding the uploads with these deletehashes."""
        if isinstance(deletehashes, str):
            raise TypeError("deletehashes must be a sequence of strings, not one string")
        if privacy not in ALBUM_PRIVACY:
            raise ValueError("privacy must be one of public, hidden or secret")
        for deletehash in deletehashes:
            _check_deletehash(deletehash, "image")

        fields = [("deletehashes[]", deletehash) for deletehash in deletehashes]
        if title:
            fields.append(("title", title))
        if description:
            fields.append(("description", description))
        fields.append(("privacy", privacy))

        request = _Request(
            method="POST",
            route="/3/album",
            timeout=self._call_timeout,
            subject="album",
            fields=tuple(fields),
            secrets=tuple(deletehashes),
        )
        data = await self._call(request)

        album_id = _token_field(data, "id")
        album_deletehash = _token_field(data, "deletehash")
        if album_id is None or album_deletehash is None:
            log.warning("Imgur created an album but its answer lacks a usable id or deletehash")
            if album_deletehash is not None:
                await self._take_back(album_deletehash, self.delete_album)
            raise ImgurUnavailable("Imgur created the album but did not say how to reach it.")
        return ImgurAlbum(id=album_id, deletehash=album_deletehash)

    async def delete_album(self, deletehash: str) -> bool:
        """Delete an anonymous album (not its images): True, or False if already gone."""
        _check_deletehash(deletehash, "album")
        request = _Request(
            method="DELETE",
            route="/3/album/<deletehash>",
            timeout=self._call_timeout,
            subject="request",
            deletehash=deletehash,
        )
        return await self._delete(request)

    async def credits(self) -> Credits:
        """The remaining credits; also a cheap check that the client id works."""
        request = _Request(
            method="GET", route="/3/credits", timeout=self._call_timeout, subject="request"
        )
        data = await self._call(request)

        user_limit = _count_field(data, "UserLimit")
        user_remaining = _count_field(data, "UserRemaining")
        user_reset = _number_field(data, "UserReset")
        if user_reset is not None and user_reset > self._clock() + MAX_RESET_AHEAD:
            user_reset = None  # not a time Imgur's hourly window could mean
        client_limit = _count_field(data, "ClientLimit")
        client_remaining = _count_field(data, "ClientRemaining")
        if (
            user_limit is None
            or user_remaining is None
            or user_reset is None
            or client_limit is None
            or client_remaining is None
        ):
            raise ImgurUnavailable("Imgur answered the credit check with something unreadable.")
        return Credits(user_limit, user_remaining, user_reset, client_limit, client_remaining)

    async def _take_back(self, deletehash: str, delete: Callable[[str], Awaitable[bool]]) -> None:
        """Delete what Imgur created but described too poorly to keep; failures are logged."""
        try:
            await delete(deletehash)
        except ImgurError as exc:
            log.warning("could not take back an unusable Imgur answer's upload: %s", exc)
        else:
            log.info("took back an upload whose Imgur answer could not be used")

    # --- one call, with retries ---------------------------------------------------------

    async def _delete(self, request: _Request) -> bool:
        try:
            await self._call(request)
        except ImgurNotFound:
            log.debug("Imgur %s %s: already gone", request.method, request.route)
            return False
        return True

    async def _call(self, request: _Request) -> Any:
        """Run a request with retries; the ``data`` of a successful envelope."""
        failure: _Transient | None = None
        for attempt in range(1, self._attempts + 1):
            try:
                return await self._attempt(request, attempt)
            except _Transient as exc:
                failure = exc

            if attempt == self._attempts:
                break
            delay = self._backoff * 2 ** (attempt - 1) * self._jitter.random()
            log.warning(
                "Imgur %s %s failed (%s) on attempt %d of %d; retrying in %.2fs",
                request.method,
                request.route,
                failure.detail,
                attempt,
                self._attempts,
                delay,
            )
            await self._sleep(delay)

        assert failure is not None  # the loop ran at least once and only breaks on failure
        log.warning(
            "Imgur %s %s failed (%s) on attempt %d of %d; giving up",
            request.method,
            request.route,
            failure.detail,
            self._attempts,
            self._attempts,
        )
        raise ImgurUnavailable(
            f"Imgur is unavailable right now ({failure.detail}); try again later."
        ) from failure.cause

    async def _attempt(self, request: _Request, attempt: int) -> Any:
        """One try: the envelope's data, an ImgurError, or _Transient to try again."""
        status, raw, seen = await self._exchange(request)
        payload = _parse_json(raw)

        if 200 <= status < 300:
            if not isinstance(payload, dict) and request.subject == "file":
                # A success status says Imgur stored the upload; only the body, now unreadable,
                # carried its deletehash. Sending it again would leave an undeletable copy.
                log.warning(
                    "Imgur %s %s -> HTTP %d with an unreadable answer; not sending it again",
                    request.method,
                    request.route,
                    status,
                )
                raise ImgurUnavailable("Imgur did not confirm the upload; try again in a minute.")
            if not isinstance(payload, dict):
                raise _Transient(f"HTTP {status} with an unreadable answer")
            if payload.get("success") is not False:
                return payload.get("data")
            status = _envelope_status(payload)

        raise self._failure(request, attempt, status, payload, raw, seen)

    async def _exchange(self, request: _Request) -> tuple[int, bytes, Quota]:
        """Send the request; its status, up to MAX_ANSWER_BYTES of body, and quota headers."""
        url = self._api_url + request.path
        headers = {"Authorization": self._authorization, "Accept": "application/json"}
        # aiohttp's own messages can carry the URL, and with it a deletehash.
        hide_cause = request.deletehash is not None

        reader: Reader | None = None
        part: _FormBody | None = None
        data: aiohttp.FormData | _FormBody | None = None
        started = time.perf_counter()
        try:
            if request.body is not None:
                body = request.body
                reader = body.open() if body.in_memory else await asyncio.to_thread(body.open)
                data = part = _FormBody(
                    request, body, reader, stall_timeout=request.timeout.sock_read
                )
            elif request.fields:
                data = aiohttp.FormData(list(request.fields))

            async with self._session.request(
                request.method,
                url,
                headers=headers,
                data=data,
                timeout=request.timeout,
                allow_redirects=False,
                raise_for_status=False,
            ) as response:
                seen = self._record_quota(response.headers)
                status = response.status
                # sock_read bounds each gap, not the whole: a trickling answer could hold
                # an upload (whose total is unbounded) for ever.
                async with asyncio.timeout(self._answer_timeout):
                    raw = await _read_capped(response)
        except TimeoutError as exc:
            self._log_transport_failure(request, exc, started)
            _refuse_blind_retry(part)
            raise _Transient("timed out", None if hide_cause else exc) from None
        except aiohttp.ClientError as exc:
            if part is not None and part.failure is not None:
                # The file, or the progress callback, failed: not Imgur's fault.
                raise part.failure from exc
            self._log_transport_failure(request, exc, started)
            _refuse_blind_retry(part)
            raise _Transient("the connection failed", None if hide_cause else exc) from None
        finally:
            if reader is not None:
                reader.close()

        log.debug(
            "Imgur %s %s -> %d in %.2fs",
            request.method,
            request.route,
            status,
            time.perf_counter() - started,
        )
        return status, raw, seen

    def _log_transport_failure(self, request: _Request, exc: BaseException, started: float) -> None:
        log.debug(
            "Imgur %s %s -> %s after %.2fs",
            request.method,
            request.route,
            type(exc).__name__,
            time.perf_counter() - started,
        )

    def _failure(
        self,
        request: _Request,
        attempt: int,
        status: int,
        payload: object,
        raw: bytes,
        seen: Quota,
    ) -> ImgurError | _Transient:
        """Map a failed answer to the error to raise (or _Transient to try again)."""
        secrets = (self._client_id, self._access_token or "", request.deletehash or "")
        reason = _imgur_reason(payload, secrets + request.secrets)
        # Imgur's over-capacity answer comes as JSON or as an HTML page, on 403 or 500.
        sniffed = reason or raw[:4096].decode("utf-8", "replace")
        over_capacity = "over capacity" in sniffed.lower()

        if status == 429:
            reset_at = self._reset_at(seen, reason)
            log.warning(
                "Imgur %s %s rate limited (HTTP 429) on attempt %d of %d; resets at %s",
                request.method,
                request.route,
                attempt,
                self._attempts,
                "an unknown time" if reset_at is None else _utc(reset_at),
            )
            quota = "upload quota" if request.subject == "file" else "request quota"
            return ImgurRateLimited(reset_at, now=self._clock(), quota=quota)
        if over_capacity:
            return _Transient(f"HTTP {status}, over capacity")
        if status in (401, 403) and not _is_imgur_answer(payload):
            # Imgur refuses credentials in JSON; a page instead is a block (Imgur shuts out
            # the UK since September 2025) or a proxy's, and says nothing of the client id.
            log.warning(
                "Imgur %s %s -> HTTP %d with no API answer: turned away",
                request.method,
                request.route,
                status,
            )
            return ImgurUnavailable(
                f"Imgur turned the request away (HTTP {status}) without an API answer; "
                "it may be blocked from this network."
            )
        if status in (401, 403):
            log.warning(
                "Imgur %s %s -> HTTP %d: not authorised", request.method, request.route, status
            )
            return ImgurAuthError(self._auth_message())
        if status in (404, 410):
            return ImgurNotFound(_not_found_message(request))
        if status == 408 or status >= 500:
            return _Transient(f"HTTP {status}")
        if status == 413 and not reason:
            return ImgurRejected("File is over the size limit", subject=request.subject)
        if 400 <= status < 500:
            log.debug("Imgur %s %s -> HTTP %d: refused", request.method, request.route, status)
            return ImgurRejected(reason, subject=request.subject)

        log.warning("Imgur %s %s -> unexpected HTTP %d", request.method, request.route, status)
        return ImgurUnavailable(f"Imgur gave an unexpected answer (HTTP {status}).")

    def _auth_message(self) -> str:
        if self._access_token:
            return (
                "Imgur did not accept the access token; check IMGUR_ACCESS_TOKEN "
                "(or unset it to upload with IMGUR_CLIENT_ID alone)."
            )
        return "Imgur did not accept the client id; check IMGUR_CLIENT_ID."

    # --- quota --------------------------------------------------------------------------

    def _record_quota(self, headers: Mapping[str, str]) -> Quota:
        """Parse this answer's quota headers, merge them into ``quota``, return them alone."""
        now = self._clock()
        post_wait = _header_number(headers, "X-Post-Rate-Limit-Reset", _SECONDS)
        user_reset = _header_number(headers, "X-RateLimit-UserReset", _SECONDS)
        # Imgur's windows are an hour and a day; a reset further off is garbage (a proxy's,
        # or a bug's), and believing it would pause uploads for years.
        if post_wait is not None and post_wait > MAX_RESET_AHEAD:
            post_wait = None
        if user_reset is not None and user_reset > now + MAX_RESET_AHEAD:
            user_reset = None
        seen = Quota(
            user_limit=_header_count(headers, "X-RateLimit-UserLimit"),
            user_remaining=_header_count(headers, "X-RateLimit-UserRemaining"),
            user_reset=user_reset,
            client_limit=_header_count(headers, "X-RateLimit-ClientLimit"),
            client_remaining=_header_count(headers, "X-RateLimit-ClientRemaining"),
            post_limit=_header_count(headers, "X-Post-Rate-Limit-Limit"),
            post_remaining=_header_count(headers, "X-Post-Rate-Limit-Remaining"),
            post_reset=None if post_wait is None else now + post_wait,
        )
        if any(value is not None for value in _values(seen)):
            seen = replace(seen, observed_at=now)
            merged = (
                new if new is not None else old
                for old, new in zip(_values(self._quota), _values(seen), strict=True)
            )
            self._quota = Quota(*merged)
        return seen

    def _reset_at(self, seen: Quota, reason: str) -> float | None:
        """When the spent quota refills: the later reset of the limits that ran out.

        A limit counts as spent when it cannot pay for one more upload. The daily client
        budget has no reset header, so when only it ran out the time is unknown.
        """
        now = self._clock()
        source = seen if seen.observed_at is not None else self._quota

        spent: list[float] = []
        if _short(source.user_remaining, UPLOAD_CREDITS) and source.user_reset is not None:
            spent.append(source.user_reset)
        if _short(source.post_remaining, 1) and source.post_reset is not None:
            spent.append(source.post_reset)
        if spent:
            candidates = spent
        elif _short(source.client_remaining, UPLOAD_CREDITS):
            candidates = []
        else:
            candidates = [r for r in (source.user_reset, source.post_reset) if r is not None]

        wait = _WAIT.search(reason)
        if wait is not None:
            candidates.append(now + int(wait.group(1)) * _WAIT_UNITS[wait.group(2).lower()])

        future = [reset for reset in candidates if now < reset <= now + MAX_RESET_AHEAD]
        return max(future) if future else None

    # --- answers ------------------------------------------------------------------------

    async def _image_from(self, data: object, sent_mime: str | None = None) -> ImgurImage:
        """The upload Imgur accepted, or an error after taking back one that cannot be used.

        Older answers may lack ``link``; Imgur's direct links follow from the id and the type
        (``sent_mime`` when the answer has none). An answer whose id is missing or malformed,
        or whose link is malformed (not http(s), or with control characters), cannot be
        recorded or shown; if it still names a deletehash, the upload is deleted again so no
        public copy is left without a record.
        """
        image_id = _token_field(data, "id")
        link = _link_field(data, "link")
        deletehash = _token_field(data, "deletehash")
        if link is None and image_id is not None and _text_field(data, "link") is None:
            link = _direct_link(image_id, _text_field(data, "type") or sent_mime)
        if deletehash is None:
            log.warning("Imgur accepted an upload but its answer has no usable deletehash")
            raise ImgurUnavailable("Imgur took the file but did not say where it is.")
        if image_id is None or link is None:
            log.warning("Imgur accepted an upload but its answer lacks a usable id or link")
            await self._take_back(deletehash, self.delete_image)
            raise ImgurUnavailable("Imgur took the file but did not say where it is.")

        processing = data.get("processing") if isinstance(data, dict) else None
        status = _text_field(processing, "status")
        animated = data.get("animated") if isinstance(data, dict) else None
        return ImgurImage(
            id=image_id,
            link=link,
            deletehash=deletehash,
            mime=_text_field(data, "type"),
            size=_count_field(data, "size"),
            width=_count_field(data, "width"),
            height=_count_field(data, "height"),
            animated=animated is True,
            processing=status,
            mp4=_text_field(data, "mp4"),
        )


# --- the streamed file part ----------------------------------------------------------------


class _FormBody(Payload):
    """An upload's whole ``multipart/form-data`` body: the fields, then the file in chunks.

    The fields and the file part's headers are rendered into one block, which aiohttp sends
    together with the request headers, and the closing boundary is one more write. aiohttp's
    own MultipartWriter writes every boundary, header block and value on its own: with
    TCP_NODELAY that is a dozen small packets per upload, each a wake-up on Imgur's side
    (``bench.burst``).

    Sends exactly ``size`` bytes (so the request has a Content-Length); the file is read one
    chunk at a time, in a worker thread unless it is held in memory, and progress is reported
    on the event loop. A failure of the file or of the callback is kept in ``failure`` so the
    client can tell it apart from a network failure (aiohttp wraps both alike).
    """

    _autoclose = True  # the client owns the reader and closes it

    def __init__(
        self,
        request: _Request,
        body: UploadBody,
        reader: Reader,
        *,
        stall_timeout: float | None = None,
    ) -> None:
        boundary = uuid.uuid4().hex
        head = bytearray()
        for name, value in request.fields:
            disposition = content_disposition_header("form-data", name=name)
            head += _part_headers(boundary, "text/plain; charset=utf-8", disposition)
            head += value.encode() + b"\r\n"
        # Raw UTF-8 in the quoted filename, as browsers send it (RFC 7578); quoting it would
        # percent-encode it, and Imgur would keep the escapes as the name.
        disposition = content_disposition_header(
            "form-data",
            quote_fields=False,
            name=request.file_field or "image",
            filename=_safe_filename(body.filename),
        )
        mime = body.mime if _MIME.fullmatch(body.mime) else "application/octet-stream"
        head += _part_headers(boundary, mime, disposition)

        super().__init__(reader, content_type=f"multipart/form-data; boundary={boundary}")
        self._reader = reader
        self._in_memory = body.in_memory
        self._stall_timeout = stall_timeout
        self._head = bytes(head)
        self._tail = f"\r\n--{boundary}--\r\n".encode()
        self._length = body.size
        self._size = len(self._head) + body.size + len(self._tail)
        self._on_progress = request.on_progress
        self.failure: BaseException | None = None
        self.sent = 0

    @property
    def complete(self) -> bool:
        """Whether every byte of the file went out."""
        return self.sent >= self._length

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        raise TypeError("a streamed upload body cannot be decoded")

    async def write(self, writer: AbstractStreamWriter) -> None:
        await self.write_with_length(writer, None)

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        """Write the body; ``content_length`` is the Content-Length aiohttp took from ``size``."""
        loop = asyncio.get_running_loop()
        self._consumed = True
        await self._write(writer, self._head)

        sent = 0
        while sent < self._length:
            try:
                size = min(CHUNK_SIZE, self._length - sent)
                if self._in_memory:
                    chunk = self._reader.read(size)  # nothing to wait for
                else:
                    chunk = await loop.run_in_executor(None, self._reader.read, size)
            except (OSError, ValueError) as exc:
                self.failure = exc
                raise
            if not chunk:
                self.failure = ValueError("the upload body ended before its declared size")
                raise self.failure

            await self._write(writer, chunk)
            sent += len(chunk)
            self.sent = sent

            if self._on_progress is not None:
                try:
                    self._on_progress(sent)
                except Exception as exc:
                    self.failure = exc
                    raise

        await self._write(writer, self._tail)

    async def _write(self, writer: AbstractStreamWriter, data: bytes) -> None:
        # aiohttp bounds only reads once the body is out: a peer that stops reading
        # would hold the write, and the upload, forever (the total is unbounded).
        async with asyncio.timeout(self._stall_timeout):
            await writer.write(data)


def _refuse_blind_retry(part: _FormBody | None) -> None:
    """Stop an upload that was sent whole but never answered from being sent again.

    Imgur may have stored it; only its answer carries the deletehash, so a second attempt
    could leave a public copy nobody can take down. Failing is the safer choice.
    """
    if part is not None and part.complete:
        log.warning("Imgur received a whole upload but did not answer; not sending it again")
        raise ImgurUnavailable("Imgur did not confirm the upload; try again in a minute.")


def _part_headers(boundary: str, content_type: str, disposition: str) -> bytes:
    """The boundary line and header block that open one part of a multipart body."""
    return (
        f"--{boundary}\r\nContent-Type: {content_type}\r\n"
        f"Content-Disposition: {disposition}\r\n\r\n"
    ).encode()


# --- small pure helpers --------------------------------------------------------------------


def _values(quota: Quota) -> tuple[Any, ...]:
    """The fields in order; ``dataclasses.astuple`` would deep-copy them on every answer."""
    return tuple(getattr(quota, f.name) for f in fields(quota))


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    """The body, or its first MAX_ANSWER_BYTES: an answer that long is not JSON we want."""
    chunks: list[bytes] = []
    total = 0
    while total < MAX_ANSWER_BYTES:
        chunk = await response.content.read(CHUNK_SIZE)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)[:MAX_ANSWER_BYTES]


def _parse_json(raw: bytes) -> object:
    """The JSON value of the body, or None when it is empty, HTML or broken."""
    if not raw.strip():
        return None
    try:
        value: object = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return value


def _is_imgur_answer(payload: object) -> bool:
    """Whether a body is one of the API's JSON shapes (its envelope, or the 429 ``errors``)."""
    return isinstance(payload, dict) and ("data" in payload or "errors" in payload)


def _envelope_status(payload: Mapping[str, object]) -> int:
    """The error status inside a ``success: false`` envelope that came with HTTP 200."""
    status = payload.get("status")
    if isinstance(status, int) and not isinstance(status, bool) and 400 <= status < 600:
        return status
    return 400


def _imgur_reason(payload: object, secrets: Sequence[str]) -> str:
    """Imgur's short human error string from any of its error shapes, cleaned; or ""."""
    if not isinstance(payload, dict):
        return ""

    message: object = None
    data = payload.get("data")
    if isinstance(data, dict):
        message = data.get("error")
        if message is None:
            message = data.get("message")
    errors = payload.get("errors")
    if message is None and isinstance(errors, list) and errors:
        message = errors[0]

    # The error may be a string, {"message": ...}, {"detail": ...}, or nested once more.
    for _ in range(3):
        if not isinstance(message, dict):
            break
        message = message.get("message") or message.get("detail")
    if not isinstance(message, str):
        return ""
    return _clean(message, secrets)


def _clean(text: str, secrets: Sequence[str]) -> str:
    """Plain, short, printable text with no markup and no secret in it."""
    text = _ESCAPE.sub("", _TAG.sub(" ", html.unescape(text)))
    text = "".join(char if char.isprintable() else " " for char in text)
    text = " ".join(text.split())
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, "…")
    if len(text) > MAX_REASON_CHARS:
        text = text[: MAX_REASON_CHARS - 1].rstrip() + "…"
    return text


def _as_sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?", "…")) else text + "."


def _check_deletehash(deletehash: str, kind: str) -> None:
    """Refuse anything but the alphanumeric token Imgur issues, before it reaches a URL."""
    if not isinstance(deletehash, str) or not _DELETEHASH.fullmatch(deletehash):
        raise ImgurNotFound(f"That is not a deletehash Imgur could know for an {kind}.")


def _not_found_message(request: _Request) -> str:
    if request.route.startswith("/3/album"):
        return "Imgur has no such album; it may have been deleted already."
    if request.deletehash is not None:
        return "Imgur has no such image; it may have been deleted already."
    # No image or album was named, so the API route itself is missing: most often a proxy
    # address, or an IMGUR_API_URL with a path such as /3 that every route then repeats.
    return "Imgur has no such API route (HTTP 404); check IMGUR_API_URL."


def _safe_filename(filename: str) -> str:
    """A filename fit for a Content-Disposition header (no control characters, not too long)."""
    name = "".join(char for char in filename if char.isprintable() and char not in '"\\')
    name = name.strip()[-100:]
    return name or "upload"


def _token_field(data: object, name: str) -> str | None:
    """An id or deletehash: the alphanumeric tokens Imgur issues, never anything else."""
    value = _text_field(data, name)
    return value if value is not None and _DELETEHASH.fullmatch(value) else None


def _direct_link(image_id: str, mime: str | None) -> str:
    """Imgur's direct link for an upload, or its page when the type has no known suffix."""
    suffix = _LINK_SUFFIXES.get((mime or "").lower())
    if suffix is None:
        return f"https://imgur.com/{image_id}"
    return f"https://i.imgur.com/{image_id}{suffix}"


def _link_field(data: object, name: str) -> str | None:
    """An http(s) address of printable ASCII, safe to store and to print on a terminal."""
    value = _text_field(data, name)
    return value if value is not None and _LINK.fullmatch(value) else None


def _text_field(data: object, name: str) -> str | None:
    if not isinstance(data, dict):
        return None
    value = data.get(name)
    return value if isinstance(value, str) and value else None


def _count_field(data: object, name: str) -> int | None:
    if not isinstance(data, dict):
        return None
    value = data.get(name)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _number_field(data: object, name: str) -> float | None:
    if not isinstance(data, dict):
        return None
    value = data.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def _header_count(headers: Mapping[str, str], name: str) -> int | None:
    raw = headers.get(name)
    if raw is None or not _COUNT.fullmatch(raw.strip()):
        return None
    return int(raw)


def _header_number(headers: Mapping[str, str], name: str, pattern: re.Pattern[str]) -> float | None:
    raw = headers.get(name)
    if raw is None or not pattern.fullmatch(raw.strip()):
        return None
    return float(raw)


def _short(remaining: int | None, cost: int) -> bool:
    return remaining is not None and remaining < cost


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
