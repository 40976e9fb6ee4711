"""The Imgur stand-in behaves as IMGUR_API.md says Imgur does, checked over real HTTP."""

from __future__ import annotations

import ast
import asyncio
import base64
import hashlib
import io
import json
import os
import signal
import struct
import sys
import tracemalloc
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDictProxy
from yarl import URL

from tests.imgur_standin import ImgurStandIn, _is_loopback, sniff

CLIENT_ID = "test-client-id"
AUTH = {"Authorization": f"Client-ID {CLIENT_ID}"}
REPO = Path(__file__).resolve().parent.parent
MB = 1024 * 1024


# --- sample files: just enough bytes for Imgur's (and the stand-in's) type sniffing ----------


def png(width: int = 3, height: int = 2, padding: int = 0) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0" * (4 + padding)


def gif(*, animated: bool) -> bytes:
    header = b"GIF89a" + struct.pack("<HH", 16, 9) + b"\x00\x00\x00"
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00" if animated else b""
    return header + loop + b"\x2c" + b"\0" * 9 + b"\x3b"


def jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00" + b"\0" * 9
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"


MP4 = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isommp41" + b"\0" * 64
MOV = b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00qt  " + b"\0" * 64
WEBM = b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01" + b"\0" * 64


# --- talking to the stand-in -------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: CIMultiDictProxy[str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").split(";")[0]


async def call(session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> Answer:
    async with session.request(method, url, **kwargs) as response:
        return Answer(response.status, response.headers, await response.text())


async def upload(
    session: aiohttp.ClientSession,
    standin: ImgurStandIn,
    data: bytes,
    *,
    field: str = "image",
    path: str = "/3/image",
    filename: str = "file.bin",
    **fields: str,
) -> Answer:
    """A multipart upload with the file as a part, the way Imgur prefers it."""
    form = aiohttp.FormData()
    form.add_field(field, io.BytesIO(data), filename=filename)
    for name, value in fields.items():
        form.add_field(name, value)
    return await call(session, "POST", standin.url + path, data=form)


@pytest.fixture
async def standin() -> AsyncIterator[ImgurStandIn]:
    async with ImgurStandIn(client_id=CLIENT_ID) as running:
        yield running


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH) as client:
        yield client


