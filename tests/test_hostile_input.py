"""Every entry of the hostile corpus (``tests/hostile``) against the real pipeline and doors.

Each file must get its own clear error with nothing sent to Imgur and nothing recorded; each
link must be refused before a single connection is attempted. A tripwire on the event loop
records every socket connection and lets only the test's own loopback servers through, so
"no request left" is observed, not assumed. Names are resolved by an offline resolver: a
table for the corpus's ``.test`` names and the C library for numeric forms, never real DNS.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from bot import sources
from bot.errors import RehostError
from bot.ledger import Origin
from bot.services import Services, open_services
from bot.settings import Settings, load_settings
from bot.sources import StreamSource
from tests import hostile, samples
from tests.conftest import WebFiles
from tests.imgur_standin import ImgurStandIn

ROOT = Path(__file__).resolve().parent.parent
CHUNK = 64 * 1024
ORIGIN = Origin(door="http", requester_id=7)
# The test server plays "the internet" for the redirect cases: this host name leads to it.
PUBLIC_NAME = "cdn.test"
LOOPBACK = "127.0.0.1"


def socket_buffer_ceiling() -> int:
    """The most bytes the kernel may hold between a TCP sender and a reader that stopped."""
    try:
        receive = Path("/proc/sys/net/ipv4/tcp_rmem").read_text().split()[2]
        send = Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2]
        return int(receive) + int(send)
    except (OSError, IndexError, ValueError):
        return 64 * 1024 * 1024


# --- the rig: offline DNS, a connection tripwire, a guarded pipeline ------------------------


class OfflineResolver(AbstractResolver):
    """Answers the corpus's names from a table; numeric forms as the C library reads them."""

    extra: ClassVar[dict[str, list[str]]] = {}

    def __init__(self) -> None:
        self._numeric = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        name = host.rstrip(".").lower()
        table = {**hostile.HOSTS, **self.extra}
        if name in table:
            return [_result(host, address, port) for address in table[name]]
        if _is_numeric(host):
            # getaddrinfo reads "0x7f000001", "0177.0.0.1" or "127.1" without asking DNS.
            return await self._numeric.resolve(host, port, family)
        raise OSError(errno.ENOENT, f"{host} is not in the offline resolver's table")

    async def close(self) -> None:
        await self._numeric.close()


def _is_numeric(host: str) -> bool:
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return True


def _result(host: str, address: str, port: int) -> ResolveResult:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return ResolveResult(hostname=host, host=address, port=port, family=family, proto=0, flags=0)


@dataclass
class Tripwire:
    """Every socket connection the event loop was asked to make, and which ones it refused."""

    allowed: set[str] = field(default_factory=lambda: {LOOPBACK})
    attempts: list[tuple[str, int]] = field(default_factory=list)

    def refused(self) -> list[tuple[str, int]]:
        return [a for a in self.attempts if a[0] not in self.allowed]


@pytest.fixture
async def tripwire(monkeypatch: pytest.MonkeyPatch) -> Tripwire:
    loop = asyncio.get_running_loop()
    real_connect = loop.sock_connect
    wire = Tripwire()

    async def guarded(sock: socket.socket, address: Any) -> None:
        host, port = str(address[0]), int(address[1])
        wire.attempts.append((host, port))
        if host not in wire.allowed:
            raise OSError(errno.ENETUNREACH, "the test tripwire refused the connection")
        await real_connect(sock, address)

    monkeypatch.setattr(loop, "sock_connect", guarded)
    monkeypatch.setattr(sources, "DefaultResolver", OfflineResolver)
    return wire


