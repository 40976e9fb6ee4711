"""The HTTP upload endpoint, served for real on 127.0.0.1 against the Imgur stand-in.

Every answer is checked against ``openapi.json``: its status must be documented for the
route, its documented required headers present, its body valid under the documented schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot import web as web_module
from bot.errors import RehostError
from bot.imgur import (
    ImgurAuthError,
    ImgurNotFound,
    ImgurRateLimited,
    ImgurRejected,
    ImgurUnavailable,
)
from bot.ledger import LedgerError, Origin
from bot.media import EmptyMedia, MediaTooLarge, TruncatedMedia, UnsupportedMedia
from bot.scheduler import QueueFull
from bot.services import Services, open_services
from bot.settings import Settings
from bot.sources import BlockedAddress, FileSource, SourceError, StreamSource
from bot.web import create_app, serve, start_web, status_for
from tests import samples
from tests.conftest import WebFiles
from tests.imgur_standin import ImgurStandIn

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "http-endpoint-test-token-5f2a9c"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
KB = 1024
MB = 1024 * 1024
WAIT = 30.0


# --- the OpenAPI check ---------------------------------------------------------------------

_ANNOTATIONS = {"description", "title", "examples", "contentMediaType"}
_CHECKED = {
    "$ref", "type", "const", "enum", "properties", "required", "additionalProperties",
    "pattern", "minLength", "maxLength",
}  # fmt: skip
_TYPES: dict[str, Callable[[object], bool]] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "null": lambda v: v is None,
}


def load_openapi() -> dict[str, Any]:
    document: dict[str, Any] = json.loads((ROOT / "openapi.json").read_text())
    return document


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = document
        for step in node["$ref"].removeprefix("#/").split("/"):
            target = target[step]
        node = target
    return node


def validate(document: dict[str, Any], schema: dict[str, Any], value: object, at: str) -> None:
    """A structural JSON Schema check of the keywords openapi.json uses; others fail loudly."""
    schema = resolve(document, schema)
    unknown = set(schema) - _CHECKED - _ANNOTATIONS
    assert not unknown, f"{at}: the test's schema check does not know {sorted(unknown)}"

    if "const" in schema:
        expected = schema["const"]
        assert value == expected, f"{at}: {value!r} != {expected!r}"
        assert type(value) is type(expected), f"{at}: {value!r} is not a {type(expected)}"
    if "enum" in schema:
        assert value in schema["enum"], f"{at}: {value!r} not in {schema['enum']}"
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        assert any(_TYPES[t](value) for t in types), f"{at}: {value!r} is not {types}"
    if isinstance(value, str):
        assert len(value) >= schema.get("minLength", 0), f"{at}: {value!r} is too short"
        assert len(value) <= schema.get("maxLength", len(value)), f"{at}: {value!r} is too long"
        if "pattern" in schema:
            assert re.search(schema["pattern"], value), f"{at}: {value!r} !~ {schema['pattern']}"
    if isinstance(value, dict):
        for name in schema.get("required", []):
            assert name in value, f"{at}: {name!r} is missing"
        properties = schema.get("properties", {})
        if schema.get("additionalProperties") is False:
            extra = set(value) - set(properties)
            assert not extra, f"{at}: undocumented {sorted(extra)}"
        for name, item in value.items():
            if name in properties:
                validate(document, properties[name], item, f"{at}.{name}")


@dataclasses.dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: Any


def check_answer(document: dict[str, Any], method: str, path: str, answer: Answer) -> None:
    """The answer is one that openapi.json documents for the route it reached."""
    assert answer.headers.get("Content-Type", "").startswith("application/json")

    operation = document["paths"].get(route_of(document, path), {}).get(method.lower())
    if operation is not None:
        responses = operation["responses"]
    else:  # no such route or method: only the refusals common to every address are promised
        common = {"401": "Unauthorized", "404": "NotFound", "405": "MethodNotAllowed"}
        responses = {
            code: {"$ref": f"#/components/responses/{name}"} for code, name in common.items()
        }
    assert str(answer.status) in responses, f"{method} {path} -> {answer.status} undocumented"

    response = resolve(document, responses[str(answer.status)])
    for name, header in response.get("headers", {}).items():
        header = resolve(document, header)
        if name in answer.headers:
            validate(document, header["schema"], answer.headers[name], f"header {name}")
        else:
            assert not header.get("required"), f"{method} {path}: no {name} header"
    validate(document, response["content"]["application/json"]["schema"], answer.body, "$")


def route_of(document: dict[str, Any], path: str) -> str:
    """The documented path template that ``path`` matches, or ``path`` itself."""
    for template in document["paths"]:
        pattern = re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            return template
    return path


# --- the endpoint under test ---------------------------------------------------------------


@dataclasses.dataclass
class Endpoint:
    """A running endpoint, a client for it, and the services behind it."""

    base: str
    services: Services
    client: aiohttp.ClientSession
    openapi: dict[str, Any]

    async def call(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Answer:
        """Send a request (with the token unless ``headers`` say otherwise) and check it."""
        async with self.client.request(
            method, self.base + path, headers=AUTH if headers is None else headers, **kwargs
        ) as response:
            answer = Answer(response.status, dict(response.headers), await response.json())
        check_answer(self.openapi, method, path, answer)
        return answer

    async def upload(self, data: bytes, filename: str = "photo.png", **fields: str) -> Answer:
        form = aiohttp.FormData()
        for name, value in fields.items():
            form.add_field(name, value)
        form.add_field(
            "file", io.BytesIO(data), filename=filename, content_type="application/octet-stream"
        )
        return await self.call("POST", "/api/upload", data=form)


EndpointFactory = Callable[..., Awaitable[Endpoint]]


@pytest.fixture
async def make_endpoint(settings: Settings) -> AsyncIterator[EndpointFactory]:
    """Start endpoints on free loopback ports, with settings changed as a test asks."""
    async with contextlib.AsyncExitStack() as stack:

        async def make(**changes: Any) -> Endpoint:
            changed = dataclasses.replace(settings, http_port=0, http_token=TOKEN, **changes)
            services = await stack.enter_async_context(open_services(changed))
            runner = await start_web(services)
            assert runner is not None
            stack.push_async_callback(runner.cleanup)
            client = await stack.enter_async_context(aiohttp.ClientSession())
            host, port = runner.addresses[0][:2]
            return Endpoint(f"http://{host}:{port}", services, client, load_openapi())

        yield make


@pytest.fixture
async def endpoint(make_endpoint: EndpointFactory) -> Endpoint:
    return await make_endpoint()


async def eventually(predicate: Callable[[], bool], what: str) -> None:
    """Wait for a condition that another task brings about, with a generous deadline."""
    deadline = time.monotonic() + WAIT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


# --- uploads -------------------------------------------------------------------------------


async def test_a_multipart_upload_answers_with_the_link_and_is_recorded_as_http(
    endpoint: Endpoint, imgur: ImgurStandIn
) -> None:
    answer = await endpoint.upload(samples.png(seed=1), "holiday.png", title="Beach")

    assert answer.status == 200
    image = imgur.images[answer.body["id"]]
    assert answer.body == {
        "imageUrl": f"https://i.imgur.com/{image.id}.png",
        "id": image.id,
        "deletehash": image.deletehash,
    }
    assert image.title == "Beach"
    [rehost] = await endpoint.services.ledger.recent_rehosts()
    assert rehost.origin.door == "http"
    assert (rehost.origin.title, rehost.origin.filename) == ("Beach", "holiday.png")
    assert rehost.upload.deletehash == image.deletehash


async def test_the_same_file_twice_calls_imgur_once(
    endpoint: Endpoint, imgur: ImgurStandIn
) -> None:
    first = await endpoint.upload(samples.png(seed=2))
    second = await endpoint.upload(samples.png(seed=2), "again.png")

    assert first.status == second.status == 200
    assert first.body == second.body
    assert imgur.upload_calls == 1
    rehosts = await endpoint.services.ledger.recent_rehosts(door="http")
    assert [r.reused for r in rehosts] == [True, False]


async def test_bytes_first_posted_elsewhere_come_back_without_their_deletehash(
    endpoint: Endpoint, imgur: ImgurStandIn
) -> None:
    data = samples.png(seed=12)
    member = Origin(door="discord", guild_id=1, owner_id=7)
    await endpoint.services.pipeline.rehost(StreamSource(_once(data), "cat.png"), member)

    answer = await endpoint.upload(data, "cat.png")

    assert answer.status == 200
    assert answer.body["deletehash"] is None
    assert answer.body["id"] in imgur.images
    assert imgur.upload_calls == 1


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_a_file_streamed_without_a_length_arrives_whole(
    endpoint: Endpoint, imgur: ImgurStandIn
) -> None:
    video = samples.mp4(3 * MB, seed=3)

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(video), 100 * KB):
            yield video[start : start + 100 * KB]

    form = aiohttp.MultipartWriter("form-data")
    part = form.append(chunks())
    part.set_content_disposition("form-data", name="file", filename="clip.mp4")
    answer = await endpoint.call("POST", "/api/upload", data=form)

    assert answer.status == 200
    image = imgur.images[answer.body["id"]]
    assert (image.size, image.file_field) == (len(video), "video")


async def test_a_title_after_the_file_is_refused_before_imgur_is_called(
    endpoint: Endpoint, imgur: ImgurStandIn
) -> None:
    form = aiohttp.FormData()
    form.add_field("file", samples.png(seed=4), filename="photo.png")
    form.add_field("title", "too late")

    answer = await endpoint.call("POST", "/api/upload", data=form)

    assert answer.status == 400
    assert "before" in answer.body["error"]
    assert imgur.upload_calls == 0


async def test_a_form_without_a_file_field_is_a_bad_request(
    endpoint: Endpoint, imgur: ImgurStandIn
) -> None:
    form = aiohttp.FormData()
    form.add_field("title", "nothing")
    form.add_field("image", samples.png(), filename="photo.png")  # the wrong field name

    answer = await endpoint.call("POST", "/api/upload", data=form)

    assert answer.status == 400
    assert "'file'" in answer.body["error"]
    assert imgur.upload_calls == 0


async def test_a_url_upload_fetches_the_link_and_answers_with_imgurs(
    endpoint: Endpoint, imgur: ImgurStandIn, web_files: WebFiles
) -> None:
    url = web_files.serve_bytes("/pics/cat.png", samples.png(seed=5))

    answer = await endpoint.call("POST", "/api/upload", json={"url": url, "title": "Cat"})

    assert answer.status == 200
    assert web_files.hits == ["/pics/cat.png"]
    assert imgur.images[answer.body["id"]].title == "Cat"
    [rehost] = await endpoint.services.ledger.recent_rehosts()
    assert (rehost.origin.door, rehost.origin.filename) == ("http", "cat.png")


async def test_a_url_to_a_private_address_is_refused_without_fetching_it(
    make_endpoint: EndpointFactory, imgur: ImgurStandIn, web_files: WebFiles
) -> None:
    endpoint = await make_endpoint(allow_private_urls=False)
    url = web_files.serve_bytes("/pics/cat.png", samples.png(seed=6))

    answer = await endpoint.call("POST", "/api/upload", json={"url": url})

    assert answer.status == 400
    assert "private or local address" in answer.body["error"]
    assert web_files.hits == []
    assert imgur.upload_calls == 0


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("file:///etc/passwd", "Only http and https"),
        ("ftp://127.0.0.1/a.png", "Only http and https"),
        ("http://user:pw@127.0.0.1/a.png", "user name or password"),
    ],
)
async def test_a_url_that_is_not_plain_http_is_refused(
    endpoint: Endpoint, imgur: ImgurStandIn, url: str, expected: str
) -> None:
    answer = await endpoint.call("POST", "/api/upload", json={"url": url})

    assert answer.status == 400
    assert expected in answer.body["error"]
    assert imgur.requests == []


async def test_titles_are_kept_on_one_line_and_bounded(
    endpoint: Endpoint, imgur: ImgurStandIn
) -> None:
    kept = await endpoint.upload(samples.png(seed=50), title="  Two\nlines\x00 here ")
    too_long = await endpoint.upload(samples.png(seed=51), title="x" * 257)

    assert kept.status == 200
    assert imgur.images[kept.body["id"]].title == "Two lines here"
    assert too_long.status == 400
    assert "256 characters" in too_long.body["error"]


async def post_by_hand(endpoint: Endpoint, sent: bytes, *, length: int) -> asyncio.StreamWriter:
    """A multipart upload written on a raw socket, announcing ``length`` bytes of body."""
    port = int(endpoint.base.rsplit(":", 1)[1])
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        + f"Authorization: Bearer {TOKEN}\r\n".encode()
        + b"Content-Type: multipart/form-data; boundary=cut\r\n"
        + f"Content-Length: {length}\r\n\r\n".encode()
        + sent
    )
    await writer.drain()
    return writer


async def test_a_client_that_hangs_up_mid_file_leaves_nothing_behind(
    endpoint: Endpoint,
    imgur: ImgurStandIn,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    caplog.set_level(logging.INFO, logger="bot.web")
    head = b'--cut\r\nContent-Disposition: form-data; name="file"; filename="clip.mp4"\r\n\r\n'
    sent = head + samples.mp4(3 * MB)[: 2 * MB]
    writer = await post_by_hand(endpoint, sent, length=len(head) + 3 * MB + 9)
    await eventually(lambda: any(spool.iterdir()), "the upload to be spooled to disk")
    writer.close()
    await writer.wait_closed()
    await eventually(
        lambda: any("refused with 400" in r.getMessage() for r in caplog.records),
        "the endpoint to notice",
    )

    assert list(spool.iterdir()) == []
    assert imgur.requests == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_client_that_stalls_mid_file_gives_up_its_turn_to_others(
    make_endpoint: EndpointFactory, imgur: ImgurStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One worker gives two turns to fetch: two callers that stop sending (a crashed client
    # behind a dead connection never hangs up) held them for ever, and nobody else's upload,
    # Discord's included, could start.
    monkeypatch.setattr(web_module, "BODY_IDLE_TIMEOUT", 0.5)
    endpoint = await make_endpoint(upload_workers=1)
    port = int(endpoint.base.rsplit(":", 1)[1])
    head = b'--cut\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
    stalled = []
    for seed in (60, 61):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            b"POST /api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Authorization: Bearer {TOKEN}\r\n".encode()
            + b"Content-Type: multipart/form-data; boundary=cut\r\n"
            + f"Content-Length: {len(head) + 500}\r\n\r\n".encode()
            + head
            + samples.png(seed=seed)[:20]
        )
        await writer.drain()
        stalled.append((reader, writer))

    async with asyncio.timeout(WAIT):
        answer = await endpoint.upload(samples.png(seed=62))

    assert answer.status == 200
    for reader, writer in stalled:
        # The answer alone: aiohttp lingers a while before it closes an unfinished request.
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        length = re.search(rb"Content-Length: (\d+)", head)
        assert length is not None
        body = await reader.readexactly(int(length[1]))
        writer.close()
        await writer.wait_closed()
        assert head.startswith(b"HTTP/1.1 400 ")
        assert json.loads(body) == {
            "error": "The upload stalled: nothing arrived for 0.5 seconds; try again."
        }
    assert await endpoint.services.ledger.pending_uploads() == []
    assert imgur.upload_calls == 1


async def test_a_client_that_hangs_up_while_imgur_works_still_gets_its_upload_recorded(
    endpoint: Endpoint, imgur: ImgurStandIn
) -> None:
    # Imgur has the file by then: the upload must finish and be recorded with its deletehash,
    # not be cancelled into an unconfirmed copy.
    imgur.fail_next("slow", path="/3/image", delay=3.0)
    data = samples.png(seed=52)
    body = (
        b'--cut\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        + data
        + b"\r\n--cut--\r\n"
    )
    writer = await post_by_hand(endpoint, body, length=len(body))
    await eventually(lambda: len(imgur.uploads()) == 1, "the upload to reach Imgur")
    writer.close()
    await writer.wait_closed()
    assert imgur.uploads()[0].status is None, "the client hung up only after Imgur answered"
    ledger = endpoint.services.ledger
    await eventually(lambda: bool(imgur.images), "Imgur to store the file")
    [image] = imgur.images.values()
    deadline = time.monotonic() + WAIT
    while (upload := await ledger.get_upload(image.id)) is None:
        assert time.monotonic() < deadline, "the upload was never recorded"
        await asyncio.sleep(0.05)

    assert upload.state == "done"
    assert upload.deletehash == image.deletehash
    assert await ledger.pending_uploads() == []
    assert imgur.upload_calls == 1


async def test_concurrent_uploads_of_the_same_bytes_call_imgur_once(
    endpoint: Endpoint, imgur: ImgurStandIn
) -> None:
    data = samples.png(seed=53)

    answers = await asyncio.gather(*(endpoint.upload(data, f"copy{i}.png") for i in range(8)))

    assert {a.status for a in answers} == {200}
    assert len({a.body["id"] for a in answers}) == 1
    assert imgur.upload_calls == 1
    rehosts = await endpoint.services.ledger.recent_rehosts(door="http")
    assert sorted(r.reused for r in rehosts) == [False] + [True] * 7


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, "not valid JSON"),
        ({"json": {"link": "https://example.com/a.png"}}, '{"url"'),
        ({"json": ["https://example.com/a.png"]}, '{"url"'),
        ({"json": {"url": "https://example.com/a.png", "title": 7}}, "title"),
        (
            {
                "data": b'{"url": "https://example.com/a.png"}',
                "headers": {"Content-Type": "application/json; charset=no-such-charset"},
            },
            "charset",
        ),
    ],
)
async def test_a_malformed_json_request_is_a_bad_request(
    endpoint: Endpoint, imgur: ImgurStandIn, body: dict[str, Any], expected: str
) -> None:
    headers = {**AUTH, **body.pop("headers", {})}
    answer = await endpoint.call("POST", "/api/upload", headers=headers, **body)

    assert answer.status == 400
    assert expected in answer.body["error"]
    assert imgur.requests == []


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"--x\r\n\r\nno boundary declared\r\n--x--\r\n"),
        ("multipart/form-data; boundary=x", b"nothing like a multipart body"),
        ("multipart/form-data; boundary=x", b"--x\r\nContent-Disposition: form-data\r\n"),
    ],
    ids=["no-boundary", "garbage", "cut-in-headers"],
)
async def test_a_malformed_multipart_body_is_a_bad_request(
    endpoint: Endpoint, imgur: ImgurStandIn, content_type: str, body: bytes
) -> None:
    headers = {**AUTH, "Content-Type": content_type}
    answer = await endpoint.call("POST", "/api/upload", headers=headers, data=body)

    assert answer.status == 400
    assert imgur.requests == []


async def test_a_body_that_is_neither_form_nor_json_is_unsupported(endpoint: Endpoint) -> None:
    headers = {**AUTH, "Content-Type": "image/png"}
    answer = await endpoint.call("POST", "/api/upload", headers=headers, data=samples.png())

    assert answer.status == 415
    assert "multipart/form-data" in answer.body["error"]


@pytest.mark.parametrize(
    "content_type",
    ["multipart/form-data; boundary=x", "application/json"],
    ids=["form", "json"],
)
async def test_a_body_whose_content_encoding_does_not_decode_is_a_bad_request(
    endpoint: Endpoint,
    imgur: ImgurStandIn,
    caplog: pytest.LogCaptureFixture,
    content_type: str,
) -> None:
    caplog.set_level(logging.INFO)
    headers = {**AUTH, "Content-Type": content_type, "Content-Encoding": "gzip"}

    answer = await endpoint.call("POST", "/api/upload", headers=headers, data=b"not gzip" * 64)

    assert answer.status == 400
    assert "Content-Encoding" in answer.body["error"] or "malformed" in answer.body["error"]
    assert imgur.requests == []
    assert await endpoint.services.ledger.pending_uploads() == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
    ],
    ids=["none", "wrong", "longer", "basic", "bare"],
)
async def test_requests_without_the_right_token_are_unauthorized(
    endpoint: Endpoint, imgur: ImgurStandIn, headers: dict[str, str]
) -> None:
    form = aiohttp.FormData()
    form.add_field("file", samples.png(seed=7), filename="photo.png")
    calls = [
        ("POST", "/api/upload", {"data": form}),
        ("DELETE", "/api/upload/abc1234", {}),
        ("GET", "/healthz", {}),
        ("GET", "/anything", {}),
    ]

    for method, path, kwargs in calls:
        answer = await endpoint.call(method, path, headers=headers, **kwargs)
        assert answer.status == 401, (method, path)
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert imgur.requests == []
    assert await endpoint.services.ledger.recent_rehosts() == []


async def _raw_exchange(endpoint: Endpoint, request: bytes) -> tuple[int, bytes]:
    """Send ``request`` as bytes on a new connection; the status and body of the answer."""
    port = int(endpoint.base.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


async def test_a_token_that_is_not_utf8_is_unauthorized(
    endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    # aiohttp keeps such header bytes as surrogates, which str.encode() refuses.
    request = (
        b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Bearer \xff\xfe" + TOKEN.encode() + b"\r\nConnection: close\r\n\r\n"
    )

    status, body = await _raw_exchange(endpoint, request)

    assert status == 401
    assert json.loads(body) == {"error": "Send the token as 'Authorization: Bearer <HTTP_TOKEN>'."}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_request_too_malformed_to_parse_is_logged_in_one_line(
    endpoint: Endpoint, imgur: ImgurStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    # aiohttp refuses these itself, before any middleware: a stranger must not be able to fill
    # the log with tracebacks.
    requests = [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 9000 + b"\r\n\r\n",
        b"POST /api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b"\x01\r\n\r\n",
    ]

    statuses = [(await _raw_exchange(endpoint, request))[0] for request in requests]

    assert statuses == [400, 400, 400]
    refusals = [r for r in caplog.records if "malformed HTTP request" in r.getMessage()]
    assert len(refusals) == len(requests)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert TOKEN not in caplog.text
    assert imgur.requests == []


async def test_a_file_over_its_kinds_limit_is_too_large(
    make_endpoint: EndpointFactory, imgur: ImgurStandIn
) -> None:
    endpoint = await make_endpoint(max_image_bytes=100 * KB, max_video_bytes=1 * MB)

    answer = await endpoint.upload(samples.big_png(300 * KB))

    assert answer.status == 413
    assert "images may be at most" in answer.body["error"]
    assert imgur.upload_calls == 0


async def test_a_request_announcing_more_than_any_limit_is_refused_before_reading(
    make_endpoint: EndpointFactory, imgur: ImgurStandIn
) -> None:
    endpoint = await make_endpoint(max_image_bytes=100 * KB, max_video_bytes=MB // 2)

    answer = await endpoint.upload(samples.mp4(2 * MB))

    assert answer.status == 413
    # Judged from Content-Length alone: the pipeline's own check would name the file's size.
    assert answer.body["error"] == "Files may be at most 0.5 MB."
    assert imgur.upload_calls == 0


async def test_a_json_body_over_the_small_body_limit_is_too_large(endpoint: Endpoint) -> None:
    answer = await endpoint.call(
        "POST", "/api/upload", json={"url": "https://a.b/" + "x" * 100 * KB}
    )

    assert answer.status == 413


async def test_a_text_file_named_png_is_unsupported(
    endpoint: Endpoint, imgur: ImgurStandIn
) -> None:
    answer = await endpoint.upload(b"just some notes, not a picture\n" * 20, "notes.png")

    assert answer.status == 415
    assert "not an image or video" in answer.body["error"]
    assert imgur.upload_calls == 0


@pytest.mark.parametrize(
    ("data", "expected"),
    [(b"", "empty"), (samples.png(seed=8)[:-12], "incomplete")],
    ids=["empty", "truncated"],
)
async def test_an_empty_or_cut_short_file_is_a_bad_request(
    endpoint: Endpoint, imgur: ImgurStandIn, data: bytes, expected: str
) -> None:
    answer = await endpoint.upload(data)

    assert answer.status == 400
    assert expected in answer.body["error"]
    assert imgur.upload_calls == 0


async def test_a_spent_imgur_quota_is_429_with_retry_after(
    endpoint: Endpoint, imgur: ImgurStandIn
) -> None:
    imgur.user_remaining = imgur.upload_cost - 1

    answer = await endpoint.upload(samples.png(seed=9))

    assert answer.status == 429
    assert 0 < int(answer.headers["Retry-After"]) <= 3600
    assert "quota" in answer.body["error"]
    assert imgur.images == {}


async def test_uploads_after_a_429_are_refused_at_once_rather_than_held(
    endpoint: Endpoint, imgur: ImgurStandIn
) -> None:
    # An HTTP caller cannot wait an hour for the quota to refill: it is told when to retry.
    imgur.user_remaining = imgur.upload_cost - 1

    first = await endpoint.upload(samples.png(seed=16))
    second = await asyncio.wait_for(endpoint.upload(samples.png(seed=17)), WAIT)

    assert first.status == second.status == 429
    assert int(second.headers["Retry-After"]) > 0


async def test_imgur_over_capacity_is_503(endpoint: Endpoint, imgur: ImgurStandIn) -> None:
    imgur.fail_next("over_capacity_500", times=10, path="/3/image")

    answer = await endpoint.upload(samples.png(seed=10))

    assert answer.status == 503
    assert "unavailable" in answer.body["error"]
    assert imgur.images == {}
    assert await endpoint.services.ledger.count_uploads_since(0) == 0  # failed ones not counted


async def test_imgur_refusing_the_client_id_is_502(endpoint: Endpoint, imgur: ImgurStandIn) -> None:
    imgur.fail_next("invalid_client", path="/3/image")

    answer = await endpoint.upload(samples.png(seed=11))

    assert answer.status == 502
    assert "IMGUR_CLIENT_ID" in answer.body["error"]


@pytest.mark.parametrize(
    ("message", "status"),
    [
        ("Image format not supported, or image is corrupt.", 400),
        ("File is over the size limit", 413),
    ],
    ids=["corrupt", "size"],
)
async def test_imgur_refusing_the_file_is_the_callers_problem(
    endpoint: Endpoint, imgur: ImgurStandIn, message: str, status: int
) -> None:
    imgur.fail_next("reject", path="/3/image", message=message)

    answer = await endpoint.upload(samples.png(seed=12))

    assert answer.status == status
    assert answer.body["error"].startswith("Imgur refused the file")


async def test_a_full_upload_queue_is_503_with_retry_after(
    make_endpoint: EndpointFactory, imgur: ImgurStandIn
) -> None:
    endpoint = await make_endpoint(upload_workers=1, queue_limit=1)
    scheduler = endpoint.services.pipeline.scheduler
    imgur.fail_next("slow", path="/3/image", delay=2.0)

    holding = asyncio.create_task(endpoint.upload(samples.png(seed=13)))
    await eventually(lambda: len(imgur.uploads()) == 1, "the first upload to reach Imgur")
    waiting = asyncio.create_task(endpoint.upload(samples.png(seed=14)))
    await eventually(lambda: scheduler.waiting == 1, "the second upload to queue")
    refused = await endpoint.upload(samples.png(seed=15))

    assert refused.status == 503
    assert refused.headers["Retry-After"] == "30"
    assert (await holding).status == (await waiting).status == 200
    assert imgur.upload_calls == 2


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("GET", "/", 404), ("GET", "/api/upload", 405), ("PUT", "/api/upload/abc", 405)],
)
async def test_other_addresses_and_methods_answer_in_json(
    endpoint: Endpoint, method: str, path: str, status: int
) -> None:
    answer = await endpoint.call(method, path)

    assert answer.status == status
    if status == 405:
        assert answer.headers["Allow"] in answer.body["error"]


# --- deleting ------------------------------------------------------------------------------


async def test_delete_removes_an_http_upload_from_imgur_and_the_ledger(
    endpoint: Endpoint, imgur: ImgurStandIn
) -> None:
    uploaded = await endpoint.upload(samples.png(seed=20))
    image_id = uploaded.body["id"]

    deleted = await endpoint.call("DELETE", f"/api/upload/{image_id}")
    again = await endpoint.call("DELETE", f"/api/upload/{image_id}")

    assert deleted.status == 200
    assert deleted.body == {"id": image_id, "deleted": True}
    assert imgur.images[image_id].deleted
    upload = await endpoint.services.ledger.get_upload(image_id)
    assert upload is not None
    assert upload.state == "deleted"
    assert again.status == 404


@pytest.mark.parametrize("image_id", ["NoSuch1", "bad.id", "%C3%A9t%C3%A9"])
async def test_delete_of_an_unknown_id_is_not_found(
    endpoint: Endpoint, imgur: ImgurStandIn, image_id: str
) -> None:
    answer = await endpoint.call("DELETE", f"/api/upload/{image_id}")

    assert answer.status == 404
    assert imgur.requests == []


async def test_delete_of_an_upload_made_elsewhere_is_not_found(
    endpoint: Endpoint, imgur: ImgurStandIn, tmp_path: Path
) -> None:
    path = tmp_path / "from-cli.png"
    path.write_bytes(samples.png(seed=21))
    rehost = await endpoint.services.pipeline.rehost(FileSource(path), Origin(door="cli"))
    image_id = rehost.upload.imgur_id
    assert image_id is not None

    answer = await endpoint.call("DELETE", f"/api/upload/{image_id}")

    assert answer.status == 404
    assert not imgur.images[image_id].deleted


async def test_delete_keeps_an_image_that_another_door_still_uses(
    endpoint: Endpoint, imgur: ImgurStandIn, tmp_path: Path
) -> None:
    data = samples.png(seed=22)
    path = tmp_path / "shared.png"
    path.write_bytes(data)
    await endpoint.services.pipeline.rehost(FileSource(path), Origin(door="discord", guild_id=1))
    uploaded = await endpoint.upload(data)
    image_id = uploaded.body["id"]

    withdrawn = await endpoint.call("DELETE", f"/api/upload/{image_id}")
    again = await endpoint.call("DELETE", f"/api/upload/{image_id}")

    assert withdrawn.status == 200
    assert withdrawn.body == {"id": image_id, "deleted": False}
    assert not imgur.images[image_id].deleted
    live = await endpoint.services.ledger.recent_rehosts(live_only=True)
    assert [r.origin.door for r in live] == ["discord"]
    assert again.status == 404


async def test_a_delete_racing_a_discord_post_of_the_same_bytes_keeps_the_image(
    endpoint: Endpoint, imgur: ImgurStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = samples.png(seed=24)
    image_id = (await endpoint.upload(data)).body["id"]
    ledger, pipeline = endpoint.services.ledger, endpoint.services.pipeline
    member = Origin(door="discord", guild_id=1, owner_id=7)
    read_records = ledger.rehosts_of
    posted = False

    async def records_then_a_discord_post(upload_id: int, *, live_only: bool = True) -> Any:
        # The member posts the same bytes just after the DELETE has read the records.
        nonlocal posted
        records = await read_records(upload_id, live_only=live_only)
        if not posted:
            posted = True
            await pipeline.rehost(StreamSource(_once(data), "cat.png"), member)
        return records

    monkeypatch.setattr(ledger, "rehosts_of", records_then_a_discord_post)

    answer = await endpoint.call("DELETE", f"/api/upload/{image_id}")

    assert posted
    assert answer.status == 200
    assert answer.body == {"id": image_id, "deleted": False}
    assert not imgur.images[image_id].deleted
    live = await ledger.recent_rehosts(live_only=True)
    assert [(r.origin.door, r.upload.imgur_id) for r in live] == [("discord", image_id)]
    assert imgur.upload_calls == 1


async def test_two_deletes_of_the_same_id_at_once_delete_it_once(
    endpoint: Endpoint, imgur: ImgurStandIn
) -> None:
    image_id = (await endpoint.upload(samples.png(seed=25))).body["id"]
    imgur.fail_next("slow", method="DELETE", delay=0.5)

    answers = await asyncio.gather(
        endpoint.call("DELETE", f"/api/upload/{image_id}"),
        endpoint.call("DELETE", f"/api/upload/{image_id}"),
    )

    assert sorted(a.status for a in answers) == [200, 404]
    assert [a.body for a in answers if a.status == 200] == [{"id": image_id, "deleted": True}]
    assert imgur.images[image_id].deleted
    assert len([r for r in imgur.requests if r.method == "DELETE"]) == 1


async def test_a_delete_that_imgur_fails_can_be_retried(
    endpoint: Endpoint, imgur: ImgurStandIn
) -> None:
    image_id = (await endpoint.upload(samples.png(seed=23))).body["id"]
    imgur.fail_next("server_error", times=10, method="DELETE")

    failed = await endpoint.call("DELETE", f"/api/upload/{image_id}")
    imgur.clear_faults()
    retried = await endpoint.call("DELETE", f"/api/upload/{image_id}")

    assert failed.status == 503
    assert retried.status == 200
    assert imgur.images[image_id].deleted


# --- health --------------------------------------------------------------------------------


async def test_health_is_ok_and_asks_imgur_at_most_once_a_minute(
    endpoint: Endpoint, imgur: ImgurStandIn
) -> None:
    first = await endpoint.call("GET", "/healthz")
    second = await endpoint.call("GET", "/healthz")

    assert first.status == second.status == 200
    assert first.body == {"status": "ok", "database": True, "imgur": True}
    assert [r.path for r in imgur.requests] == ["/3/credits"]
    assert imgur.uploads() == []


async def test_health_fails_when_imgur_refuses_the_client_id(
    endpoint: Endpoint, imgur: ImgurStandIn
) -> None:
    imgur.fail_next("invalid_client", path="/3/credits")

    answer = await endpoint.call("GET", "/healthz")

    assert answer.status == 503
    assert (answer.body["database"], answer.body["imgur"]) == (True, False)
    assert "Imgur" in answer.body["error"]


async def test_health_fails_when_the_database_is_gone(endpoint: Endpoint) -> None:
    await endpoint.services.ledger.close()

    answer = await endpoint.call("GET", "/healthz")

    assert answer.status == 503
    assert (answer.body["database"], answer.body["imgur"]) == (False, True)
    assert "database" in answer.body["error"]


# --- secrets, wiring and the OpenAPI document ----------------------------------------------


async def test_neither_deletehash_nor_token_reaches_the_logs(
    endpoint: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)

    uploaded = await endpoint.upload(samples.png(seed=30))
    await endpoint.call("GET", "/healthz")
    await endpoint.call("DELETE", f"/api/upload/{uploaded.body['id']}")

    assert uploaded.body["id"] in caplog.text
    assert uploaded.body["deletehash"] not in caplog.text
    assert TOKEN not in caplog.text


async def test_the_openapi_document_describes_exactly_the_routes_served(
    services: Services,
) -> None:
    app = create_app(dataclasses.replace(services, settings=_with_token(services.settings)))
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    documented = {
        (method, path)
        for path, operations in load_openapi()["paths"].items()
        for method in operations
    }

    assert served == documented


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (MediaTooLarge("big"), 413),
        (UnsupportedMedia("text"), 415),
        (EmptyMedia("empty"), 400),
        (TruncatedMedia("cut"), 400),
        (SourceError("gone"), 400),
        (BlockedAddress("private"), 400),
        (ImgurRateLimited(None), 429),
        (ImgurRejected("Image format not supported"), 400),
        (ImgurRejected("File is over the size limit"), 413),
        (ImgurAuthError("client id"), 502),
        (ImgurNotFound("no album"), 502),
        (ImgurUnavailable("down"), 503),
        (QueueFull("busy"), 503),
        (LedgerError("disk"), 503),
        (RehostError("other"), 500),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_every_error_maps_to_a_status_the_document_lists(error: RehostError, status: int) -> None:
    documented = load_openapi()["paths"]["/api/upload"]["post"]["responses"]

    assert status_for(error) == status
    assert str(status) in documented


async def test_the_endpoint_is_off_without_port_and_token(services: Services) -> None:
    assert services.settings.http_port is None
    assert await start_web(services) is None
    assert await serve(services.settings) == 2


def _with_token(settings: Settings) -> Settings:
    return dataclasses.replace(settings, http_port=0, http_token=TOKEN)


# --- as people and other processes use it --------------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_gets_the_link_with_the_token_and_401_without(
    endpoint: Endpoint, imgur: ImgurStandIn, tmp_path: Path
) -> None:
    photo = tmp_path / "photo.png"
    photo.write_bytes(samples.png(seed=40))

    async def curl(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            "curl", "-s", "-o", "-", "-w", "\n%{http_code}", *args,
            "-F", f"file=@{photo}", f"{endpoint.base}/api/upload",
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(process.communicate(), WAIT)
        body, _, code = out.decode().rpartition("\n")
        return int(code), body

    status, body = await curl("-H", f"Authorization: Bearer {TOKEN}")
    refused, _ = await curl()

    assert status == 200
    link = json.loads(body)["imageUrl"]
    assert re.fullmatch(r"https://i\.imgur\.com/[A-Za-z0-9]+\.png", link)
    assert refused == 401
    assert imgur.upload_calls == 1


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_serve_runs_the_endpoint_alone_until_sigterm(
    imgur: ImgurStandIn, tmp_path: Path
) -> None:
    port = _free_port()
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "IMGUR_CLIENT_ID": imgur.client_id,
        "IMGUR_API_URL": imgur.url,
        "DATABASE_PATH": str(tmp_path / "ledger.sqlite3"),
        "HTTP_PORT": str(port),
        "HTTP_TOKEN": TOKEN,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "serve",
        cwd=tmp_path, env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    try:
        log_lines: list[str] = []
        while "listening on 127.0.0.1" not in (line := await _line(process.stderr)):
            log_lines.append(line)
            assert line, "serve exited before listening: " + "".join(log_lines)

        async with aiohttp.ClientSession() as client:
            form = aiohttp.FormData()
            form.add_field("file", samples.png(seed=41), filename="photo.png")
            url = f"http://127.0.0.1:{port}/api/upload"
            async with client.post(url, data=form, headers=AUTH) as response:
                status, body = response.status, await response.json()

        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), WAIT)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert status == 200
    assert body["id"] in imgur.images
    assert code == 0


async def _line(stream: asyncio.StreamReader) -> str:
    return (await asyncio.wait_for(stream.readline(), WAIT)).decode()


async def test_serve_without_port_and_token_exits_2_with_one_line(
    imgur: ImgurStandIn, tmp_path: Path
) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "IMGUR_CLIENT_ID": imgur.client_id,
        "DATABASE_PATH": str(tmp_path / "ledger.sqlite3"),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "serve",
        cwd=tmp_path, env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), WAIT)

    assert process.returncode == 2
    assert len(err.decode().splitlines()) == 1
    assert "HTTP_PORT and HTTP_TOKEN" in err.decode()