@pytest.fixture
async def file_server() -> AsyncIterator[tuple[str, dict[str, bytes]]]:
    """A loopback web server that serves whatever bytes the test puts in its dict."""
    files: dict[str, bytes] = {}

    async def serve(request: web.Request) -> web.Response:
        body = files.get(request.match_info["name"])
        if body is None:
            return web.Response(status=404)
        return web.Response(body=body, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/{name}", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}", files
    await runner.cleanup()


# --- uploads in each encoding -----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/3/image", "/3/upload"])
async def test_multipart_upload_answers_the_documented_envelope(
    standin: ImgurStandIn, session: aiohttp.ClientSession, path: str
) -> None:
    answer = await upload(session, standin, png(3, 2), path=path, title="A title", name="a.png")

    assert answer.status == 200
    body = answer.json()
    assert set(body) == {"data", "success", "status"}
    assert body["success"] is True
    assert body["status"] == 200
    data = body["data"]
    assert len(data["id"]) == 7
    assert len(data["deletehash"]) == 15
    assert data["link"] == f"https://i.imgur.com/{data['id']}.png"
    assert data["type"] == "image/png"
    assert (data["width"], data["height"]) == (3, 2)
    assert data["size"] == len(png(3, 2))
    assert data["animated"] is False
    assert data["title"] == "A title"
    assert data["name"] == "a.png"
    assert data["description"] is None
    assert data["nsfw"] is None
    assert data["in_gallery"] is False
    assert data["account_id"] == 0
    assert data["has_sound"] is False
    assert abs(data["datetime"] - standin.now()) < 60

    stored = standin.images[data["id"]]
    assert stored.deletehash == data["deletehash"]
    assert stored.sha256 == hashlib.sha256(png(3, 2)).hexdigest()
    assert stored.encoding == "multipart"
    assert standin.requests[-1].encoding == "multipart"
    assert standin.upload_calls == 1


async def test_base64_upload_is_decoded_before_it_is_stored(
    standin: ImgurStandIn, session: aiohttp.ClientSession
) -> None:
    payload = {"image": base64.b64encode(jpeg(640, 480)).decode(), "type": "base64"}

    answer = await call(session, "POST", standin.url + "/3/image", data=payload)

    assert answer.status == 200
    data = answer.json()["data"]
    assert data["type"] == "image/jpeg"
    assert data["link"].endswith(".jpg")
    assert (data["width"], data["height"]) == (640, 480)
    assert standin.images[data["id"]].sha256 == hashlib.sha256(jpeg(640, 480)).hexdigest()
    recorded = standin.requests[-1]
    assert recorded.encoding == "base64"
    assert recorded.content_type == "application/x-www-form-urlencoded"
    assert recorded.bytes_received == len(jpeg(640, 480))
    assert "image" not in recorded.fields  # file contents are counted, not kept
    assert recorded.fields["type"] == "base64"


async def test_url_upload_is_fetched_by_the_standin(
    standin: ImgurStandIn,
    session: aiohttp.ClientSession,
    file_server: tuple[str, dict[str, bytes]],
) -> None:
    base, files = file_server
    files["cat.gif"] = gif(animated=False)

    answer = await call(
        session,
        "POST",
        standin.url + "/3/image",
        data={"image": f"{base}/cat.gif", "type": "URL"},
    )

    assert answer.status == 200
    data = answer.json()["data"]
    assert data["type"] == "image/gif"
    assert data["size"] == len(gif(animated=False))
    recorded = standin.requests[-1]
    assert recorded.encoding == "url"
    assert recorded.fields["image"] == f"{base}/cat.gif"
    assert recorded.bytes_received == len(gif(animated=False))


async def test_url_upload_that_cannot_be_fetched_is_a_400(
    standin: ImgurStandIn,
    session: aiohttp.ClientSession,
    file_server: tuple[str, dict[str, bytes]],
) -> None:
    base, _ = file_server

    answer = await call(
        session,
        "POST",
        standin.url + "/3/upload",
        data={"image": f"{base}/missing.png", "type": "URL"},
    )

    assert answer.status == 400
    assert answer.json()["data"]["error"].startswith("Invalid URL")
    assert standin.images == {}


def test_only_loopback_urls_count_as_fetchable() -> None:
    assert _is_loopback(URL("http://127.0.0.1:8000/a.png"))
    assert _is_loopback(URL("http://localhost/a.png"))
    assert _is_loopback(URL("http://[::1]:80/a.png"))
    assert not _is_loopback(URL("http://10.0.0.1/a.png"))
    assert not _is_loopback(URL("https://example.com/a.png"))


async def test_multipart_may_carry_base64_as_a_text_part(
    standin: ImgurStandIn, session: aiohttp.ClientSession
) -> None:
    form = aiohttp.FormData()
    form.add_field("type", "base64")
    form.add_field("image", base64.b64encode(png()).decode())

    answer = await call(session, "POST", standin.url + "/3/image", data=form)

    assert answer.status == 200
    assert answer.json()["data"]["size"] == len(png())
    assert standin.requests[-1].encoding == "base64"


# --- what Imgur refuses -------------------------------------------------------------------


async def test_unknown_bytes_get_an_error_object(
    standin: ImgurStandIn, session: aiohttp.ClientSession
) -> None:
    answer = await upload(session, standin, b"%PDF-1.7 not an image at all")

    assert answer.status == 400
    body = answer.json()
    assert body["success"] is False
    assert body["status"] == 400
    assert body["data"]["error"] == {
        "code": 1003,
        "message": "File type invalid (1)",
        "type": "ImgurException",
        "exception": [],
    }
    assert standin.images == {}


@pytest.mark.parametrize("payload", [{"type": "file"}, {"title": "no image"}])
async def test_missing_image_gets_an_error_string(
    standin: ImgurStandIn, session: aiohttp.ClientSession, payload: dict[str, str]
) -> None:
    answer = await call(session, "POST", standin.url + "/3/image", data=payload)

    assert answer.status == 400
    assert answer.json()["data"] == {
        "error": "No image data was sent to the upload api",
        "request": "/3/image",
        "method": "POST",
    }


async def test_empty_file_part_counts_as_no_image_data(
    standin: ImgurStandIn, session: aiohttp.ClientSession
) -> None:
    answer = await upload(session, standin, b"")

    assert answer.status == 400
    assert answer.json()["data"]["error"] == "No image data was sent to the upload api"


async def test_still_image_over_the_image_limit_is_refused(session: aiohttp.ClientSession) -> None:
    async with ImgurStandIn(image_limit=1000, video_limit=100_000) as standin:
        small = await upload(session, standin, png(padding=900))
        large = await upload(session, standin, png(padding=1000))

    assert small.status == 200
    assert large.status == 400
    assert large.json()["data"]["error"] == "File is over the size limit"
    assert standin.requests[-1].bytes_received == len(png(padding=1000))


async def test_video_over_the_video_limit_is_refused(session: aiohttp.ClientSession) -> None:
    async with ImgurStandIn(image_limit=100, video_limit=1000) as standin:
        fits = await upload(session, standin, MP4 + b"\0" * 800, field="video")
        too_large = await upload(session, standin, MP4 + b"\0" * 1000, field="video")

    assert fits.status == 200  # over the still limit, under the video one
    assert too_large.status == 400
    assert too_large.json()["data"]["error"] == "File is over the size limit"


async def test_video_sent_as_image_is_refused_as_invalid_type(
    standin: ImgurStandIn, session: aiohttp.ClientSession
) -> None:
    answer = await upload(session, standin, MP4, field="image")

    assert answer.status == 400
    assert answer.json()["data"]["error"]["code"] == 1003


async def test_large_png_comes_back_as_jpeg(session: aiohttp.ClientSession) -> None:
    async with ImgurStandIn(png_to_jpeg_over=100) as standin:
        small = await upload(session, standin, png())
        large = await upload(session, standin, png(padding=200))

    assert small.json()["data"]["type"] == "image/png"
    assert large.json()["data"]["type"] == "image/jpeg"
    assert large.json()["data"]["link"].endswith(".jpg")


# --- videos -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "data"),
    [("video", MP4), ("video", MOV), ("video", WEBM), ("image", gif(animated=True))],
    ids=["mp4", "mov", "webm", "animated-gif"],
)
async def test_video_comes_back_pending_as_mp4(
    standin: ImgurStandIn, session: aiohttp.ClientSession, field: str, data: bytes
) -> None:
    answer = await upload(session, standin, data, field=field, path="/3/upload")

    assert answer.status == 200
    body = answer.json()["data"]
    image_id = body["id"]
    assert body["type"] == "video/mp4"
    assert body["animated"] is True
    assert body["link"] == f"https://i.imgur.com/{image_id}.mp4"
    assert body["mp4"] == f"https://i.imgur.com/{image_id}.mp4"
    assert body["gifv"] == f"https://i.imgur.com/{image_id}.gifv"
    assert body["processing"] == {"status": "pending"}
    assert standin.images[image_id].kind == "video"


