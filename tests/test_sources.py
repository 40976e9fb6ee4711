import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from blake3 import blake3
from yarl import URL

from bot import media, sources
from bot.media import MediaLimits
from bot.sources import BlockedAddress, Fetcher, FileSource, SourceError, StreamSource, UrlSource
from tests import samples
from tests.conftest import WebFiles

LIMITS = MediaLimits(image=5 * 1024 * 1024, video=20 * 1024 * 1024)


@pytest.fixture
async def open_fetcher() -> AsyncIterator[Fetcher]:
    async with Fetcher.create_session(allow_private=True) as session:
        yield Fetcher(session, allow_private=True)


@pytest.fixture
async def guarded_fetcher() -> AsyncIterator[Fetcher]:
    async with Fetcher.create_session() as session:
        yield Fetcher(session)


async def stream_of(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def test_spool_hashes_and_keeps_a_small_file_in_memory() -> None:
    data = samples.png(seed=3)

    spooled = await sources.spool(StreamSource(stream_of(data), "photo.PNG"), LIMITS)

    assert spooled.digest == blake3(data).hexdigest()
    assert spooled.size == len(data)
    assert spooled.mime == "image/png"
    assert spooled.filename == "photo.png"
    assert spooled.open().read() == data
    spooled.close()


async def test_a_small_spool_hands_out_the_chunks_it_holds_without_copying_them() -> None:
    data = samples.png(seed=4)
    chunks = [data[:100], data[100:]]
    spooled = await sources.spool(StreamSource(stream_of(*chunks), "photo.png"), LIMITS)

    assert spooled.in_memory
    with spooled.open() as reader, spooled.open() as again:
        assert reader.read(1024 * 1024) is chunks[0]
        assert reader.read(1024 * 1024) is chunks[1]
        assert reader.read(1024 * 1024) == b""
        assert again.read(40) + again.read(200) + again.read() == data
    spooled.close()


async def test_spool_moves_a_large_file_to_disk_and_removes_it_on_close(tmp_path: Path) -> None:
    data = samples.big_png(3 * 1024 * 1024, seed=1)
    chunks = [data[i : i + 100_000] for i in range(0, len(data), 100_000)]

    spooled = await sources.spool(StreamSource(stream_of(*chunks), "x"), LIMITS, directory=tmp_path)

    assert list(tmp_path.iterdir()), "a temporary file should hold the bytes"
    assert not spooled.in_memory
    with spooled.open() as first, spooled.open() as second:
        assert first.read() == data
        assert second.read(8) == data[:8]
    assert spooled.digest == blake3(data).hexdigest()
    spooled.close()
    assert not list(tmp_path.iterdir())


async def test_spool_refuses_non_media_after_the_first_chunk() -> None:
    served = 0

    async def endless_zip() -> AsyncIterator[bytes]:
        nonlocal served
        while True:
            served += 1
            yield b"PK\x03\x04" + bytes(128 * 1024)

    with pytest.raises(media.UnsupportedMedia):
        await sources.spool(StreamSource(endless_zip(), "photo.png"), LIMITS)
    assert served == 1


async def test_a_file_over_the_limit_is_not_said_to_be_the_size_read_so_far(
    tmp_path: Path,
) -> None:
    # Reading stops a chunk past the limit: a 12 MB file was reported as "5.2 MB".
    path = tmp_path / "poster.png"
    path.write_bytes(samples.big_png(12 * 1024 * 1024, seed=3))

    with pytest.raises(media.MediaTooLarge) as caught:
        await sources.spool(FileSource(path), LIMITS)

    assert str(caught.value) == "The file is over 5 MB; images may be at most 5 MB."


async def test_spool_refuses_a_declared_size_over_the_limit_before_reading() -> None:
    async def never() -> AsyncIterator[bytes]:
        raise AssertionError("must not be read")
        yield b""

    source = StreamSource(never(), "big.mp4", declared_size=21 * 1024 * 1024)
    with pytest.raises(media.MediaTooLarge, match="at most 20 MB"):
        await sources.spool(source, LIMITS)


async def test_spool_stops_a_stream_that_grows_past_the_limit_of_its_kind() -> None:
    async def growing_png() -> AsyncIterator[bytes]:
        yield samples.png()[:33]
        while True:
            yield bytes(512 * 1024)

    with pytest.raises(media.MediaTooLarge, match="images may be at most 5 MB"):
        await sources.spool(StreamSource(growing_png(), "a.png"), LIMITS)


async def test_spool_notices_fewer_bytes_than_announced() -> None:
    data = samples.png()
    source = StreamSource(stream_of(data), "a.png", declared_size=len(data) + 10)

    with pytest.raises(media.TruncatedMedia, match="announced"):
        await sources.spool(source, LIMITS)


async def test_spool_refuses_empty_input() -> None:
    with pytest.raises(media.EmptyMedia):
        await sources.spool(StreamSource(stream_of(), "a.png"), LIMITS)


async def test_file_source_reads_a_local_file(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(samples.mp4(600_000))

    spooled = await sources.spool(FileSource(path), LIMITS)

    assert spooled.kind is media.MediaKind.VIDEO
    assert spooled.size == 600_000
    spooled.close()


async def test_file_source_reports_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="Cannot read"):
        await sources.spool(FileSource(tmp_path / "nope.png"), LIMITS)


async def test_file_source_reports_a_directory(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="Is a directory"):
        await sources.spool(FileSource(tmp_path), LIMITS)


async def test_a_named_pipe_nobody_writes_to_is_empty_rather_than_a_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "photo.png"
    os.mkfifo(fifo)

    with pytest.raises(media.EmptyMedia):
        await asyncio.wait_for(sources.spool(FileSource(fifo), LIMITS), 10)


async def test_a_pipe_with_a_writer_is_read_as_a_file() -> None:
    # What `python -m bot upload <(curl ...)` hands over: /dev/fd/N, a pipe already written.
    data = samples.png(seed=9)
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, data)
        os.close(write_end)
        spooled = await sources.spool(FileSource(Path(f"/dev/fd/{read_end}")), LIMITS)
    finally:
        os.close(read_end)

    assert spooled.digest == blake3(data).hexdigest()
    spooled.close()


