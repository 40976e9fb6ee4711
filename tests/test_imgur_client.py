"""The Imgur client against the local stand-in (real HTTP) and against Imgur's exact bodies.

The stand-in covers the wire: multipart streaming, retries, quota, faults. aioresponses is used
where one canned answer is the point: the bodies recorded in /work/shared/IMGUR_API.md,
word for word.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import traceback
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, BinaryIO

import aiohttp
import pytest
from aioresponses import aioresponses

from bot.errors import RehostError
from bot.imgur import (
    Credits,
    ImgurAlbum,
    ImgurAuthError,
    ImgurClient,
    ImgurError,
    ImgurImage,
    ImgurNotFound,
    ImgurRateLimited,
    ImgurRejected,
    ImgurUnavailable,
    Quota,
)
from tests import samples
from tests.conftest import WebFiles
from tests.imgur_standin import ImgurStandIn

CLIENT_ID = "test-client-id"
API = "https://api.imgur.test"
NOW = 1_800_000_000.0  # a fixed unix time shared by the client and the stand-in
MB = 1024 * 1024


# --- upload bodies ---------------------------------------------------------------------------


class GuardedReader:
    """A file reader that fails the test if anyone reads it whole or in big gulps."""

    def __init__(self, path: Path, max_read: int = MB) -> None:
        self._file = path.open("rb")
        self.max_read = max_read
        self.reads: list[int] = []

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0 or size > self.max_read:
            raise AssertionError(f"read({size!r}): the file must be streamed in chunks")
        self.reads.append(size)
        return self._file.read(size)

    def close(self) -> None:
        self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed


@dataclass
class FileBody:
    """An UploadBody backed by a file on disk, remembering every reader it handed out."""

    path: Path
    filename: str
    mime: str
    size: int = -1
    readers: list[GuardedReader] = field(default_factory=list)
    in_memory: bool = False  # read in a worker thread, as a file on disk is

    def __post_init__(self) -> None:
        if self.size < 0:
            self.size = self.path.stat().st_size

    def open(self) -> BinaryIO:
        reader = GuardedReader(self.path)
        self.readers.append(reader)
        return reader  # type: ignore[return-value]


@pytest.fixture
def write_body(tmp_path: Path) -> Callable[..., FileBody]:
    def write(data: bytes, filename: str = "cat.png", mime: str = "image/png") -> FileBody:
        path = tmp_path / filename
        path.write_bytes(data)
        return FileBody(path, filename, mime)

    return write


# --- fixtures --------------------------------------------------------------------------------


@dataclass
class Sleeps:
    """The injected sleep: records each backoff instead of waiting."""

    delays: list[float] = field(default_factory=list)

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as http:
        yield http


@pytest.fixture
async def standin() -> AsyncIterator[ImgurStandIn]:
    async with ImgurStandIn(client_id=CLIENT_ID, clock=lambda: NOW) as server:
        yield server


@pytest.fixture
def make_client(session: aiohttp.ClientSession, sleeps: Sleeps) -> Callable[..., ImgurClient]:
    def make(api_url: str = API, **kwargs: Any) -> ImgurClient:
        kwargs.setdefault("sleep", sleeps)
        kwargs.setdefault("clock", lambda: NOW)
        return ImgurClient(session, kwargs.pop("client_id", CLIENT_ID), api_url=api_url, **kwargs)

    return make


@pytest.fixture
def client(make_client: Callable[..., ImgurClient], standin: ImgurStandIn) -> ImgurClient:
    return make_client(standin.url)


class _CannedResponse(aiohttp.ClientResponse):
    """A response aioresponses 0.7.9 can build under aiohttp 3.14.

    aiohttp 3.14 added the required ``stream_writer`` argument, which aioresponses does not
    pass yet (pnuckowski/aioresponses#289); a canned answer has sent nothing, so zero it is.
    """

    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", SimpleNamespace(output_size=0))
        super().__init__(method, url, **kwargs)


class _Canned(aioresponses):  # type: ignore[misc]
    def add(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("response_class", _CannedResponse)
        super().add(*args, **kwargs)


@pytest.fixture
def mocked() -> Iterator[aioresponses]:
    with _Canned() as mock:
        yield mock


def envelope(data: Any, *, status: int = 200, success: bool = True) -> dict[str, Any]:
    return {"data": data, "success": success, "status": status}


def upload_answer(**changes: Any) -> dict[str, Any]:
    data = {
        "id": "aB3dE5g",
        "deletehash": "x1Y2z3W4v5U6t7S",
        "link": "https://i.imgur.com/aB3dE5g.png",
        "type": "image/png",
        "width": 4,
        "height": 4,
        "size": 77,
        "animated": False,
        "datetime": 1_800_000_000,
        "account_id": 0,
    }
    data.update(changes)
    return envelope(data)


def full_chain(exc: BaseException) -> str:
    """The messages of ``exc`` and of every exception chained to it, suppressed or not."""
    seen: list[str] = []
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or repr(current) in seen:
            continue
        seen.append(repr(current))
        seen.append(traceback.format_exception_only(current)[-1])
        pending += [current.__cause__, current.__context__]
    return "\n".join(seen)


# --- uploads over the wire -------------------------------------------------------------------


async def test_upload_sends_the_file_as_a_streamed_multipart_image_part(
    client: ImgurClient, standin: ImgurStandIn, write_body: Callable[..., FileBody]
) -> None:
    body = write_body(samples.png(seed=1), filename="cat.png")

    image = await client.upload(body, title="A cat", description="from #pets")

    [request] = standin.uploads()
    assert request.path == "/3/image"
    assert request.content_type == "multipart/form-data"
    assert request.encoding == "multipart"
    assert request.file_field == "image"
    assert request.filename == "cat.png"
    assert request.bytes_received == body.size
    assert request.fields["type"] == "file"
    assert request.fields["name"] == "cat.png"
    assert request.fields["title"] == "A cat"
    assert request.fields["description"] == "from #pets"
    assert "Content-Length" in request.headers  # a known size, not a chunked body
    assert request.headers["Authorization"] == f"Client-ID {CLIENT_ID}"

    stored = standin.images[image.id]
    assert image.deletehash == stored.deletehash
    assert image.link == f"https://i.imgur.com/{image.id}.png"
    assert (image.mime, image.size, image.width, image.height) == ("image/png", body.size, 4, 4)
    assert image.processing is None
    assert image.deletehash not in repr(image)
    assert body.readers[0].closed


async def test_an_awkward_filename_or_mime_type_cannot_break_the_part_headers(
    client: ImgurClient, standin: ImgurStandIn, tmp_path: Path
) -> None:
    path = tmp_path / "upload.bin"
    path.write_bytes(samples.png())
    body = FileBody(path, 'ко"т\r\nик; name=evil.png', "image/png\r\nX-Evil: 1")

    await client.upload(body)

    [request] = standin.uploads()
    assert request.filename == "котик; name=evil.png"
    assert request.fields["name"] == "котик; name=evil.png"
    assert request.file_field == "image"
    # The broken MIME type went out as application/octet-stream: aiohttp refuses a CR/LF in
    # a part header, so passing it on would have failed the upload.
    assert request.bytes_received == body.size


async def test_large_video_is_streamed_in_chunks_never_read_whole(
    client: ImgurClient, standin: ImgurStandIn, write_body: Callable[..., FileBody]
) -> None:
    body = write_body(samples.mp4(30 * MB), filename="clip.mp4", mime="video/mp4")
    progress: list[int] = []

    image = await client.upload(body, video=True, on_progress=progress.append)

    [request] = standin.uploads()
    assert request.path == "/3/upload"
    assert request.file_field == "video"
    assert request.bytes_received == 30 * MB
    assert image.processing == "pending"
    assert image.mp4 == f"https://i.imgur.com/{image.id}.mp4"

    [reader] = body.readers
    assert reader.closed
    assert max(reader.reads) <= MB
    assert len(reader.reads) > 1
    assert progress == sorted(progress)
    assert progress[-1] == 30 * MB


async def test_upload_to_an_album_sends_its_deletehash(
    client: ImgurClient, standin: ImgurStandIn, write_body: Callable[..., FileBody]
) -> None:
    album = await client.create_album([])

    image = await client.upload(write_body(samples.png()), album=album.deletehash)

    assert standin.albums[album.id].image_ids == [image.id]


async def test_upload_with_an_access_token_uses_bearer(
    make_client: Callable[..., ImgurClient], write_body: Callable[..., FileBody]
) -> None:
    async with ImgurStandIn(client_id=CLIENT_ID, access_token="good-token") as server:
        client = make_client(server.url, access_token="good-token")

        await client.upload(write_body(samples.png()))

        assert server.requests[0].headers["Authorization"] == "Bearer good-token"


async def test_upload_url_asks_imgur_to_fetch_the_address(
    client: ImgurClient, standin: ImgurStandIn, web_files: WebFiles
) -> None:
    url = web_files.serve_bytes("/dog.png", samples.png(seed=7))

    image = await client.upload_url(url, title="A dog")

    [request] = standin.uploads()
    assert request.encoding == "url"
    assert request.fields["type"] == "URL"
    assert request.fields["title"] == "A dog"
    assert web_files.hits == ["/dog.png"]
    assert standin.images[image.id].deletehash == image.deletehash


async def test_upload_url_refuses_anything_but_http(client: ImgurClient) -> None:
    with pytest.raises(ValueError, match="http"):
        await client.upload_url("file:///etc/passwd")


# --- retries ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status"),
    [
        ("over_capacity_403", None),
        ("over_capacity_500", None),
        ("server_error", None),
        ("html", None),  # the over-capacity web page, HTTP 500
        ("html", 403),
        ("empty", None),  # HTTP 502 with no body
        ("invalid_json", 502),
        # A 200 whose body is empty or cut off is never sent again: Imgur stored that upload
        # (see tests/test_faults.py).
    ],
)
async def test_transient_failure_is_retried_with_the_file_reopened(
    client: ImgurClient,
    standin: ImgurStandIn,
    sleeps: Sleeps,
    write_body: Callable[..., FileBody],
    fault: Any,
    status: int | None,
) -> None:
    body = write_body(samples.png(seed=2))
    standin.fail_next(fault, status=status)

    image = await client.upload(body)

    assert [request.fault for request in standin.uploads()] == [fault, None]
    assert standin.uploads()[1].bytes_received == body.size
    assert len(sleeps.delays) == 1
    assert len(body.readers) == 2
    assert all(reader.closed for reader in body.readers)
    assert image.id in standin.images


async def test_retries_stop_after_the_configured_attempts(
    make_client: Callable[..., ImgurClient],
    standin: ImgurStandIn,
    sleeps: Sleeps,
    write_body: Callable[..., FileBody],
) -> None:
    client = make_client(standin.url, attempts=4, backoff=0.5)
    standin.fail_next("server_error", times=10)

    with pytest.raises(ImgurUnavailable) as caught:
        await client.upload(write_body(samples.png()))

    assert len(standin.uploads()) == 4
    assert len(sleeps.delays) == 3
    for n, delay in enumerate(sleeps.delays):
        assert 0 <= delay <= 0.5 * 2**n
    assert str(caught.value) == ("Imgur is unavailable right now (HTTP 500); try again later.")


async def test_backoff_doubles_with_full_jitter(
    make_client: Callable[..., ImgurClient],
    standin: ImgurStandIn,
    sleeps: Sleeps,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = make_client(standin.url, attempts=4, backoff=1.5)
    jitter = iter([1.0, 0.5, 0.25])
    monkeypatch.setattr(client._jitter, "random", lambda: next(jitter))
    standin.fail_next("over_capacity_500", times=3)

    credits = await client.credits()

    assert sleeps.delays == [1.5 * 1 * 1.0, 1.5 * 2 * 0.5, 1.5 * 4 * 0.25]
    assert credits.user_limit == 500


async def test_single_attempt_means_no_retry(
    make_client: Callable[..., ImgurClient], standin: ImgurStandIn, sleeps: Sleeps
) -> None:
    client = make_client(standin.url, attempts=1)
    standin.fail_next("server_error")

    with pytest.raises(ImgurUnavailable):
        await client.credits()

    assert len(standin.requests) == 1
    assert sleeps.delays == []


async def test_a_connection_dropped_mid_upload_is_retried(
    client: ImgurClient,
    standin: ImgurStandIn,
    sleeps: Sleeps,
    write_body: Callable[..., FileBody],
) -> None:
    # The stand-in cuts the connection after 64 KiB: Imgur cannot have stored a partial file.
    body = write_body(samples.big_png(8 * 1024 * 1024, seed=3))
    standin.fail_next("drop")

    image = await client.upload(body)

    assert [request.fault for request in standin.uploads()] == ["drop", None]
    assert len(sleeps.delays) == 1
    assert len(body.readers) == 2
    assert list(standin.images) == [image.id]


async def test_a_whole_upload_left_unanswered_is_not_sent_again(
    make_client: Callable[..., ImgurClient],
    standin: ImgurStandIn,
    sleeps: Sleeps,
    write_body: Callable[..., FileBody],
) -> None:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=2)
    client = make_client(standin.url, upload_timeout=timeout)
    # The stand-in stores the upload, then holds the answer far longer than the timeout: a
    # second attempt would leave a copy whose deletehash nobody ever learns.
    standin.fail_next("slow", delay=50)

    with pytest.raises(ImgurUnavailable, match="did not confirm"):
        await client.upload(write_body(samples.png()))

    assert standin.upload_calls == 1
    assert sleeps.delays == []


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("reject", ImgurRejected),
        ("invalid_client", ImgurAuthError),
        ("rate_limited", ImgurRateLimited),
    ],
)
async def test_refusals_are_never_retried(
    client: ImgurClient,
    standin: ImgurStandIn,
    sleeps: Sleeps,
    write_body: Callable[..., FileBody],
    fault: Any,
    error: type[ImgurError],
) -> None:
    standin.fail_next(fault)

    with pytest.raises(error):
        await client.upload(write_body(samples.png()))

    assert len(standin.uploads()) == 1
    assert sleeps.delays == []


async def test_a_file_imgur_cannot_read_is_rejected_with_its_reason(
    client: ImgurClient, standin: ImgurStandIn, write_body: Callable[..., FileBody]
) -> None:
    body = write_body(b"just some text, not a picture", filename="notes.png")

    with pytest.raises(ImgurRejected) as caught:
        await client.upload(body)

    assert caught.value.reason == "File type invalid (1)"
    assert str(caught.value) == "Imgur refused the file: File type invalid (1)."
    assert len(standin.uploads()) == 1


async def test_a_file_over_the_limit_is_rejected(
    make_client: Callable[..., ImgurClient], write_body: Callable[..., FileBody]
) -> None:
    async with ImgurStandIn(client_id=CLIENT_ID, image_limit=1000) as server:
        client = make_client(server.url)

        with pytest.raises(ImgurRejected) as caught:
            await client.upload(write_body(samples.big_png(5000)))

        assert caught.value.reason == "File is over the size limit"
        assert len(server.uploads()) == 1


async def test_a_wrong_client_id_is_reported_without_revealing_it(
    make_client: Callable[..., ImgurClient],
    standin: ImgurStandIn,
    sleeps: Sleeps,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client(standin.url, client_id="wrong-client-id")

    with pytest.raises(ImgurAuthError) as caught:
        await client.credits()

    assert "IMGUR_CLIENT_ID" in str(caught.value)
    assert "wrong-client-id" not in full_chain(caught.value)
    assert "wrong-client-id" not in caplog.text
    assert len(standin.requests) == 1
    assert sleeps.delays == []


async def test_a_bad_access_token_points_at_the_token_setting(
    make_client: Callable[..., ImgurClient], write_body: Callable[..., FileBody]
) -> None:
    async with ImgurStandIn(client_id=CLIENT_ID, access_token="good-token") as server:
        client = make_client(server.url, access_token="stale-token")

        with pytest.raises(ImgurAuthError) as caught:
            await client.upload(write_body(samples.png()))

        assert "IMGUR_ACCESS_TOKEN" in str(caught.value)
        assert "stale-token" not in full_chain(caught.value)
        assert len(server.requests) == 1


async def test_a_failing_file_is_raised_as_is_and_not_retried(
    client: ImgurClient, standin: ImgurStandIn, sleeps: Sleeps, tmp_path: Path
) -> None:
    path = tmp_path / "short.png"
    path.write_bytes(samples.png())
    body = FileBody(path, "short.png", "image/png", size=path.stat().st_size + 1000)

    with pytest.raises(ValueError, match="declared size"):
        await client.upload(body)

    assert sleeps.delays == []
    assert body.readers[0].closed


async def test_a_failing_progress_callback_stops_the_upload(
    client: ImgurClient, sleeps: Sleeps, write_body: Callable[..., FileBody]
) -> None:
    def explode(sent: int) -> None:
        raise RuntimeError("progress bar broke")

    with pytest.raises(RuntimeError, match="progress bar broke"):
        await client.upload(write_body(samples.big_png(300_000)), on_progress=explode)

    assert sleeps.delays == []


# --- rate limits and quota -------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["errors", "nested", "html"])
async def test_rate_limit_in_any_shape_reports_when_it_resets(
    client: ImgurClient,
    standin: ImgurStandIn,
    sleeps: Sleeps,
    write_body: Callable[..., FileBody],
    caplog: pytest.LogCaptureFixture,
    shape: Any,
) -> None:
    standin.fail_next("rate_limited", shape=shape)

    with pytest.raises(ImgurRateLimited) as caught:
        await client.upload(write_body(samples.png()))

    # Nothing is spent, so the later of the hourly resets is the one to wait for.
    assert caught.value.reset_at == NOW + 3600
    assert str(caught.value) == "Imgur's upload quota is spent; it resets at 09:00 UTC."
    assert sleeps.delays == []
    assert len(standin.uploads()) == 1
    assert any(
        record.levelno == logging.WARNING and "429" in record.getMessage()
        for record in caplog.records
    )


async def test_a_rate_limited_deletion_names_the_request_quota(
    client: ImgurClient, standin: ImgurStandIn, write_body: Callable[..., FileBody]
) -> None:
    image = await client.upload(write_body(samples.png()))
    standin.fail_next("rate_limited", method="DELETE")

    with pytest.raises(ImgurRateLimited) as caught:
        await client.delete_image(image.deletehash)

    assert caught.value.quota == "request quota"
    assert str(caught.value).startswith("Imgur's request quota is spent;")


async def test_spent_hourly_credits_reset_at_the_user_reset_epoch(
    make_client: Callable[..., ImgurClient], write_body: Callable[..., FileBody]
) -> None:
    async with ImgurStandIn(client_id=CLIENT_ID, user_limit=25, clock=lambda: NOW) as server:
        client = make_client(server.url)
        await client.upload(write_body(samples.png(seed=1)))
        await client.upload(write_body(samples.png(seed=2)))
        server.advance(900)

        with pytest.raises(ImgurRateLimited) as caught:
            await client.upload(write_body(samples.png(seed=3)))

        assert caught.value.reset_at == NOW + 3600
        assert client.quota.user_remaining == 5
        assert len(server.uploads()) == 3


async def test_spent_post_limit_resets_seconds_from_now_by_the_client_clock(
    make_client: Callable[..., ImgurClient], write_body: Callable[..., FileBody]
) -> None:
    async with ImgurStandIn(client_id=CLIENT_ID, post_limit=1, clock=lambda: NOW) as server:
        client = make_client(server.url)
        await client.upload(write_body(samples.png(seed=1)))
        server.advance(600)  # the stand-in now says the POST window resets in 3000 s

        with pytest.raises(ImgurRateLimited) as caught:
            await client.upload(write_body(samples.png(seed=2)))

        assert caught.value.reset_at == NOW + 3000
        assert client.quota.post_remaining == 0
        assert client.quota.post_reset == NOW + 3000


async def test_spent_daily_client_budget_has_no_known_reset(
    make_client: Callable[..., ImgurClient], write_body: Callable[..., FileBody]
) -> None:
    async with ImgurStandIn(client_id=CLIENT_ID, client_limit=15, clock=lambda: NOW) as server:
        client = make_client(server.url)
        await client.upload(write_body(samples.png(seed=1)))

        with pytest.raises(ImgurRateLimited) as caught:
            await client.upload(write_body(samples.png(seed=2)))

        assert caught.value.reset_at is None
        assert str(caught.value) == "Imgur's upload quota is spent; try again later."


async def test_quota_follows_the_latest_headers(
    client: ImgurClient, standin: ImgurStandIn, write_body: Callable[..., FileBody]
) -> None:
    assert client.quota == Quota()

    await client.upload(write_body(samples.png()))
    after_upload = client.quota
    await client.credits()

    assert after_upload == Quota(
        user_limit=500,
        user_remaining=490,
        user_reset=NOW + 3600,
        client_limit=12500,
        client_remaining=12490,
        post_limit=1250,
        post_remaining=1249,
        post_reset=NOW + 3600,
        observed_at=NOW,
    )
    # A GET carries no POST headers: the POST figures seen last are kept.
    assert client.quota == after_upload


async def test_malformed_quota_headers_are_ignored(
    make_client: Callable[..., ImgurClient], mocked: aioresponses
) -> None:
    client = make_client()
    mocked.get(
        f"{API}/3/credits",
        payload=envelope({"UserLimit": 500}),
        headers={
            "X-RateLimit-UserLimit": "500",
            "X-RateLimit-UserRemaining": "lots",
            "X-RateLimit-UserReset": "-5",
            "X-RateLimit-ClientLimit": "1e9",
            "X-RateLimit-ClientRemaining": "nan",
            "X-Post-Rate-Limit-Remaining": "",
            "X-Post-Rate-Limit-Reset": "inf",
        },
    )

    with pytest.raises(ImgurUnavailable):
        await client.credits()

    assert client.quota == Quota(user_limit=500, observed_at=NOW)


async def test_quota_is_recorded_from_error_answers_too(
    make_client: Callable[..., ImgurClient], mocked: aioresponses
) -> None:
    client = make_client()
    mocked.delete(
        f"{API}/3/image/abc123",
        status=404,
        body="<html><body>404</body></html>",
        content_type="text/html",
        headers={"X-RateLimit-UserRemaining": "17", "X-RateLimit-UserReset": str(int(NOW + 60))},
    )

    assert await client.delete_image("abc123") is False

    assert client.quota.user_remaining == 17
    assert client.quota.user_reset == NOW + 60


# --- delete, albums, credits over the wire ---------------------------------------------------


async def test_delete_image_then_again_reports_it_gone(
    client: ImgurClient, standin: ImgurStandIn, write_body: Callable[..., FileBody]
) -> None:
    image = await client.upload(write_body(samples.png()))

    assert await client.delete_image(image.deletehash) is True
    assert standin.images[image.id].deleted
    assert await client.delete_image(image.deletehash) is False  # an HTML 404


async def test_a_dropped_delete_is_retried_and_counts_as_done(
    client: ImgurClient, standin: ImgurStandIn, sleeps: Sleeps, write_body: Callable[..., FileBody]
) -> None:
    image = await client.upload(write_body(samples.png()))
    standin.fail_next("drop", path="/3/image", method="DELETE")

    assert await client.delete_image(image.deletehash) is True
    assert standin.images[image.id].deleted
    deletes = [request for request in standin.requests if request.method == "DELETE"]
    # aiohttp itself retries an idempotent request once when a pooled connection drops, so
    # the second try may be its or ours; either way the delete went through once.
    assert [request.fault for request in deletes] == ["drop", None]
    assert len(sleeps.delays) <= 1


@pytest.mark.parametrize(
    "deletehash", ["", "../credits", "abc/def", "abc?x=1", "abc def", "é1", "a" * 65]
)
async def test_a_malformed_deletehash_never_reaches_imgur(
    client: ImgurClient, standin: ImgurStandIn, deletehash: str
) -> None:
    with pytest.raises(ImgurNotFound) as caught:
        await client.delete_image(deletehash)
    with pytest.raises(ImgurNotFound):
        await client.delete_album(deletehash)
    with pytest.raises(ImgurNotFound):
        await client.create_album([deletehash])

    assert standin.requests == []
    if deletehash:
        assert deletehash not in str(caught.value)


async def test_album_create_and_delete(
    client: ImgurClient, standin: ImgurStandIn, write_body: Callable[..., FileBody]
) -> None:
    first = await client.upload(write_body(samples.png(seed=1)))
    second = await client.upload(write_body(samples.png(seed=2)))

    album = await client.create_album(
        [first.deletehash, second.deletehash], title="Pets", description="two", privacy="secret"
    )

    stored = standin.albums[album.id]
    assert stored.deletehash == album.deletehash
    assert stored.image_ids == [first.id, second.id]
    assert (stored.title, stored.description, stored.privacy) == ("Pets", "two", "secret")
    assert album.link == f"https://imgur.com/a/{album.id}"
    assert album.deletehash not in repr(album)

    assert await client.delete_album(album.deletehash) is True
    assert stored.deleted
    assert await client.delete_album(album.deletehash) is False


async def test_album_privacy_must_be_one_imgur_knows(client: ImgurClient) -> None:
    with pytest.raises(ValueError, match="privacy"):
        await client.create_album(["abc123"], privacy="friends")


async def test_credits_match_what_imgur_reports(client: ImgurClient, standin: ImgurStandIn) -> None:
    credits = await client.credits()

    assert credits == Credits(
        user_limit=500,
        user_remaining=500,
        user_reset=NOW + 3600,
        client_limit=12500,
        client_remaining=12500,
    )


# --- secrets ---------------------------------------------------------------------------------


async def test_deletehashes_and_client_id_never_reach_logs_or_errors(
    client: ImgurClient,
    standin: ImgurStandIn,
    write_body: Callable[..., FileBody],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    image = await client.upload(write_body(samples.png(seed=1)))
    album = await client.create_album([image.deletehash])
    await client.delete_album(album.deletehash)
    await client.delete_image(image.deletehash)
    await client.delete_image(image.deletehash)
    standin.fail_next("server_error", times=3, path="/3/image", method="DELETE")
    other = await client.upload(write_body(samples.png(seed=2)))

    with pytest.raises(ImgurUnavailable) as caught:
        await client.delete_image(other.deletehash)

    ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("bot."))
    for secret in (image.deletehash, album.deletehash, other.deletehash, CLIENT_ID):
        assert secret not in ours
        assert secret not in full_chain(caught.value)
    assert "DELETE /3/image/<deletehash>" in ours
    assert "DELETE /3/album/<deletehash>" in ours


async def test_a_network_error_naming_the_deletehash_is_not_chained(
    make_client: Callable[..., ImgurClient], mocked: aioresponses, sleeps: Sleeps
) -> None:
    client = make_client(attempts=2)
    url = f"{API}/3/image/s3cretHash1"
    for _ in range(2):
        mocked.delete(url, exception=aiohttp.ClientConnectionError(f"Connection timeout to {url}"))

    with pytest.raises(ImgurUnavailable) as caught:
        await client.delete_image("s3cretHash1")

    assert "s3cretHash1" not in full_chain(caught.value)
    assert caught.value.__context__ is None
    assert len(sleeps.delays) == 1


async def test_a_network_error_without_secrets_keeps_its_cause(
    make_client: Callable[..., ImgurClient], mocked: aioresponses
) -> None:
    client = make_client(attempts=1)
    mocked.get(f"{API}/3/credits", exception=aiohttp.ServerDisconnectedError())

    with pytest.raises(ImgurUnavailable) as caught:
        await client.credits()

    assert isinstance(caught.value.__cause__, aiohttp.ServerDisconnectedError)


async def test_client_repr_shows_no_credentials(make_client: Callable[..., ImgurClient]) -> None:
    client = make_client(access_token="tok-123456")

    assert CLIENT_ID not in repr(client)
    assert "tok-123456" not in repr(client)


# --- Imgur's exact bodies (IMGUR_API.md) -----------------------------------------------------

NO_IMAGE_DATA = {
    "data": {
        "error": "No image data was sent to the upload api",
        "request": "/3/image",
        "method": "POST",
    },
    "success": False,
    "status": 400,
}
FILE_TYPE_INVALID = {
    "data": {
        "error": {
            "code": 1003,
            "message": "File type invalid (1)",
            "type": "ImgurException",
            "exception": [],
        },
        "request": "/3/image",
        "method": "POST",
    },
    "success": False,
    "status": 400,
}
TOO_MANY_REQUESTS = {
    "errors": [
        {
            "id": "8f2b6c1e0d9a4f7b",
            "code": "429",
            "status": "Too Many Requests",
            "detail": "Too Many Requests",
        }
    ]
}
UPLOADING_TOO_FAST = {
    "data": {
        "error": {
            "code": 429,
            "message": "You are uploading too fast. Please wait 37 more minutes.",
            "type": "ImgurException",
            "exception": [],
        },
        "request": "/3/image",
        "method": "POST",
    },
    "success": False,
    "status": 429,
}
OVER_CAPACITY = "Imgur is temporarily over capacity. Please try again later."


def error_body(error: Any, status: int) -> dict[str, Any]:
    data = {"error": error, "request": "/3/image", "method": "POST"}
    return {"data": data, "success": False, "status": status}


@pytest.mark.parametrize(
    ("body", "reason", "message"),
    [
        (
            NO_IMAGE_DATA,
            "No image data was sent to the upload api",
            "Imgur refused the file: No image data was sent to the upload api.",
        ),
        (
            FILE_TYPE_INVALID,
            "File type invalid (1)",
            "Imgur refused the file: File type invalid (1).",
        ),
        (
            error_body("File is over the size limit", 400),
            "File is over the size limit",
            "Imgur refused the file: File is over the size limit.",
        ),
    ],
)
async def test_400_bodies_become_rejections(
    make_client: Callable[..., ImgurClient],
    mocked: aioresponses,
    sleeps: Sleeps,
    write_body: Callable[..., FileBody],
    body: dict[str, Any],
    reason: str,
    message: str,
) -> None:
    mocked.post(f"{API}/3/image", status=400, payload=body)

    with pytest.raises(ImgurRejected) as caught:
        await make_client().upload(write_body(samples.png()))

    assert caught.value.reason == reason
    assert str(caught.value) == message
    assert isinstance(caught.value, RehostError)
    assert sleeps.delays == []


@pytest.mark.parametrize(
    ("token", "error", "setting"),
    [
        (None, "Invalid client_id", "IMGUR_CLIENT_ID"),
        ("tok-abcdef", "The access token provided is invalid.", "IMGUR_ACCESS_TOKEN"),
    ],
)
async def test_403_bodies_become_auth_errors(
    make_client: Callable[..., ImgurClient],
    mocked: aioresponses,
    sleeps: Sleeps,
    token: str | None,
    error: str,
    setting: str,
) -> None:
    mocked.get(f"{API}/3/credits", status=403, payload=error_body(error, 403))

    with pytest.raises(ImgurAuthError) as caught:
        await make_client(access_token=token).credits()

    assert setting in str(caught.value)
    assert CLIENT_ID not in str(caught.value)
    assert sleeps.delays == []


@pytest.mark.parametrize("status", [403, 500])
async def test_over_capacity_json_is_retried(
    make_client: Callable[..., ImgurClient],
    mocked: aioresponses,
    sleeps: Sleeps,
    write_body: Callable[..., FileBody],
    status: int,
) -> None:
    mocked.post(f"{API}/3/image", status=status, payload=error_body(OVER_CAPACITY, status))
    mocked.post(f"{API}/3/image", payload=upload_answer())

    image = await make_client().upload(write_body(samples.png()))

    assert image.id == "aB3dE5g"
    assert len(sleeps.delays) == 1


async def test_too_many_requests_without_an_envelope(
    make_client: Callable[..., ImgurClient],
    mocked: aioresponses,
    sleeps: Sleeps,
    write_body: Callable[..., FileBody],
) -> None:
    mocked.post(
        f"{API}/3/image",
        status=429,
        payload=TOO_MANY_REQUESTS,
        headers={
            "X-RateLimit-UserLimit": "500",
            "X-RateLimit-UserRemaining": "0",
            "X-RateLimit-UserReset": str(int(NOW + 1200)),
            "X-Post-Rate-Limit-Remaining": "80",
            "X-Post-Rate-Limit-Reset": "3000",
        },
    )

    with pytest.raises(ImgurRateLimited) as caught:
        await make_client().upload(write_body(samples.png()))

    # Only the hourly credits ran out: the POST window's later reset does not apply.
    assert caught.value.reset_at == NOW + 1200
    assert sleeps.delays == []


async def test_uploading_too_fast_without_headers_uses_the_wait_in_the_message(
    make_client: Callable[..., ImgurClient],
    mocked: aioresponses,
    write_body: Callable[..., FileBody],
) -> None:
    mocked.post(f"{API}/3/image", status=429, payload=UPLOADING_TOO_FAST)

    with pytest.raises(ImgurRateLimited) as caught:
        await make_client().upload(write_body(samples.png()))

    assert caught.value.reset_at == NOW + 37 * 60


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (500, "<html><body><h1>Imgur is over capacity!</h1></body></html>", "text/html"),
        (502, "", "text/plain"),
        (200, '{"data":{"id":"aB3dE5g","deletehash":"x1Y2', "application/json"),
        (200, "<html><body>Welcome</body></html>", "text/html"),
        (503, '{"data": null, "success": false, "status": 503}', "application/json"),
        (200, '["not", "an", "envelope"]', "application/json"),
    ],
)
async def test_unreadable_or_server_failures_are_retried_then_unavailable(
    make_client: Callable[..., ImgurClient],
    mocked: aioresponses,
    sleeps: Sleeps,
    status: int,
    body: str,
    content_type: str,
) -> None:
    for _ in range(3):
        mocked.get(f"{API}/3/credits", status=status, body=body, content_type=content_type)

    with pytest.raises(ImgurUnavailable) as caught:
        await make_client().credits()

    assert len(sleeps.delays) == 2
    assert "<" not in str(caught.value)
    assert "aB3dE5g" not in str(caught.value)


async def test_html_404_on_delete_means_already_gone(
    make_client: Callable[..., ImgurClient], mocked: aioresponses, sleeps: Sleeps
) -> None:
    page = "<!DOCTYPE html><html><title>imgur: the simple 404 page</title></html>"
    mocked.delete(f"{API}/3/image/abc123", status=404, body=page, content_type="text/html")

    assert await make_client().delete_image("abc123") is False
    assert sleeps.delays == []


async def test_delete_answer_true_means_deleted(
    make_client: Callable[..., ImgurClient], mocked: aioresponses
) -> None:
    mocked.delete(f"{API}/3/album/abc123", payload={"data": True, "success": True, "status": 200})

    assert await make_client().delete_album("abc123") is True


async def test_a_200_with_success_false_is_an_error(
    make_client: Callable[..., ImgurClient],
    mocked: aioresponses,
    sleeps: Sleeps,
    write_body: Callable[..., FileBody],
) -> None:
    mocked.post(f"{API}/3/image", payload=FILE_TYPE_INVALID)  # HTTP 200

    with pytest.raises(ImgurRejected) as caught:
        await make_client().upload(write_body(samples.png()))

    assert caught.value.reason == "File type invalid (1)"
    assert sleeps.delays == []


async def test_a_200_with_success_false_and_a_server_status_is_retried(
    make_client: Callable[..., ImgurClient],
    mocked: aioresponses,
    sleeps: Sleeps,
    write_body: Callable[..., FileBody],
) -> None:
    mocked.post(f"{API}/3/image", payload=error_body("File was not uploaded correctly", 500))
    mocked.post(f"{API}/3/image", payload=upload_answer())

    image = await make_client().upload(write_body(samples.png()))

    assert image.deletehash == "x1Y2z3W4v5U6t7S"
    assert len(sleeps.delays) == 1


async def test_missing_and_null_fields_are_tolerated(
    make_client: Callable[..., ImgurClient],
    mocked: aioresponses,
    write_body: Callable[..., FileBody],
) -> None:
    answer = {
        "data": {
            "id": "aB3dE5g",
            "deletehash": "x1Y2z3W4v5U6t7S",
            "link": "https://i.imgur.com/aB3dE5g.mp4",
            "type": None,
            "width": None,
            "size": "big",
            "animated": None,
            "processing": None,
        }
    }
    mocked.post(f"{API}/3/upload", payload=answer)

    image = await make_client().upload(write_body(samples.mp4()), video=True)

    assert image == ImgurImage(
        id="aB3dE5g", link="https://i.imgur.com/aB3dE5g.mp4", deletehash="x1Y2z3W4v5U6t7S"
    )


async def test_a_video_still_processing_is_returned_as_pending(
    make_client: Callable[..., ImgurClient],
    mocked: aioresponses,
    write_body: Callable[..., FileBody],
) -> None:
    answer = upload_answer(
        type="video/mp4",
        link="https://i.imgur.com/aB3dE5g.mp4",
        mp4="https://i.imgur.com/aB3dE5g.mp4",
        animated=True,
        processing={"status": "pending"},
    )
    mocked.post(f"{API}/3/upload", payload=answer)

    image = await make_client().upload(write_body(samples.mp4()), video=True)

    assert (image.processing, image.animated, image.mime) == ("pending", True, "video/mp4")
    assert image.mp4 == "https://i.imgur.com/aB3dE5g.mp4"


async def test_a_success_without_a_deletehash_is_not_retried(
    make_client: Callable[..., ImgurClient],
    mocked: aioresponses,
    sleeps: Sleeps,
    write_body: Callable[..., FileBody],
) -> None:
    mocked.post(f"{API}/3/image", payload=upload_answer(deletehash=None))

    with pytest.raises(ImgurUnavailable):
        await make_client().upload(write_body(samples.png()))

    assert sleeps.delays == []


async def test_imgur_error_text_is_cleaned_capped_and_redacted(
    make_client: Callable[..., ImgurClient],
    mocked: aioresponses,
    write_body: Callable[..., FileBody],
) -> None:
    noisy = (
        "<b>Bad</b> &lt;script&gt;alert(1)&lt;/script&gt; upload\r\nfor "
        + CLIENT_ID
        + " "
        + "x" * 500
    )
    mocked.post(f"{API}/3/image", status=400, payload=error_body(noisy, 400))

    with pytest.raises(ImgurRejected) as caught:
        await make_client().upload(write_body(samples.png()))

    message = str(caught.value)
    assert message.startswith("Imgur refused the file: Bad alert(1) upload for … xxx")
    assert not re.search(r"[<>\r\n]", message)
    assert CLIENT_ID not in message
    assert len(caught.value.reason) <= 160


async def test_credits_from_the_documented_body(
    make_client: Callable[..., ImgurClient], mocked: aioresponses
) -> None:
    data = {
        "UserLimit": 500,
        "UserRemaining": 480,
        "UserReset": int(NOW + 1800),
        "ClientLimit": 12500,
        "ClientRemaining": 12000,
    }
    mocked.get(f"{API}/3/credits", body=json.dumps(envelope(data)))

    assert await make_client().credits() == Credits(500, 480, NOW + 1800, 12500, 12000)


async def test_album_answer_without_ids_is_unavailable(
    make_client: Callable[..., ImgurClient], mocked: aioresponses
) -> None:
    mocked.post(f"{API}/3/album", payload=envelope({"id": None}))

    with pytest.raises(ImgurUnavailable):
        await make_client().create_album(["abc123"])


async def test_album_from_the_documented_body(
    make_client: Callable[..., ImgurClient], mocked: aioresponses
) -> None:
    mocked.post(f"{API}/3/album", payload=envelope({"id": "Xy12Ab", "deletehash": "qwe987"}))

    album = await make_client().create_album(["abc123", "def456"], title="T")

    assert album == ImgurAlbum(id="Xy12Ab", deletehash="qwe987")
    assert album.link == "https://imgur.com/a/Xy12Ab"


# --- answers that cannot be used, peers that never finish --------------------------------------


def deletes_sent(mocked: aioresponses) -> list[str]:
    return [str(url) for (method, url) in mocked.requests if method == "DELETE"]


@pytest.mark.parametrize(
    "changes",
    [
        {"id": None, "link": None},
        {"link": "javascript:alert(1)"},
        {"link": "https://i.imgur.com/aB3dE5g.png\x1b[2J"},
        {"link": "https://i.imgur.com/aB3dE5g.png\nforged line"},
        {"id": None},
        {"id": 12345},
        {"id": "../credits"},
    ],
)
async def test_an_upload_answer_without_a_usable_id_or_link_is_taken_back(
    make_client: Callable[..., ImgurClient],
    mocked: aioresponses,
    write_body: Callable[..., FileBody],
    changes: dict[str, Any],
) -> None:
    # Nothing could be recorded or shown for it, yet Imgur holds the file: delete it again
    # through the deletehash the answer did carry, so no public copy is left without a record.
    mocked.post(f"{API}/3/image", payload=upload_answer(**changes))
    mocked.delete(f"{API}/3/image/x1Y2z3W4v5U6t7S", payload=envelope(True))

    with pytest.raises(ImgurUnavailable, match="did not say where it is") as caught:
        await make_client().upload(write_body(samples.png()))

    assert deletes_sent(mocked) == [f"{API}/3/image/x1Y2z3W4v5U6t7S"]
    assert "x1Y2z3W4v5U6t7S" not in full_chain(caught.value)


@pytest.mark.parametrize(
    ("answer_type", "sent", "link"),
    [
        ("image/png", "image/png", "https://i.imgur.com/aB3dE5g.png"),
        (None, "image/jpeg", "https://i.imgur.com/aB3dE5g.jpg"),
        ("video/mp4", "video/quicktime", "https://i.imgur.com/aB3dE5g.mp4"),
        (None, "application/x-new", "https://imgur.com/aB3dE5g"),
    ],
)
async def test_an_upload_answer_without_a_link_gets_imgurs_direct_link(
    make_client: Callable[..., ImgurClient],
    mocked: aioresponses,
    write_body: Callable[..., FileBody],
    answer_type: str | None,
    sent: str,
    link: str,
) -> None:
    # IMGUR_API.md: older answers lack some fields; the link follows from the id and type.
    route = "/3/upload" if sent.startswith("video/") else "/3/image"
    mocked.post(f"{API}{route}", payload=upload_answer(link=None, type=answer_type))

    image = await make_client().upload(
        write_body(samples.png(), mime=sent), video=sent.startswith("video/")
    )

    assert (image.id, image.link, image.deletehash) == ("aB3dE5g", link, "x1Y2z3W4v5U6t7S")
    assert deletes_sent(mocked) == []


async def test_an_upload_answer_whose_deletehash_is_not_a_token_is_not_trusted(
    make_client: Callable[..., ImgurClient],
    mocked: aioresponses,
    write_body: Callable[..., FileBody],
) -> None:
    mocked.post(f"{API}/3/image", payload=upload_answer(deletehash="../../credits"))

    with pytest.raises(ImgurUnavailable, match="did not say where it is"):
        await make_client().upload(write_body(samples.png()))

    # Imgur took it: sending it again would leave a second copy nobody could delete.
    assert [len(calls) for calls in mocked.requests.values()] == [1]
    assert deletes_sent(mocked) == []


async def test_a_failed_take_back_still_reports_the_upload_unusable(
    make_client: Callable[..., ImgurClient],
    mocked: aioresponses,
    write_body: Callable[..., FileBody],
) -> None:
    mocked.post(f"{API}/3/image", payload=upload_answer(link="ftp://i.imgur.com/x.png"))
    mocked.delete(f"{API}/3/image/x1Y2z3W4v5U6t7S", status=403, payload=error_body("no", 403))

    with pytest.raises(ImgurUnavailable, match="did not say where it is"):
        await make_client().upload(write_body(samples.png()))

    assert deletes_sent(mocked) == [f"{API}/3/image/x1Y2z3W4v5U6t7S"]


async def test_an_album_answer_without_an_id_takes_the_album_back(
    make_client: Callable[..., ImgurClient], mocked: aioresponses
) -> None:
    mocked.post(f"{API}/3/album", payload=envelope({"id": None, "deletehash": "qwe987"}))
    mocked.delete(f"{API}/3/album/qwe987", payload=envelope(True))

    with pytest.raises(ImgurUnavailable):
        await make_client().create_album(["abc123"])

    assert deletes_sent(mocked) == [f"{API}/3/album/qwe987"]


@dataclass
class RawPeer:
    """A TCP peer on 127.0.0.1 that misbehaves below HTTP, as no aiohttp server can."""

    url: str
    connections: int = 0


@pytest.fixture
async def raw_peer(request: pytest.FixtureRequest) -> AsyncIterator[RawPeer]:
    """``stall``: reads the request line, then nothing more, ever; ``trickle``: reads it all,
    sends the headers of a 200, then one byte of body every 0.2 seconds."""
    mode: str = request.param
    peer = RawPeer(url="")
    writers: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer.connections += 1
        writers.append(writer)
        head = await reader.readuntil(b"\r\n\r\n")
        if mode == "stall":
            await asyncio.Event().wait()
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        assert length is not None  # the client sends a Content-Length for a streamed file
        await reader.readexactly(int(length.group(1)))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        writer.write(b"Content-Length: 100000\r\n\r\n")
        while True:
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.2)

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    peer.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    yield peer
    for writer in writers:
        writer.close()
    server.close()


@pytest.mark.parametrize("raw_peer", ["stall"], indirect=True)
async def test_a_peer_that_stops_reading_the_upload_cannot_hold_it_forever(
    make_client: Callable[..., ImgurClient],
    raw_peer: RawPeer,
    sleeps: Sleeps,
    write_body: Callable[..., FileBody],
) -> None:
    # aiohttp bounds reads only once the body is out, and an upload has no total: without a
    # bound on each write, a peer that stops reading holds the upload for ever.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=0.5)
    client = make_client(raw_peer.url, upload_timeout=timeout, attempts=2)
    body = write_body(samples.big_png(16 * MB, seed=5))

    async with asyncio.timeout(20):
        with pytest.raises(ImgurUnavailable, match="timed out"):
            await client.upload(body)

    # Not sent whole, so Imgur cannot have stored it: the retry is safe, and bounded.
    assert raw_peer.connections == 2
    assert len(sleeps.delays) == 1


@pytest.mark.parametrize("raw_peer", ["trickle"], indirect=True)
async def test_an_answer_that_trickles_in_is_cut_off(
    make_client: Callable[..., ImgurClient],
    raw_peer: RawPeer,
    sleeps: Sleeps,
    write_body: Callable[..., FileBody],
) -> None:
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=5)
    client = make_client(raw_peer.url, upload_timeout=timeout, answer_timeout=1.0)

    async with asyncio.timeout(20):
        with pytest.raises(ImgurUnavailable, match="did not confirm"):
            await client.upload(write_body(samples.png()))

    # The file went out whole: it is not sent a second time.
    assert raw_peer.connections == 1
    assert sleeps.delays == []


async def test_terminal_control_sequences_in_imgur_text_are_dropped_whole(
    make_client: Callable[..., ImgurClient],
    mocked: aioresponses,
    write_body: Callable[..., FileBody],
) -> None:
    # Dropping only the ESC byte would leave "[31m" and "]0;" litter in the sentence a person
    # reads on a terminal or in Discord.
    noisy = "\x1b[31mFile type\x1b[0m invalid\x1b]0;title\x07 (1)"
    mocked.post(f"{API}/3/image", status=400, payload=error_body(noisy, 400))

    with pytest.raises(ImgurRejected) as caught:
        await make_client().upload(write_body(samples.png()))

    assert caught.value.reason == "File type invalid (1)"


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (403, "<html><body><h1>403 Forbidden</h1>Unavailable in your region</body></html>",
         "text/html"),
        (403, "", "text/plain"),
        (401, '{"message": "Unauthorized"}', "application/json"),
    ],
)  # fmt: skip
async def test_a_403_page_that_is_not_imgurs_answer_does_not_blame_the_client_id(
    make_client: Callable[..., ImgurClient],
    mocked: aioresponses,
    sleeps: Sleeps,
    write_body: Callable[..., FileBody],
    status: int,
    body: str,
    content_type: str,
) -> None:
    # Imgur refuses a client id in its JSON envelope; a bare page is a block (Imgur shuts out
    # the UK) or a proxy's, and sending the operator to IMGUR_CLIENT_ID would mislead.
    mocked.post(f"{API}/3/image", status=status, body=body, content_type=content_type)

    with pytest.raises(ImgurUnavailable) as caught:
        await make_client().upload(write_body(samples.png()))

    assert str(caught.value) == (
        f"Imgur turned the request away (HTTP {status}) without an API answer; "
        "it may be blocked from this network."
    )
    assert sleeps.delays == []


async def test_a_reset_on_another_day_is_reported_with_its_date(
    make_client: Callable[..., ImgurClient],
    mocked: aioresponses,
    write_body: Callable[..., FileBody],
) -> None:
    # NOW is 08:00 UTC; the wait in the message ends at 07:00 UTC the next day.
    mocked.post(f"{API}/3/image", status=429, payload=error_body("Please wait 23 more hours", 429))

    with pytest.raises(ImgurRateLimited) as caught:
        await make_client().upload(write_body(samples.png()))

    assert str(caught.value) == "Imgur's upload quota is spent; it resets at 2027-01-16 07:00 UTC."