async def test_pending_video_completes_on_a_later_get(
    standin: ImgurStandIn, session: aiohttp.ClientSession
) -> None:
    uploaded = await upload(session, standin, MP4, field="video", disable_audio="1")
    image_id = uploaded.json()["data"]["id"]

    later = await call(session, "GET", f"{standin.url}/3/image/{image_id}")

    assert later.status == 200
    assert later.json()["data"]["processing"] == {"status": "completed"}
    assert later.json()["data"]["mp4_size"] == len(MP4)
    assert standin.images[image_id].disable_audio is True


async def test_pending_video_completes_when_the_clock_moves_on(
    session: aiohttp.ClientSession,
) -> None:
    async with ImgurStandIn(video_ready_after_gets=99, video_ready_after_seconds=30) as standin:
        uploaded = await upload(session, standin, WEBM, field="video")
        image_url = f"{standin.url}/3/image/{uploaded.json()['data']['id']}"

        early = await call(session, "GET", image_url)
        standin.advance(31)
        late = await call(session, "GET", image_url)

    assert early.json()["data"]["processing"] == {"status": "pending"}
    assert late.json()["data"]["processing"] == {"status": "completed"}


# --- reading and deleting --------------------------------------------------------------------


async def test_get_image_hides_the_deletehash_from_anonymous_callers(
    standin: ImgurStandIn, session: aiohttp.ClientSession
) -> None:
    uploaded = (await upload(session, standin, png())).json()["data"]

    fetched = await call(session, "GET", f"{standin.url}/3/image/{uploaded['id']}")

    assert fetched.status == 200
    assert fetched.json()["data"]["id"] == uploaded["id"]
    assert "deletehash" not in fetched.json()["data"]


async def test_unknown_image_id_gets_a_json_404(
    standin: ImgurStandIn, session: aiohttp.ClientSession
) -> None:
    answer = await call(session, "GET", f"{standin.url}/3/image/nothere")

    assert answer.status == 404
    assert answer.json()["success"] is False


async def test_delete_by_deletehash_removes_the_image(
    standin: ImgurStandIn, session: aiohttp.ClientSession
) -> None:
    uploaded = (await upload(session, standin, png())).json()["data"]

    deleted = await call(session, "DELETE", f"{standin.url}/3/image/{uploaded['deletehash']}")
    gone = await call(session, "GET", f"{standin.url}/3/image/{uploaded['id']}")

    assert deleted.status == 200
    assert deleted.json() == {"data": True, "success": True, "status": 200}
    image = standin.image_by_deletehash(uploaded["deletehash"])
    assert image is not None
    assert image.deleted is True
    assert gone.status == 404