@pytest.mark.parametrize(
    "name", ["../../etc/passwd.png", "a\x00b\x1b[31m.png", "\u202egnp.exe", "x" * 5000 + ".png"]
)
def test_absurd_file_names_are_made_safe(name: str) -> None:
    stem = sources.clean_stem(name)

    assert stem
    assert len(stem) <= 80
    assert all(c.isalnum() or c in " ._-()[]" for c in stem)
    assert "/" not in stem


async def test_url_source_downloads_through_redirects(
    web_files: WebFiles, open_fetcher: Fetcher
) -> None:
    data = samples.png(seed=9)
    web_files.serve_bytes("/final.png", data)

    async def hop(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/final.png")

    url = web_files.serve("/start", hop)

    spooled = await sources.spool(UrlSource(url, open_fetcher), LIMITS)

    assert spooled.open().read() == data
    assert web_files.hits == ["/start", "/final.png"]
    spooled.close()


async def test_too_many_redirects_are_refused(web_files: WebFiles, open_fetcher: Fetcher) -> None:
    async def loop(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/loop")

    url = web_files.serve("/loop", loop)

    with pytest.raises(SourceError, match="redirects more than 5 times"):
        await sources.spool(UrlSource(url, open_fetcher), LIMITS)
    assert len(web_files.hits) == 6


async def test_an_error_status_is_reported(web_files: WebFiles, open_fetcher: Fetcher) -> None:
    with pytest.raises(SourceError, match="HTTP 404"):
        await sources.spool(UrlSource(web_files.url("/missing.png"), open_fetcher), LIMITS)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "gopher://example.com/",
        "data:image/png;base64,iVBORw0KGgo=",
        "http://user:pass@example.com/a.png",
        "http:///a.png",
    ],
)
async def test_other_schemes_and_user_info_are_refused(url: str, guarded_fetcher: Fetcher) -> None:
    with pytest.raises(SourceError):
        await sources.spool(UrlSource(url, guarded_fetcher), LIMITS)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "10.1.2.3",
        "192.168.0.1",
        "172.16.5.4",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "[::1]",
        "[fe80::1]",
        "[fc00::1]",
        "[::ffff:127.0.0.1]",
        "localhost",
    ],
)
async def test_private_and_local_addresses_are_refused(host: str, guarded_fetcher: Fetcher) -> None:
    with pytest.raises(BlockedAddress, match="private or local address"):
        await sources.spool(UrlSource(f"http://{host}:1/a.png", guarded_fetcher), LIMITS)


