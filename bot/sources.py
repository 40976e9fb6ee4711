"""Where media comes from: local files, streams and URLs, fetched safely and spooled once."""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import logging
import os
import re
import socket
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import BinaryIO, Final, Protocol

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from blake3 import blake3
from yarl import URL

from bot import media
from bot.errors import RehostError
from bot.media import MediaLimits, MediaType

log = logging.getLogger(__name__)

CHUNK = 256 * 1024
# Chunks are hashed and written in a worker thread in batches of this size, so the event loop
# never spends more than a moment on a large file.
BATCH = 1024 * 1024
MEMORY_SPOOL_LIMIT = 1024 * 1024
TITLE_LIMIT: Final = 256  # characters of a title sent to Imgur
MAX_REDIRECTS = 5
FETCH_TIMEOUT = aiohttp.ClientTimeout(total=300, connect=10, sock_connect=10, sock_read=30)

# A host name as DNS can hold it, after IDNA (IPv6 literals are told apart by their colons).
_HOST_NAME = re.compile(r"[A-Za-z0-9._-]+")

ProgressCallback = Callable[[str, int, int | None], None]
"""Called with a stage ("download" or "upload"), bytes done and bytes in all (if known)."""


class SourceError(RehostError):
    """The source could not be read."""


class BlockedAddress(SourceError):
    """The URL points somewhere the bot must not go (a private or local address)."""


class Source(Protocol):
    """Anything the pipeline can rehost: a name, maybe a size, and a stream of bytes."""

    @property
    def filename(self) -> str: ...

    @property
    def declared_size(self) -> int | None: ...

    def chunks(self) -> AsyncIterator[bytes]: ...


@dataclass(frozen=True)
class FileSource:
    """A file on the local disk (the command line)."""

    path: Path

    @property
    def filename(self) -> str:
        return self.path.name

    @property
    def declared_size(self) -> int | None:
        return None  # stat() would block; the size is enforced while reading

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            handle = await asyncio.to_thread(_open_without_waiting, self.path)
        except OSError as exc:
            raise SourceError(f"Cannot read the file: {exc.strerror}.") from exc
        try:
            while True:
                try:
                    chunk = await asyncio.to_thread(handle.read, BATCH)
                except OSError as exc:
                    raise SourceError(f"Cannot read the file: {exc.strerror}.") from exc
                if not chunk:
                    break
                yield chunk
        finally:
            await asyncio.to_thread(handle.close)


def _open_without_waiting(path: Path) -> BinaryIO:
    """Open ``path`` for reading; a named pipe nobody writes to reads as empty.

    A plain open() of such a pipe waits for a writer, for ever and deaf to Ctrl-C (it blocks
    a worker thread). A pipe that already has one, as ``<(command)`` gives, reads as usual.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@dataclass(frozen=True)
class StreamSource:
    """Bytes arriving from elsewhere, such as an HTTP request body."""

    stream: AsyncIterator[bytes]
    filename: str = "upload"
    declared_size: int | None = None

    def chunks(self) -> AsyncIterator[bytes]:
        return self.stream


@dataclass(frozen=True)
class UrlSource:
    """A URL on the internet, fetched through a ``Fetcher`` that keeps to public addresses."""

    url: str
    fetcher: Fetcher
    filename: str = field(default="")
    declared_size: int | None = None

    def __post_init__(self) -> None:
        if not self.filename:
            try:
                name = URL(self.url).name if "://" in self.url else ""
            except ValueError:
                name = ""  # a malformed link; fetching it says so
            object.__setattr__(self, "filename", name or "download")

    def chunks(self) -> AsyncIterator[bytes]:
        return self.fetcher.stream(self.url)


def is_public_address(address: str) -> bool:
    """Whether ``address`` is a global unicast address that is safe to connect to."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_site_local:
            return False  # deprecated, yet still routed inside some networks
        # An IPv4 address inside an IPv6 one (mapped, or a 6to4 tunnel end) must pass too.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None and not is_public_address(str(embedded)):
            return False
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