async def test_unknown_or_repeated_delete_gets_an_html_404(
    standin: ImgurStandIn, session: aiohttp.ClientSession
) -> None:
    uploaded = (await upload(session, standin, png())).json()["data"]
    first = await call(session, "DELETE", f"{standin.url}/3/image/{uploaded['deletehash']}")

    again = await call(session, "DELETE", f"{standin.url}/3/image/{uploaded['deletehash']}")
    unknown = await call(session, "DELETE", f"{standin.url}/3/image/AAAAAAAAAAAAAAA")

    assert first.status == 200
    for answer in (again, unknown):
        assert answer.status == 404
        assert answer.content_type == "text/html"
        assert answer.text.lstrip().startswith("<!DOCTYPE html>")


async def test_delete_by_id_needs_the_account_that_uploaded(
    session: aiohttp.ClientSession,
) -> None:
    async with (
        ImgurStandIn(access_token="tok") as standin,
        aiohttp.ClientSession(headers={"Authorization": "Bearer tok"}) as account,
    ):
        mine = (await upload(account, standin, png())).json()["data"]
        anonymous = (await upload(session, standin, png())).json()["data"]

        by_anonymous = await call(session, "DELETE", f"{standin.url}/3/image/{mine['id']}")
        by_owner = await call(account, "DELETE", f"{standin.url}/3/image/{mine['id']}")
        not_owner = await call(account, "DELETE", f"{standin.url}/3/image/{anonymous['id']}")

    assert mine["account_id"] != 0
    assert by_anonymous.status == 404
    assert by_owner.status == 200
    assert not_owner.status == 404


# --- albums -------------------------------------------------------------------------------


async def test_album_from_deletehashes_and_later_uploads_into_it(
    standin: ImgurStandIn, session: aiohttp.ClientSession
) -> None:
    first = (await upload(session, standin, png())).json()["data"]
    second = (await upload(session, standin, png())).json()["data"]
    created = await call(
        session,
        "POST",
        standin.url + "/3/album",
        data=[
            ("deletehashes[]", first["deletehash"]),
            ("deletehashes[]", second["deletehash"]),
            ("title", "Holiday"),
            ("privacy", "hidden"),
        ],
    )
    album = created.json()["data"]

    third = (await upload(session, standin, png(), album=album["deletehash"])).json()["data"]
    shown = await call(session, "GET", f"{standin.url}/3/album/{album['id']}")

    assert created.status == 200
    assert set(album) == {"id", "deletehash"}
    assert standin.albums[album["id"]].image_ids == [first["id"], second["id"], third["id"]]
    assert standin.albums[album["id"]].title == "Holiday"
    assert shown.json()["data"]["images_count"] == 3
    assert "deletehash" not in shown.json()["data"]


async def test_album_accepts_comma_lists_and_ids(
    standin: ImgurStandIn, session: aiohttp.ClientSession
) -> None:
    first = (await upload(session, standin, png())).json()["data"]
    second = (await upload(session, standin, png())).json()["data"]

    by_list = await call(
        session,
        "POST",
        standin.url + "/3/album",
        data={"deletehashes": f"{first['deletehash']},{second['deletehash']}"},
    )
    by_ids = await call(session, "POST", standin.url + "/3/album", data={"ids[]": first["id"]})

    assert standin.albums[by_list.json()["data"]["id"]].image_ids == [first["id"], second["id"]]
    assert standin.albums[by_ids.json()["data"]["id"]].image_ids == [first["id"]]


async def test_album_delete_keeps_its_images(
    standin: ImgurStandIn, session: aiohttp.ClientSession
) -> None:
    image = (await upload(session, standin, png())).json()["data"]
    album = (
        await call(
            session,
            "POST",
            standin.url + "/3/album",
            data={"deletehashes[]": image["deletehash"]},
        )
    ).json()["data"]

    deleted = await call(session, "DELETE", f"{standin.url}/3/album/{album['deletehash']}")
    again = await call(session, "DELETE", f"{standin.url}/3/album/{album['deletehash']}")

    assert deleted.json() == {"data": True, "success": True, "status": 200}
    assert standin.albums[album["id"]].deleted is True
    assert standin.images[image["id"]].deleted is False
    assert again.status == 404
    assert again.content_type == "text/html"


