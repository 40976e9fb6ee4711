"""Streaming end to end: bytes go from their source to Imgur in chunks, hashed in the same
pass, never whole in memory, and the blocking work (hashing, file I/O) off the event loop."""

from __future__ import annotations

import asyncio
import hashlib
import threading
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

import pytest
from blake3 import blake3

from bench.files import write_animated_gif
from bot import sources
from bot.ledger import Origin
from bot.media import MediaLimits
from bot.services import Services, open_services
from bot.settings import Settings
from bot.sources import FileSource, Spool, StreamSource
from tests import samples
from tests.imgur_standin import ImgurStandIn

MB = 1024 * 1024
ORIGIN = Origin(door="cli", filename="big.gif")


class Hash(Protocol):
    def update(self, data: bytes, /) -> object: ...

    def hexdigest(self) -> str: ...


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    async with open_services(settings) as opened:
        yield opened


@pytest.fixture
def big_gif(tmp_path: Path) -> Path:
    return write_animated_gif(tmp_path / "big.gif", 48 * MB)


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    yield
    tracemalloc.stop()


@pytest.mark.usefixtures("traced")
async def test_a_large_file_goes_to_imgur_without_being_held_whole(
    services: Services, imgur: ImgurStandIn, big_gif: Path
) -> None:
    tracemalloc.reset_peak()
    rehost = await services.pipeline.rehost(FileSource(big_gif), ORIGIN)
    _, peak = tracemalloc.get_traced_memory()

    assert peak < 12 * MB  # the file is 48 MB; a copy of it, or its base64, would show
    [request] = imgur.uploads()
    assert request.encoding == "multipart"
    assert request.bytes_received == 48 * MB
    assert int(request.headers["Content-Length"]) <= 48 * MB * 1.001
    stored = imgur.images[rehost.upload.imgur_id or ""]
    assert stored.sha256 == _digest_of(big_gif, hashlib.sha256())
    assert rehost.upload.digest == _digest_of(big_gif, blake3())


@pytest.mark.usefixtures("traced")
async def test_a_stream_is_spooled_and_uploaded_without_being_held_whole(
    services: Services, imgur: ImgurStandIn, tmp_path: Path
) -> None:
    path = write_animated_gif(tmp_path / "stream.gif", 32 * MB)

    async def arriving() -> AsyncIterator[bytes]:
        with path.open("rb") as handle:
            while chunk := handle.read(64 * 1024):
                yield chunk

    tracemalloc.reset_peak()
    await services.pipeline.rehost(StreamSource(arriving(), filename="s.gif"), ORIGIN)
    _, peak = tracemalloc.get_traced_memory()

    assert peak < 10 * MB
    assert imgur.uploads()[0].bytes_received == 32 * MB


async def test_hashing_and_file_io_run_off_the_event_loop(
    services: Services, big_gif: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    absorbing: set[int] = set()
    reading: set[int] = set()
    absorb = Spool.absorb
    open_spool = Spool.open

    def watched_absorb(self: Spool, data: bytes) -> None:
        absorbing.add(threading.get_ident())
        absorb(self, data)

    def watched_open(self: Spool) -> BinaryIO:
        return _WatchedReader(open_spool(self), reading)

    monkeypatch.setattr(Spool, "absorb", watched_absorb)
    monkeypatch.setattr(Spool, "open", watched_open)

    await services.pipeline.rehost(FileSource(big_gif), ORIGIN)

    assert absorbing
    assert loop_thread not in absorbing
    assert reading
    assert loop_thread not in reading


async def test_every_spool_hashes_on_the_one_spool_thread(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Several hashing threads would fight the event loop for the GIL (bench/burst.py).
    absorbing: set[str] = set()
    absorb = Spool.absorb

    def watched_absorb(self: Spool, data: bytes) -> None:
        absorbing.add(threading.current_thread().name)
        absorb(self, data)

    monkeypatch.setattr(Spool, "absorb", watched_absorb)

    async def arriving(seed: int) -> AsyncIterator[bytes]:
        yield samples.png(seed=seed)

    await asyncio.gather(
        *(
            services.pipeline.rehost(StreamSource(arriving(seed), f"{seed}.png"), ORIGIN)
            for seed in range(6)
        )
    )

    [thread] = absorbing
    assert thread.startswith("spool")


async def test_the_spool_hashes_in_the_same_pass_and_keeps_large_files_on_disk(
    big_gif: Path, tmp_path: Path
) -> None:
    spooled = await sources.spool(FileSource(big_gif), MediaLimits(), directory=tmp_path)
    try:
        assert spooled.digest == _digest_of(big_gif, blake3())
        assert spooled.size == 48 * MB
        on_disk = [p for p in tmp_path.iterdir() if p.name.startswith("rehost-")]
        assert len(on_disk) == 1
        with spooled.open() as reader:
            assert blake3(reader.read()).hexdigest() == spooled.digest
    finally:
        spooled.close()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("rehost-")]


class _WatchedReader:
    """A reader that notes which threads read from it."""

    def __init__(self, inner: BinaryIO, threads: set[int]) -> None:
        self._inner = inner
        self._threads = threads

    def read(self, size: int = -1) -> bytes:
        self._threads.add(threading.get_ident())
        return self._inner.read(size)

    def close(self) -> None:
        self._inner.close()

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


def _digest_of(path: Path, digest: Hash) -> str:
    with path.open("rb") as handle:
        while chunk := handle.read(MB):
            digest.update(chunk)
    return digest.hexdigest()