class PublicOnlyResolver(AbstractResolver):
    """A resolver that refuses names resolving to loopback, private or other local addresses.

    The connector connects to exactly the addresses returned here, so the check holds at
    connection time, for every redirect, and against DNS answers that change between lookups.
    """

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not all(is_public_address(result["host"]) for result in results):
            log.warning("refused a URL whose host resolves to a non-public address")
            raise BlockedAddress("That URL points to a private or local address.")
        return results

    async def close(self) -> None:
        await self._inner.close()


class Fetcher:
    """Downloads untrusted URLs: http(s) only, public addresses only, bounded in every way."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        allow_private: bool = False,
        hosts: frozenset[str] | None = None,
    ) -> None:
        """``hosts``, when given, are the only hosts fetched from, redirects included."""
        self._session = session
        self._allow_private = allow_private
        self._hosts = hosts

    def serves(self, url: str) -> bool:
        """Whether ``url`` is on a host this fetcher may fetch from."""
        if self._hosts is None:
            return True
        try:
            return URL(url.strip()).host in self._hosts
        except ValueError:
            return False

    @classmethod
    def create_session(cls, *, allow_private: bool = False) -> aiohttp.ClientSession:
        """A session for untrusted URLs: no proxies from the environment, guarded DNS."""
        resolver = None if allow_private else PublicOnlyResolver()
        connector = aiohttp.TCPConnector(resolver=resolver, limit=32)
        return aiohttp.ClientSession(
            connector=connector,
            timeout=FETCH_TIMEOUT,
            trust_env=False,
            headers={"User-Agent": "imgur-rehost-bot (+https://github.com/)"},
        )

    def check_url(self, url: URL) -> None:
        """Refuse schemes other than http(s), user-info, and literal non-public addresses."""
        if url.scheme not in {"http", "https"}:
            raise SourceError("Only http and https links can be rehosted.")
        if not url.host:
            raise SourceError("That link has no host name.")
        raw_host = url.raw_host or ""
        if ":" not in raw_host and not _HOST_NAME.fullmatch(raw_host):
            # yarl keeps percent escapes and spaces in a host as they came; no DNS name
            # holds them, so the link is refused here instead of being asked of DNS.
            raise SourceError("That is not a valid link.")
        if url.user is not None or url.password is not None:
            raise SourceError("Links with a user name or password cannot be rehosted.")
        if self._hosts is not None and url.host not in self._hosts:
            raise BlockedAddress("That link leads away from the server that gave it.")
        if self._allow_private:
            return
        try:
            public = is_public_address(url.host)
        except ValueError:
            return  # a name: PublicOnlyResolver checks what it resolves to
        if not public:
            raise BlockedAddress("That URL points to a private or local address.")

    async def stream(self, url: str) -> AsyncIterator[bytes]:
        """The body at ``url`` in chunks, following at most ``MAX_REDIRECTS`` redirects."""
        try:
            target = URL(url.strip())
        except ValueError as exc:
            raise SourceError("That is not a valid link.") from exc

        for _ in range(MAX_REDIRECTS + 1):
            self.check_url(target)
            try:
                async with self._session.get(target, allow_redirects=False) as response:
                    if response.status in {301, 302, 303, 307, 308}:
                        location = response.headers.get("Location")
                        if not location:
                            raise SourceError("The link redirects nowhere.")
                        try:
                            target = target.join(URL(location))
                        except ValueError as exc:
                            raise SourceError("The link redirects to an invalid address.") from exc
                        continue
                    if response.status != 200:
                        raise SourceError(
                            f"The link answered HTTP {response.status}; is it still available?"
                        )
                    async for chunk in response.content.iter_chunked(CHUNK):
                        yield chunk
                    return
            except aiohttp.ClientPayloadError as exc:
                raise media.TruncatedMedia("The download was cut short; try again.") from exc
            except aiohttp.InvalidURL as exc:
                # aiohttp refuses hosts such as "2130706433" or "127.1" that only some
                # resolvers read as addresses: the link is refused before any lookup.
                raise SourceError("That is not a valid link.") from exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise SourceError(
                    "The link could not be downloaded (connection failed or timed out)."
                ) from exc
        raise SourceError(f"The link redirects more than {MAX_REDIRECTS} times.")


class HeldChunks(io.RawIOBase):
    """A reader over chunks held in memory that hands each one out as it is, uncopied."""

    def __init__(self, chunks: Sequence[bytes]) -> None:
        super().__init__()
        self._chunks = deque(chunks)

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1, /) -> bytes:
        """At most ``size`` bytes (all that is left when negative); fewer at a chunk's end."""
        if size is None or size < 0:
            rest = b"".join(self._chunks)
            self._chunks.clear()
            return rest
        if not self._chunks or size == 0:
            return b""
        chunk = self._chunks.popleft()
        if len(chunk) > size:
            self._chunks.appendleft(chunk[size:])
            chunk = chunk[:size]
        return chunk