# --- authentication -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Client-ID someone-else"}, {"Authorization": "Bearer"}],
    ids=["missing", "wrong-client-id", "empty-bearer"],
)
async def test_bad_credentials_get_a_403(standin: ImgurStandIn, headers: dict[str, str]) -> None:
    async with aiohttp.ClientSession(headers=headers) as anonymous:
        answer = await upload(anonymous, standin, png())

    assert answer.status == 403
    body = answer.json()
    assert body["success"] is False
    assert body["status"] == 403
    assert body["data"]["error"] in ("Invalid client_id", "The access token provided is invalid.")
    assert standin.images == {}


async def test_bearer_token_is_accepted_when_configured() -> None:
    async with (
        ImgurStandIn(access_token="good-token") as standin,
        aiohttp.ClientSession(headers={"Authorization": "Bearer good-token"}) as good,
        aiohttp.ClientSession(headers={"Authorization": "Bearer stale-token"}) as stale,
    ):
        accepted = await upload(good, standin, png())
        refused = await upload(stale, standin, png())

    assert accepted.status == 200
    assert accepted.json()["data"]["account_id"] != 0
    assert refused.status == 403
    assert refused.json()["data"]["error"] == "The access token provided is invalid."


async def test_requests_are_recorded_with_their_authorization_and_fields(
    standin: ImgurStandIn, session: aiohttp.ClientSession
) -> None:
    await upload(
        session, standin, png(), filename="pic.png", title="T", description="D", type="file"
    )

    recorded = standin.uploads()[-1]
    assert recorded.method == "POST"
    assert recorded.path == "/3/image"
    assert recorded.headers["authorization"] == f"Client-ID {CLIENT_ID}"
    assert recorded.fields["title"] == "T"
    assert recorded.fields["description"] == "D"
    assert recorded.fields["type"] == "file"
    assert recorded.filename == "pic.png"
    assert recorded.file_field == "image"
    assert recorded.bytes_received == len(png())
    assert recorded.status == 200


# --- quota ----------------------------------------------------------------------------------


async def test_every_answer_tells_the_quota_and_posts_tell_the_post_limit(
    standin: ImgurStandIn, session: aiohttp.ClientSession
) -> None:
    uploaded = await upload(session, standin, png())
    fetched = await call(session, "GET", f"{standin.url}/3/image/{uploaded.json()['data']['id']}")
    refused = await call(session, "GET", f"{standin.url}/3/image/nothere")

    assert uploaded.headers["X-RateLimit-UserLimit"] == "500"
    assert uploaded.headers["X-RateLimit-UserRemaining"] == "490"
    assert uploaded.headers["X-RateLimit-ClientLimit"] == "12500"
    assert uploaded.headers["X-RateLimit-ClientRemaining"] == "12490"
    assert fetched.headers["X-RateLimit-UserRemaining"] == "489"
    assert refused.headers["X-RateLimit-UserRemaining"] == "488"

    # The user reset is an epoch an hour ahead; the post reset counts seconds from now.
    user_reset = int(uploaded.headers["X-RateLimit-UserReset"])
    assert 3500 < user_reset - standin.now() <= 3600
    assert uploaded.headers["X-Post-Rate-Limit-Limit"] == "1250"
    assert uploaded.headers["X-Post-Rate-Limit-Remaining"] == "1249"
    assert 3500 < int(uploaded.headers["X-Post-Rate-Limit-Reset"]) <= 3600
    assert "X-Post-Rate-Limit-Remaining" not in fetched.headers


async def test_credits_report_the_quota_without_spending_it(
    standin: ImgurStandIn, session: aiohttp.ClientSession
) -> None:
    await upload(session, standin, png())

    first = await call(session, "GET", standin.url + "/3/credits")
    second = await call(session, "GET", standin.url + "/3/credits")

    assert first.json() == second.json()
    assert first.json()["data"] == {
        "UserLimit": 500,
        "UserRemaining": 490,
        "UserReset": int(standin.user_reset),
        "ClientLimit": 12500,
        "ClientRemaining": 12490,
    }


async def test_spent_user_credits_mean_429_until_the_hourly_reset(
    session: aiohttp.ClientSession,
) -> None:
    async with ImgurStandIn(user_limit=30) as standin:
        answers = [await upload(session, standin, png()) for _ in range(4)]
        reset_before = standin.user_reset
        standin.advance(3600)
        after_reset = await upload(session, standin, png())

    assert [a.status for a in answers] == [200, 200, 200, 429]
    assert answers[2].headers["X-RateLimit-UserRemaining"] == "0"
    assert answers[3].headers["X-RateLimit-UserRemaining"] == "0"
    assert after_reset.status == 200
    assert after_reset.headers["X-RateLimit-UserRemaining"] == "20"
    assert int(after_reset.headers["X-RateLimit-UserReset"]) == int(reset_before + 3600)
    assert standin.rate_limited == 1
    assert len(standin.images) == 4


