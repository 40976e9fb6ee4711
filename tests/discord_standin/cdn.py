"""Signed, expiring attachment URLs and the CDN that serves them."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from aiohttp import web

from .world import StoredAttachment

if TYPE_CHECKING:
    from .server import DiscordStandIn

GONE_TEXT = "This content is no longer available."
STREAM_CHUNK = 256 * 1024

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def clean_filename(filename: str) -> str:
    """Discord replaces spaces and unusual characters in uploaded file names."""
    cleaned = _UNSAFE_NAME.sub("_", filename.strip()) or "unknown"
    return cleaned[:255]


class Cdn:
    """Registry of stored files plus Discord-style URL signing (``ex``, ``is``, ``hm``)."""

    def __init__(self, standin: DiscordStandIn, *, link_ttl: float) -> None:
        self._standin = standin
        self._secret = secrets.token_bytes(32)
        self.link_ttl = link_ttl
        self.files: dict[str, StoredAttachment] = {}

    def register(self, attachment: StoredAttachment) -> None:
        self.files[attachment.path] = attachment

    def signed_url(self, attachment: StoredAttachment) -> str:
        issued = int(self._standin.clock.time())
        expires = int(issued + self.link_ttl)
        ex, is_ = f"{expires:x}", f"{issued:x}"
        signature = self._sign(attachment.path, ex, is_)
        return f"{self._standin.cdn_url}/{quote(attachment.path)}?ex={ex}&is={is_}&hm={signature}&"

    def _sign(self, path: str, ex: str, is_: str) -> str:
        message = f"{path}\n{ex}\n{is_}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def check(self, path: str, query: dict[str, str]) -> StoredAttachment | None:
        """The attachment a signed URL points at, or None when Discord would answer 404."""
        attachment = self.files.get(path)
        if attachment is None or not attachment.available:
            return None

        ex, is_, signature = query.get("ex"), query.get("is"), query.get("hm")
        if not ex or not is_ or not signature:
            return None
        if not hmac.compare_digest(signature, self._sign(path, ex, is_)):
            return None
        try:
            expires = int(ex, 16)
        except ValueError:
            return None
        if self._standin.clock.time() >= expires:
            return None
        return attachment

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        if path.startswith("media/"):
            path = path.removeprefix("media/")
        record = self._standin._record_cdn(request)

        attachment = self.check(path, dict(request.query))
        if attachment is None:
            record.status = 404
            self._standin._notify()
            return web.Response(status=404, text=GONE_TEXT)

        record.status = 200
        self._standin._notify()
        content_type = attachment.content_type or "application/octet-stream"
        if isinstance(attachment.source, Path):
            return web.FileResponse(attachment.source, headers={"Content-Type": content_type})

        data = attachment.source
        if len(data) <= STREAM_CHUNK or request.method == "HEAD":
            return web.Response(body=data, headers={"Content-Type": content_type})

        response = web.StreamResponse(headers={"Content-Type": content_type})
        response.content_length = len(data)
        await response.prepare(request)
        for start in range(0, len(data), STREAM_CHUNK):
            await response.write(data[start : start + STREAM_CHUNK])
        await response.write_eof()
        return response