class Spool:
    """Bytes received once, hashed on the way in, and readable again for every upload attempt.

    Small files stay in memory; larger ones go to a temporary file that is removed on close.
    Its blocking work runs on ``executor`` (None: the event loop's default executor). It
    satisfies ``bot.imgur.UploadBody``.
    """

    def __init__(
        self, filename: str, directory: Path | None = None, executor: Executor | None = None
    ) -> None:
        self.filename = filename
        self.mime = "application/octet-stream"
        self.size = 0
        self.media_type: MediaType | None = None
        self._directory = directory
        self._executor = executor
        # BLAKE3, not SHA-256: it tells the same bytes apart as surely and, on one core of
        # the 2-core machine the benchmark runs on, hashes 9.7 GB/s against SHA-256's 2.0;
        # the spool hashes every byte of every upload.
        self._hash = blake3()
        # Small files: the chunks as they came. They are never joined: a fresh megabyte costs
        # hundreds of page faults, more than the hash of it (bench/).
        self._chunks: list[bytes] = []
        self._held = 0
        self._file: BinaryIO | None = None
        self._path: Path | None = None
        self._tail = b""

    @property
    def digest(self) -> str:
        """The BLAKE3 digest of the bytes, in hexadecimal: the ledger's key for them."""
        return self._hash.hexdigest()

    @property
    def kind(self) -> media.MediaKind:
        assert self.media_type is not None, "spool has not been filled"
        return self.media_type.kind

    @property
    def in_memory(self) -> bool:
        return self._path is None

    def open(self) -> HeldChunks | BinaryIO:
        """A fresh reader at the first byte; blocking for a file on disk."""
        if self._path is None:
            return HeldChunks(self._chunks)
        return self._path.open("rb")

    def absorb(self, data: bytes) -> None:
        """Hash and store ``data``; blocking, so called from a worker thread."""
        self._hash.update(data)
        self._tail = (self._tail + data[-media.TAIL_BYTES :])[-media.TAIL_BYTES :]
        if self._file is None and self._held + len(data) > MEMORY_SPOOL_LIMIT:
            handle, name = tempfile.mkstemp(prefix="rehost-", dir=self._directory)
            self._path = Path(name)
            self._file = os.fdopen(handle, "wb")
            self._file.writelines(self._chunks)
            self._chunks, self._held = [], 0
        if self._file is None:
            self._chunks.append(data)
            self._held += len(data)
        else:
            self._file.write(data)

    async def run(self, work: Callable[[], None]) -> None:
        """Run blocking ``work`` on the spool's executor."""
        await asyncio.get_running_loop().run_in_executor(self._executor, work)

    async def release(self) -> None:
        """``close``, in a worker thread when there is a file to remove."""
        if self._path is None:
            self.close()
        else:
            await self.run(self.close)

    def absorb_all(self, chunks: list[bytes]) -> None:
        """``absorb`` each chunk in turn; blocking."""
        for chunk in chunks:
            self.absorb(chunk)

    def finish(self) -> None:
        """Flush the file; blocking."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def close(self) -> None:
        """Release the memory or the temporary file; blocking."""
        self._chunks, self._held = [], 0
        self.finish()
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
            self._path = None

    @property
    def tail(self) -> bytes:
        return self._tail


async def spool(
    source: Source,
    limits: MediaLimits,
    *,
    directory: Path | None = None,
    on_progress: ProgressCallback | None = None,
    executor: Executor | None = None,
) -> Spool:
    """Read ``source`` once: sniff its type, enforce the limits, hash it, keep it for upload.

    The type is judged from the first bytes, so a file that is not media is refused before the
    rest is downloaded; the size is checked before reading when announced, and while reading
    in any case. Hashing and writing run on ``executor`` (None: the default executor).

    Raises:
        MediaError: not media, too large, empty or cut short.
        SourceError: the source could not be read.
    """
    declared = source.declared_size
    if declared is not None:
        media.check_size(declared, limits)
    result = Spool(source.filename, directory, executor)
    pending: asyncio.Future[None] | None = None
    # Chunks go to a worker thread as they came, to be hashed and written there: the event
    # loop never copies the bytes (copying megabytes on the loop stalled it for milliseconds).
    batch: list[bytes] = []
    batched = 0
    head = b""

    chunks = source.chunks()
    try:
        async for chunk in chunks:
            if batched >= BATCH:
                # A full batch and more to come: hash it while the rest arrives. A source
                # that ends here is hashed by the last hand-over alone (one, not two, for a
                # small attachment).
                if pending is not None:
                    await pending
                pending = asyncio.ensure_future(result.run(partial(result.absorb_all, batch)))
                batch, batched = [], 0
            batch.append(chunk)
            batched += len(chunk)
            result.size += len(chunk)
            if declared is not None and result.size > declared:
                # Stop at the first byte too many, not at the limit of the kind.
                raise SourceError(
                    f"The file is longer than the {declared} bytes announced; try again."
                )
            if result.media_type is None:
                head += chunk[: media.SNIFF_BYTES - len(head)]
                if len(head) < media.SNIFF_BYTES:
                    continue
                _identify(result, head, limits, declared)
            media.check_size(result.size, limits, result.media_type, so_far=True)
            if on_progress is not None:
                on_progress("download", result.size, declared)

        if result.media_type is None:
            _identify(result, head, limits, declared)
        if pending is not None:
            await pending
        await result.run(partial(_finish, result, batch))
    except BaseException:
        # A source refused part way (too large, not media) is closed now, not whenever the
        # garbage collector finalizes its generator: by then the loop, or the test, is gone.
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            with contextlib.suppress(Exception):
                await aclose()
        if pending is not None:
            with contextlib.suppress(BaseException):
                await pending
        await result.release()
        raise

    if declared is not None and result.size != declared:
        await result.release()
        raise media.TruncatedMedia(
            f"Received {result.size} bytes but {declared} were announced; try again."
        )
    assert result.media_type is not None
    try:
        media.check_ending(result.media_type, result.tail)
        media.check_length(result.media_type, head, result.size)
    except media.MediaError:
        await result.release()
        raise
    return result


def _identify(result: Spool, head: bytes, limits: MediaLimits, declared: int | None) -> None:
    result.media_type = media.sniff(head)
    result.mime = result.media_type.mime
    result.filename = f"{clean_stem(result.filename)}.{result.media_type.extension}"
    if declared is not None:
        media.check_size(declared, limits, result.media_type)


def clean_title(title: str | None) -> str | None:
    """A title on one line without control characters; None when blank.

    Raises:
        SourceError: longer than ``TITLE_LIMIT`` once cleaned.
    """
    if title is None:
        return None
    cleaned = " ".join("".join(c if c.isprintable() else " " for c in title).split())
    if len(cleaned) > TITLE_LIMIT:
        raise SourceError(f"The title may be at most {TITLE_LIMIT} characters.")
    return cleaned or None


def clean_stem(filename: str) -> str:
    """A file name's stem made safe to show and send: printable, no paths, at most 80 chars."""
    stem = Path(filename.replace("\\", "/")).stem
    kept = "".join(c for c in stem if c.isalnum() or c in " ._-()[]")
    return kept.strip(" .")[:80] or "upload"


def _finish(result: Spool, last: list[bytes]) -> None:
    result.absorb_all(last)
    result.finish()