async def test_spent_client_credits_wait_for_the_daily_reset(
    session: aiohttp.ClientSession,
) -> None:
    async with ImgurStandIn(client_limit=10) as standin:
        first = await upload(session, standin, png())
        standin.advance(3600)
        next_hour = await upload(session, standin, png())
        standin.advance(86400)
        next_day = await upload(session, standin, png())

    assert first.status == 200
    assert next_hour.status == 429
    assert next_day.status == 200
    assert next_day.headers["X-RateLimit-ClientRemaining"] == "0"


async def test_spent_post_limit_means_429(session: aiohttp.ClientSession) -> None:
    async with ImgurStandIn(post_limit=2) as standin:
        answers = [await upload(session, standin, png()) for _ in range(3)]
        credits = await call(session, "GET", standin.url + "/3/credits")

    assert [a.status for a in answers] == [200, 200, 429]
    assert answers[2].headers["X-Post-Rate-Limit-Remaining"] == "0"
    assert credits.status == 200


async def test_429_errors_shape_has_no_data_envelope(session: aiohttp.ClientSession) -> None:
    async with ImgurStandIn(user_limit=0, rate_limit_shape="errors") as standin:
        answer = await upload(session, standin, png())

    assert answer.status == 429
    body = answer.json()
    assert set(body) == {"errors"}
    error = body["errors"][0]
    assert error["code"] == "429"
    assert error["status"] == "Too Many Requests"
    assert error["detail"] == "Too Many Requests"
    assert error["id"]
    assert "Retry-After" not in answer.headers


async def test_429_nested_shape_says_how_long_to_wait(session: aiohttp.ClientSession) -> None:
    async with ImgurStandIn(user_limit=0, rate_limit_shape="nested") as standin:
        standin.advance(23 * 60)
        answer = await upload(session, standin, png())

    assert answer.status == 429
    body = answer.json()
    assert body["success"] is False
    assert body["status"] == 429
    assert body["data"]["error"]["code"] == 429
    assert body["data"]["error"]["type"] == "ImgurException"
    assert body["data"]["error"]["message"] == (
        "You are uploading too fast. Please wait 37 more minutes."
    )


async def test_429_html_shape_is_a_web_page(session: aiohttp.ClientSession) -> None:
    async with ImgurStandIn(user_limit=0, rate_limit_shape="html") as standin:
        answer = await upload(session, standin, png())

    assert answer.status == 429
    assert answer.content_type == "text/html"
    assert "Too Many Requests" in answer.text
    assert standin.rate_limited == 1


# --- injected faults ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "status", "error"),
    [
        ("over_capacity_403", 403, "Imgur is temporarily over capacity. Please try again later."),
        ("over_capacity_500", 500, "Imgur is temporarily over capacity. Please try again later."),
        ("server_error", 500, "File was not uploaded correctly"),
        ("invalid_client", 403, "Invalid client_id"),
        ("reject", 400, "Image format not supported, or image is corrupt."),
    ],
)
async def test_json_faults_answer_imgur_error_strings(
    standin: ImgurStandIn,
    session: aiohttp.ClientSession,
    fault: Any,
    status: int,
    error: str,
) -> None:
    standin.fail_next(fault)

    failed = await upload(session, standin, png(), title="kept")
    retried = await upload(session, standin, png())

    assert failed.status == status
    assert failed.json() == {
        "data": {"error": error, "request": "/3/image", "method": "POST"},
        "success": False,
        "status": status,
    }
    assert retried.status == 200
    assert len(standin.images) == 1
    assert standin.requests[0].fault == fault
    assert standin.requests[0].fields["title"] == "kept"


async def test_html_fault_is_a_500_web_page(
    standin: ImgurStandIn, session: aiohttp.ClientSession
) -> None:
    standin.fail_next("html")

    answer = await upload(session, standin, png())

    assert answer.status == 500
    assert answer.content_type == "text/html"
    assert "over capacity" in answer.text
    assert "X-RateLimit-UserRemaining" in answer.headers


@pytest.mark.parametrize("status", [502, 200])
async def test_empty_fault_has_no_body(
    standin: ImgurStandIn, session: aiohttp.ClientSession, status: int
) -> None:
    standin.fail_next("empty", status=None if status == 502 else status)

    answer = await upload(session, standin, png())

    assert answer.status == status
    assert answer.text == ""