@pytest.mark.parametrize("host", ["%31%30.0.0.1", "127.0.0.1 ", "exa%00mple.com", "a%2fb.example"])
async def test_a_host_no_dns_name_can_hold_is_refused_before_any_lookup(
    host: str, open_fetcher: Fetcher
) -> None:
    # yarl keeps such hosts as they came; they must not reach DNS, even where private
    # addresses are allowed.
    with pytest.raises(SourceError, match="not a valid link"):
        open_fetcher.check_url(URL(f"http://{host}/a.png"))


@pytest.mark.parametrize(
    "host",
    ["example.com", "b\u00fccher.example", "xn--bcher-kva.example", "my_host.example",
     "93.184.216.34", "[2606:4700:4700::1111]", "[fe80::1%25eth0]"],
)  # fmt: skip
async def test_ordinary_host_names_and_addresses_pass_the_host_check(
    host: str, open_fetcher: Fetcher
) -> None:
    open_fetcher.check_url(URL(f"http://{host}/a.png"))


@pytest.mark.parametrize("host", ["2130706433", "0x7f000001", "0177.0.0.1", "127.1"])
async def test_numeric_forms_of_loopback_are_refused(host: str, guarded_fetcher: Fetcher) -> None:
    with pytest.raises(SourceError):
        await sources.spool(UrlSource(f"http://{host}:1/a.png", guarded_fetcher), LIMITS)


async def test_a_redirect_to_a_private_address_is_refused_before_connecting(
    web_files: WebFiles,
) -> None:
    # The first hop is allowed (a closed-network fetcher) only to reach the redirect; the
    # guard is then applied to where it points, as it is to every hop.
    async def to_metadata(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data")

    url = web_files.serve("/redirect", to_metadata)

    async with Fetcher.create_session(allow_private=True) as session:
        with pytest.raises(BlockedAddress):
            await sources.spool(UrlSource(url, _FirstHopOpen(session)), LIMITS)
    assert web_files.hits == ["/redirect"]


class _FirstHopOpen(Fetcher):
    """Allows the test server's own loopback address, and only that, for the first hop."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        super().__init__(session)
        self._first = True

    def check_url(self, url: object) -> None:
        if self._first:
            self._first = False
            return
        super().check_url(url)  # type: ignore[arg-type]


async def test_an_endless_body_is_cut_at_the_limit(
    web_files: WebFiles, open_fetcher: Fetcher
) -> None:
    async def endless(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(samples.png()[:33])
        try:
            for _ in range(10_000):
                await response.write(bytes(256 * 1024))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    url = web_files.serve("/endless.png", endless)

    with pytest.raises(media.MediaTooLarge):
        await sources.spool(UrlSource(url, open_fetcher), LIMITS)


async def test_a_body_shorter_than_its_content_length_is_truncated(
    web_files: WebFiles, open_fetcher: Fetcher
) -> None:
    async def short(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "100000"})
        await response.prepare(request)
        await response.write(samples.png()[:40])
        request.transport.close()  # type: ignore[union-attr]
        return response

    url = web_files.serve("/short.png", short)

    with pytest.raises(media.TruncatedMedia):
        await sources.spool(UrlSource(url, open_fetcher), LIMITS)