@pytest.fixture
def guarded_settings(imgur: ImgurStandIn, tmp_path: Path) -> Settings:
    """Production rules for links (no private addresses), the corpus's size limits."""
    return load_settings(
        {
            "IMGUR_CLIENT_ID": imgur.client_id,
            "IMGUR_API_URL": imgur.url,
            "DATABASE_PATH": str(tmp_path / "ledger.sqlite3"),
            "MAX_IMAGE_MB": str(hostile.IMAGE_LIMIT // hostile.MB),
            "MAX_VIDEO_MB": str(hostile.VIDEO_LIMIT // hostile.MB),
        },
        env_file=None,
    )


@pytest.fixture
async def guarded(guarded_settings: Settings, tripwire: Tripwire) -> AsyncIterator[Services]:
    async with open_services(guarded_settings) as services:
        yield services


async def assert_nothing_happened(services: Services, imgur: ImgurStandIn) -> None:
    assert imgur.upload_calls == 0
    assert imgur.images == {}
    assert await services.ledger.pending_uploads() == []
    assert await services.ledger.count_uploads_since(0) == 0
    assert await services.ledger.recent_rehosts(limit=5) == []


def assert_one_sentence(error: RehostError) -> None:
    text = str(error)
    assert text == error.user_message
    assert text, "an error needs a sentence"
    assert "\n" not in text, text
    assert len(text) <= 200, text
    assert text.endswith((".", "?")), text
    assert "Traceback" not in text, text
    assert "Errno" not in text, text


# --- files ---------------------------------------------------------------------------------


FILES = hostile.files()


@pytest.mark.parametrize("entry", FILES, ids=[f.id for f in FILES])
async def test_hostile_file_is_refused_with_its_own_error(
    entry: hostile.HostileFile, guarded: Services, imgur: ImgurStandIn
) -> None:
    served = 0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal served
        for start in range(0, len(entry.data), CHUNK):
            served += 1
            yield entry.data[start : start + CHUNK]
        for _ in range(entry.extra_chunks):
            served += 1
            yield bytes(CHUNK)

    source = StreamSource(stream(), entry.name, entry.declared_size)

    with pytest.raises(RehostError) as caught:
        await guarded.pipeline.rehost(source, ORIGIN)

    assert type(caught.value) is entry.error, f"{entry.why}: {caught.value!r}"
    assert_one_sentence(caught.value)
    await assert_nothing_happened(guarded, imgur)
    # A stream is read no further than needed to refuse it.
    most = (hostile.VIDEO_LIMIT + len(entry.data)) // CHUNK + 2
    if entry.id == "longer-than-declared":
        most = len(entry.data) // CHUNK + 2
    elif entry.id == "declared-over-every-limit":
        most = 0  # refused before the first byte
    elif entry.id == "declared-over-image-limit":
        most = 1  # refused as soon as the first bytes show it is an image
    elif entry.id in {"endless-image", "image-over-limit"}:
        most = hostile.IMAGE_LIMIT // CHUNK + 2
    assert served <= most, f"read {served} chunks of {entry.id}"


async def test_every_corpus_file_gets_one_error_line_from_the_command_line(
    imgur: ImgurStandIn, tmp_path: Path
) -> None:
    paths = []
    for index, entry in enumerate(FILES):
        if entry.declared_size is not None or entry.extra_chunks:
            continue  # a file on disk announces no size and does not grow
        folder = tmp_path / f"{index:02d}"
        folder.mkdir()
        path = folder / entry.name
        path.write_bytes(entry.data)
        paths.append(path)
    # Names that would forge or hide lines on a terminal, carrying a ZIP.
    for index, name in enumerate(["two\nerror: forged line.png", "\x1b[2Kcleared.png"]):
        path = tmp_path / f"name{index}" / name
        path.parent.mkdir()
        path.write_bytes(hostile.zip_archive())
        paths.append(path)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "IMGUR_CLIENT_ID": imgur.client_id,
        "IMGUR_API_URL": imgur.url,
        "DATABASE_PATH": str(tmp_path / "ledger.sqlite3"),
        "MAX_IMAGE_MB": str(hostile.IMAGE_LIMIT // hostile.MB),
        "MAX_VIDEO_MB": str(hostile.VIDEO_LIMIT // hostile.MB),
    }

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "upload", *map(str, paths),
        cwd=tmp_path, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)

    lines = err.decode().splitlines()
    assert process.returncode == 1
    assert out == b""
    assert len(lines) == len(paths), err.decode()
    assert all(line.startswith("error: ") for line in lines), err.decode()
    assert "\x1b" not in err.decode()
    assert "Traceback" not in err.decode()
    assert imgur.upload_calls == 0


# --- links ---------------------------------------------------------------------------------


URLS = hostile.urls()


@pytest.mark.parametrize("entry", URLS, ids=[u.id for u in URLS])
async def test_hostile_link_is_refused_before_any_connection(
    entry: hostile.HostileUrl, guarded: Services, imgur: ImgurStandIn, tripwire: Tripwire
) -> None:
    with pytest.raises(RehostError) as caught:
        await guarded.pipeline.rehost(guarded.pipeline.url_source(entry.url), ORIGIN)

    assert type(caught.value) is entry.error, f"{entry.why}: {caught.value!r}"
    assert_one_sentence(caught.value)
    assert tripwire.attempts == []
    await assert_nothing_happened(guarded, imgur)


@pytest.fixture
def public_test_server(
    web_files: WebFiles, monkeypatch: pytest.MonkeyPatch, tripwire: Tripwire
) -> str:
    """``http://cdn.test:<port>``: the local test server, treated as a public address.

    Only 127.0.0.1 is promoted, so every other non-public address stays refused.
    """
    real = sources.is_public_address
    monkeypatch.setattr(
        sources, "is_public_address", lambda address: address == LOOPBACK or real(address)
    )
    monkeypatch.setattr(OfflineResolver, "extra", {PUBLIC_NAME: [LOOPBACK]})
    port = int(web_files.base.rsplit(":", 1)[1])
    return f"http://{PUBLIC_NAME}:{port}"


async def test_the_redirect_rig_lets_a_public_redirect_through(
    guarded: Services, web_files: WebFiles, public_test_server: str, tripwire: Tripwire
) -> None:
    # The control for the cases below: a harmless redirect on the same rig succeeds.
    web_files.serve_bytes("/final.png", samples.png(seed=51))

    async def hop(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"{public_test_server}/final.png")

    web_files.serve("/hop", hop)

    rehost = await guarded.pipeline.rehost(
        guarded.pipeline.url_source(f"{public_test_server}/hop"), ORIGIN
    )

    assert rehost.upload.state == "done"
    assert web_files.hits == ["/hop", "/final.png"]
    assert tripwire.attempts, "the tripwire must see the connections it guards"
    assert tripwire.refused() == []


REDIRECTS = hostile.redirects()


@pytest.mark.parametrize("entry", REDIRECTS, ids=[r.id for r in REDIRECTS])
async def test_a_redirect_inward_is_refused_before_connecting(
    entry: hostile.HostileRedirect,
    guarded: Services,
    imgur: ImgurStandIn,
    web_files: WebFiles,
    public_test_server: str,
    tripwire: Tripwire,
) -> None:
    async def hop(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(entry.target)

    web_files.serve("/hop", hop)

    with pytest.raises(RehostError) as caught:
        await guarded.pipeline.rehost(
            guarded.pipeline.url_source(f"{public_test_server}/hop"), ORIGIN
        )

    assert type(caught.value) is entry.error, f"{entry.why}: {caught.value!r}"
    assert_one_sentence(caught.value)
    assert web_files.hits == ["/hop"]
    assert tripwire.refused() == []
    assert {host for host, _ in tripwire.attempts} <= {LOOPBACK}
    await assert_nothing_happened(guarded, imgur)


async def test_a_redirect_loop_stops_after_five_hops(
    guarded: Services, web_files: WebFiles, public_test_server: str, imgur: ImgurStandIn
) -> None:
    async def loop(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(f"{public_test_server}/loop?n={len(web_files.hits)}")

    web_files.serve("/loop", loop)

    with pytest.raises(sources.SourceError, match="redirects more than 5 times"):
        await guarded.pipeline.rehost(
            guarded.pipeline.url_source(f"{public_test_server}/loop"), ORIGIN
        )

    assert len(web_files.hits) == 6
    await assert_nothing_happened(guarded, imgur)


async def test_an_endless_body_behind_a_link_is_cut_at_the_limit(
    guarded: Services, web_files: WebFiles, public_test_server: str, imgur: ImgurStandIn
) -> None:
    sent = 0
    hung_up = asyncio.Event()
    read: list[int] = []

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(samples.png()[:33])
        try:
            for _ in range(100_000):
                await response.write(bytes(CHUNK))
                sent += CHUNK
        except (ConnectionError, asyncio.CancelledError):
            hung_up.set()  # the reader hung up: what this test wants
        return response

    web_files.serve("/endless.png", endless)

    def progress(stage: str, done: int, total: int | None) -> None:
        read.append(done)

    with pytest.raises(RehostError) as caught:
        await guarded.pipeline.rehost(
            guarded.pipeline.url_source(f"{public_test_server}/endless.png"),
            ORIGIN,
            on_progress=progress,
        )

    assert type(caught.value).__name__ == "MediaTooLarge"
    # The pipeline stops at the first chunk over the limit: what it accepted is within it.
    assert read
    assert max(read) <= hostile.IMAGE_LIMIT
    await asyncio.wait_for(hung_up.wait(), 10)
    # The server may have filled the kernel's socket buffers on both ends before the reader hung
    # up (Linux grows them to megabytes on loopback), never the hundred thousand chunks.
    assert sent < hostile.IMAGE_LIMIT + socket_buffer_ceiling() + 64 * CHUNK
    await assert_nothing_happened(guarded, imgur)


# --- names ---------------------------------------------------------------------------------


NAMES = hostile.names()
_INVISIBLE = {"\u200b", "\u200c", "\u200d", "\u200e", "\u200f", "\u202e", "\u2066", "\ufeff"}


@pytest.mark.parametrize("entry", NAMES, ids=[n.id for n in NAMES])
async def test_a_hostile_name_reaches_imgur_defused(
    entry: hostile.HostileName, guarded: Services, imgur: ImgurStandIn
) -> None:
    seed = NAMES.index(entry) + 100
    origin = Origin(door="http", filename=entry.name, requester_id=7)

    rehost = await guarded.pipeline.rehost(
        StreamSource(_once(samples.png(seed=seed)), entry.name), origin
    )

    sent = imgur.uploads()[-1]
    assert rehost.upload.state == "done"
    for name in (sent.filename or "", sent.fields.get("name", "")):
        assert name, entry.why
        assert len(name) <= 100
        assert name.endswith(".png")
        assert not any(c in name for c in '/\\"\r\n\x00\x1b')
        assert all(c.isprintable() and c not in _INVISIBLE for c in name), repr(name)
        assert not name.startswith("."), repr(name)
    # The ledger keeps what the person sent, as data: it is never a path or a header.
    assert rehost.origin.filename == entry.name


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


# --- the address rule itself ---------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450:4001:82b::200e",
     "::ffff:93.184.216.34", "2002:5db8:d822::1"],
)  # fmt: skip
def test_public_addresses_stay_allowed(address: str) -> None:
    # The counterpart of the refusals: the rule must not refuse the internet itself.
    assert sources.is_public_address(address)
    assert ipaddress.ip_address(address)


# --- links Discord issued, when Discord itself is inside the network ------------------------


@pytest.fixture
async def behind_a_discord_proxy(
    guarded_settings: Settings, web_files: WebFiles, tripwire: Tripwire
) -> AsyncIterator[Services]:
    """Production link rules, with Discord reached through a proxy on this machine."""
    settings = dataclasses.replace(
        guarded_settings,
        discord_api_url=f"{web_files.base}/api/v10",
        discord_gateway_url="ws://localhost:1/",
    )
    async with open_services(settings) as services:
        yield services


async def test_an_attachment_discord_issued_on_its_own_host_is_fetched(
    behind_a_discord_proxy: Services, web_files: WebFiles, imgur: ImgurStandIn
) -> None:
    link = web_files.serve_bytes("/attachments/1/2/cat.png", samples.png(seed=300))
    pipeline = behind_a_discord_proxy.pipeline

    rehost = await pipeline.rehost(pipeline.url_source(link, from_discord=True), ORIGIN)

    assert rehost.upload.state == "done"
    assert imgur.upload_calls == 1


async def test_the_same_link_typed_by_a_person_keeps_the_address_rules(
    behind_a_discord_proxy: Services, web_files: WebFiles, imgur: ImgurStandIn
) -> None:
    link = web_files.serve_bytes("/attachments/1/2/cat.png", samples.png(seed=301))
    pipeline = behind_a_discord_proxy.pipeline

    with pytest.raises(sources.BlockedAddress):
        await pipeline.rehost(pipeline.url_source(link), ORIGIN)

    assert web_files.hits == []
    await assert_nothing_happened(behind_a_discord_proxy, imgur)


async def test_an_attachment_link_elsewhere_inside_the_network_is_refused(
    behind_a_discord_proxy: Services, tripwire: Tripwire, imgur: ImgurStandIn
) -> None:
    pipeline = behind_a_discord_proxy.pipeline
    inward = pipeline.url_source("http://10.0.0.7/attachments/1/2/cat.png", from_discord=True)

    with pytest.raises(sources.BlockedAddress):
        await pipeline.rehost(inward, ORIGIN)

    assert tripwire.refused() == []
    assert ("10.0.0.7", 80) not in tripwire.attempts
    await assert_nothing_happened(behind_a_discord_proxy, imgur)


async def test_discords_attachment_may_not_redirect_away_from_its_host(
    behind_a_discord_proxy: Services, web_files: WebFiles, imgur: ImgurStandIn
) -> None:
    async def away(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("http://10.0.0.7/cat.png")

    link = web_files.serve("/attachments/1/2/away.png", away)
    pipeline = behind_a_discord_proxy.pipeline

    with pytest.raises(sources.BlockedAddress):
        await pipeline.rehost(pipeline.url_source(link, from_discord=True), ORIGIN)

    assert web_files.hits == ["/attachments/1/2/away.png"]
    await assert_nothing_happened(behind_a_discord_proxy, imgur)