async def test_invalid_json_fault_cannot_be_parsed(
    standin: ImgurStandIn, session: aiohttp.ClientSession
) -> None:
    standin.fail_next("invalid_json")

    answer = await upload(session, standin, png())

    assert answer.status == 200
    assert answer.content_type == "application/json"
    with pytest.raises(json.JSONDecodeError):
        answer.json()


@pytest.mark.parametrize("shape", ["errors", "nested", "html"])
async def test_rate_limited_fault_uses_the_configured_shape(
    session: aiohttp.ClientSession, shape: Any
) -> None:
    async with ImgurStandIn(rate_limit_shape=shape) as standin:
        standin.fail_next("rate_limited")
        answer = await upload(session, standin, png())

    assert answer.status == 429
    assert standin.rate_limited == 1
    if shape == "errors":
        assert answer.json()["errors"][0]["code"] == "429"
    elif shape == "nested":
        assert answer.json()["data"]["error"]["code"] == 429
    else:
        assert answer.content_type == "text/html"


async def test_slow_fault_answers_late(
    standin: ImgurStandIn, session: aiohttp.ClientSession
) -> None:
    standin.fail_next("slow", delay=0.5)
    loop = asyncio.get_running_loop()

    started = loop.time()
    answer = await upload(session, standin, png())

    assert answer.status == 200
    assert loop.time() - started >= 0.5


async def test_slow_upload_is_stored_even_when_the_client_gives_up(
    standin: ImgurStandIn,
) -> None:
    standin.fail_next("slow", delay=30)
    timeout = aiohttp.ClientTimeout(total=1)

    async with aiohttp.ClientSession(headers=AUTH, timeout=timeout) as impatient:
        with pytest.raises(asyncio.TimeoutError):
            await upload(impatient, standin, png())

    await standin.wait_for(lambda: len(standin.images) == 1)


async def test_bad_link_fault_stores_the_upload_and_answers_a_malformed_link(
    standin: ImgurStandIn, session: aiohttp.ClientSession
) -> None:
    standin.fail_next("bad_link", message="ftp://elsewhere/x.png")

    answer = await upload(session, standin, png())

    data = answer.json()["data"]
    assert answer.status == 200
    assert data["link"] == "ftp://elsewhere/x.png"
    assert standin.images[data["id"]].deletehash == data["deletehash"]
    assert standin.requests[0].fault == "bad_link"


async def test_drop_fault_cuts_the_connection_without_an_answer(
    standin: ImgurStandIn, session: aiohttp.ClientSession
) -> None:
    standin.fail_next("drop", times=2)

    with pytest.raises(aiohttp.ClientError):
        await upload(session, standin, png())
    with pytest.raises(aiohttp.ClientError):
        await upload(session, standin, png() + b"\0" * (4 * MB))  # cut mid-upload
    after = await upload(session, standin, png())

    assert after.status == 200
    assert [r.status for r in standin.requests] == [None, None, 200]
    assert [r.fault for r in standin.requests] == ["drop", "drop", None]
    assert len(standin.images) == 1


async def test_faults_fire_in_order_on_matching_paths_only(
    standin: ImgurStandIn, session: aiohttp.ClientSession
) -> None:
    standin.fail_next("server_error", times=2, path="/3/upload")
    standin.fail_next("reject", path="/3/upload")

    elsewhere = await upload(session, standin, png(), path="/3/image")
    statuses = [(await upload(session, standin, png(), path="/3/upload")).status for _ in range(4)]

    assert elsewhere.status == 200
    assert statuses == [500, 500, 400, 200]
    assert [r.fault for r in standin.requests] == [
        None,
        "server_error",
        "server_error",
        "reject",
        None,
    ]


async def test_fault_path_covers_the_paths_under_it(
    standin: ImgurStandIn, session: aiohttp.ClientSession
) -> None:
    uploaded = (await upload(session, standin, png())).json()["data"]
    standin.fail_next("over_capacity_500", path="/3/image", method="DELETE")

    deleted = await call(session, "DELETE", f"{standin.url}/3/image/{uploaded['deletehash']}")

    assert deleted.status == 500
    assert standin.images[uploaded["id"]].deleted is False


def test_unknown_fault_is_refused() -> None:
    standin = ImgurStandIn()

    with pytest.raises(ValueError, match="unknown fault"):
        standin.fail_next("gremlins")  # type: ignore[arg-type]


# --- recorded bodies --------------------------------------------------------------------------


async def test_recorded_bodies_carry_the_extra_fields_and_escaped_slashes(
    session: aiohttp.ClientSession,
) -> None:
    async with ImgurStandIn(recorded_bodies=True) as standin:
        still = await upload(session, standin, png())
        video = await upload(session, standin, MP4, field="video")
        refused = await upload(session, standin, b"not an image")

    assert '"link":"https:\\/\\/i.imgur.com\\/' in still.text
    data = still.json()["data"]
    assert data["link"].startswith("https://i.imgur.com/")
    for extra in ("vote", "favorite", "section", "account_url", "views", "bandwidth", "tags"):
        assert extra in data
    for extra in ("ad_type", "ad_url", "edited", "in_most_viral", "is_ad"):
        assert extra in data
    assert data["name"] == ""
    assert video.json()["data"]["processing"] == {"status": "pending"}
    assert refused.json()["data"]["request"] == "/3/image"
    assert "\\/3\\/image" in refused.text


# --- streaming, type sniffing, running alone --------------------------------------------------


async def test_streamed_50mb_upload_counts_every_byte_without_holding_it(
    standin: ImgurStandIn, session: aiohttp.ClientSession
) -> None:
    chunk = b"\x5a" * (256 * 1024)
    head = MP4 + b"\0" * (len(chunk) - len(MP4))
    chunks = 200  # 50 MB
    expected = hashlib.sha256()
    for index in range(chunks):
        expected.update(head if index == 0 else chunk)

    async def body() -> AsyncIterator[bytes]:
        for index in range(chunks):
            yield head if index == 0 else chunk

    form = aiohttp.FormData()
    form.add_field("video", body(), filename="big.mp4", content_type="video/mp4")
    tracemalloc.start()
    try:
        answer = await call(session, "POST", standin.url + "/3/upload", data=form)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert answer.status == 200
    image = standin.images[answer.json()["data"]["id"]]
    assert image.bytes_received == 50 * MB
    assert image.size == 50 * MB
    assert image.sha256 == expected.hexdigest()
    assert standin.requests[-1].bytes_received == 50 * MB
    assert peak < 10 * MB  # client and stand-in together, far below the 50 MB sent


@pytest.mark.parametrize(
    ("data", "mime", "kind"),
    [
        (png(), "image/png", "image"),
        (jpeg(8, 4), "image/jpeg", "image"),
        (gif(animated=False), "image/gif", "image"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "image/webp", "image"),
        (b"BM" + b"\0" * 16 + struct.pack("<ii", 5, -7) + b"\0" * 8, "image/bmp", "image"),
        (b"II*\x00" + b"\0" * 8, "image/tiff", "image"),
        (b"MM\x00*" + b"\0" * 8, "image/tiff", "image"),
        (MP4, "video/mp4", "video"),
        (MOV, "video/quicktime", "video"),
        (WEBM, "video/webm", "video"),
    ],
)
def test_file_types_are_told_by_magic_bytes(data: bytes, mime: str, kind: str) -> None:
    media = sniff(data)

    assert media is not None
    assert (media.mime, media.kind) == (mime, kind)


def test_dimensions_are_read_where_the_header_has_them() -> None:
    photo = sniff(jpeg(1920, 1080))
    assert photo is not None
    assert (photo.width, photo.height) == (1920, 1080)
    bmp = sniff(b"BM" + b"\0" * 16 + struct.pack("<ii", 5, -7) + b"\0" * 8)
    assert bmp is not None
    assert (bmp.width, bmp.height) == (5, 7)
    assert sniff(b"plain text") is None


async def test_wait_for_returns_once_the_condition_holds(
    standin: ImgurStandIn, session: aiohttp.ClientSession
) -> None:
    waiter = asyncio.create_task(standin.wait_for(lambda: standin.upload_calls == 2))
    await upload(session, standin, png())
    assert not waiter.done()

    await upload(session, standin, png())

    await asyncio.wait_for(waiter, 30)


def test_standin_imports_nothing_from_the_bot() -> None:
    source = (REPO / "tests" / "imgur_standin.py").read_text()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])

    assert "bot" not in imported
    assert "cogs" not in imported


async def test_command_line_prints_its_url_and_stops_on_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.imgur_standin",
        "--port",
        "0",
        "--client-id",
        "cli-id",
        "--user-limit",
        "77",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        url = line.decode().strip()
        assert url.startswith("http://127.0.0.1:")

        async with aiohttp.ClientSession(headers={"Authorization": "Client-ID cli-id"}) as client:
            answer = await call(client, "GET", url + "/3/credits")
        assert answer.json()["data"]["UserLimit"] == 77

        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
