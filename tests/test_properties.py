"""Properties that must hold for any input: the media sniffer and Imgur's answer parser.

Any bytes in, a result or a typed error out, never another exception. The Imgur client is
driven through its public methods with the HTTP exchange replaced by generated answers
(status, body, quota headers), so the whole path from raw answer to result or error runs.
"""

from __future__ import annotations

import asyncio
import json
import string
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bot import imgur as imgur_module
from bot import media, sources
from bot.imgur import (
    Credits,
    ImgurAlbum,
    ImgurClient,
    ImgurError,
    ImgurImage,
    ImgurRateLimited,
    _Request,
)
from bot.media import MediaError, MediaKind, MediaLimits, MediaType
from bot.sources import StreamSource
from tests import samples

CLIENT_ID = "c0ffee1234abcd9"
ACCESS_TOKEN = "tok3n-5ecret-0123456789"
DELETEHASH = "dEl3teHash42xyz"
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- the media sniffer -----------------------------------------------------------------------

MAGICS = [
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",
    b"GIF89a",
    b"GIF87a",
    b"RIFF\x00\x00\x00\x00WEBPVP8X",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
    b"\x00\x00\x00\x18ftypisom",
    b"\x00\x00\x00\x18ftypqt  ",
    b"\x00\x00\x00\x18ftypheic",
    b"\x1a\x45\xdf\xa3",
    b"PK\x03\x04",
]
heads = st.one_of(
    st.binary(max_size=4096),
    st.builds(lambda m, rest: m + rest, st.sampled_from(MAGICS), st.binary(max_size=2048)),
    # A PNG whose chunk lengths are anything at all.
    st.builds(
        lambda chunks: b"\x89PNG\r\n\x1a\n" + b"".join(chunks),
        st.lists(
            st.builds(
                lambda n, kind, body: n.to_bytes(4, "big") + kind + body,
                st.integers(0, 2**32 - 1),
                st.sampled_from([b"IHDR", b"acTL", b"IDAT", b"tEXt", b"\x00\x00\x00\x00"]),
                st.binary(max_size=32),
            ),
            max_size=6,
        ),
    ),
)


@FAST
@given(heads)
@example(b"")
@example(b"BM" + bytes(30))
@example(b"\x89PNG\r\n\x1a\n\xff\xff\xff\xffacTL")
def test_sniff_returns_a_type_or_a_media_error(head: bytes) -> None:
    found = _outcome(media.sniff, head)

    if isinstance(found, MediaError):
        assert str(found)
    else:
        assert isinstance(found, MediaType)
        assert found.kind in set(MediaKind)
        assert found.mime.split("/")[0] in {"image", "video"}


def _outcome(function: Any, *args: Any) -> Any:
    """What ``function`` returns, or the MediaError it raises (any other error escapes)."""
    try:
        return function(*args)
    except MediaError as exc:
        return exc


media_types = st.sampled_from(
    [
        MediaType("image/png", "png", MediaKind.IMAGE),
        MediaType("image/gif", "gif", MediaKind.ANIMATED),
        MediaType("image/jpeg", "jpg", MediaKind.IMAGE),
        MediaType("video/mp4", "mp4", MediaKind.VIDEO),
    ]
)


@FAST
@given(media_types, st.binary(max_size=4096))
@example(MediaType("image/jpeg", "jpg", MediaKind.IMAGE), b"PK\x05\x06" + bytes(18))
@example(MediaType("image/jpeg", "jpg", MediaKind.IMAGE), b"PK\x05\x06" + bytes(17))
def test_ending_check_passes_or_raises_a_media_error(kind: MediaType, tail: bytes) -> None:
    found = _outcome(media.check_ending, kind, tail)

    assert found is None or (isinstance(found, MediaError) and str(found))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=3000), max_size=8), st.one_of(st.none(), st.integers(0, 9000)))
def test_spool_returns_a_spool_or_a_typed_error(chunks: list[bytes], declared: int | None) -> None:
    limits = MediaLimits(image=8000, video=12000)

    async def stream() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async def attempt() -> None:
        try:
            spooled = await sources.spool(StreamSource(stream(), "x.png", declared), limits)
        except (MediaError, sources.SourceError):
            return
        try:
            data = b"".join(chunks)
            assert spooled.size == len(data)
            assert spooled.open().read() == data
            assert spooled.size <= limits.limit_for(spooled.kind)
        finally:
            spooled.close()

    asyncio.run(attempt())


@FAST
@given(st.text())
@example("\u202e" * 10)
@example("/" * 300)
def test_a_cleaned_name_is_always_safe(name: str) -> None:
    stem = sources.clean_stem(name)

    assert stem
    assert len(stem) <= 80
    assert all(c.isalnum() or c in " ._-()[]" for c in stem)
    assert not stem.startswith((".", " "))


# --- Imgur's answers -------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=20,
)
field_names = st.sampled_from(
    ["id", "link", "deletehash", "error", "message", "detail", "status", "success", "data",
     "errors", "processing", "type", "size", "width", "UserLimit", "UserRemaining",
     "UserReset", "ClientLimit", "ClientRemaining", "animated", "mp4", "code"]
)  # fmt: skip
shaped = st.recursive(
    json_values,
    lambda inner: st.dictionaries(field_names, inner, max_size=6) | st.lists(inner, max_size=3),
    max_leaves=25,
)
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "data": shaped,
        "success": st.one_of(st.booleans(), json_values),
        "status": st.one_of(st.integers(0, 700), json_values),
        "errors": st.lists(shaped, max_size=3),
    },
)
secret_text = st.sampled_from(
    [CLIENT_ID, ACCESS_TOKEN, DELETEHASH, f"Client-ID {CLIENT_ID}", "<b>" + CLIENT_ID + "</b>"]
)
with_secrets = st.builds(
    lambda text, secret: {"data": {"error": f"{text} {secret}"}, "status": 400, "success": False},
    st.text(max_size=40),
    secret_text,
)


def _to_bytes(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


bodies = st.one_of(
    st.binary(max_size=512),
    envelopes.map(_to_bytes),
    with_secrets.map(_to_bytes),
    shaped.map(_to_bytes),
    st.sampled_from(
        [b"", b"<html><body>Imgur is over capacity!</body></html>", b"[" * 5000, b"{" * 5000,
         b'{"data":{"id":"a","deletehash":"b"', b"null", b"\xff\xfe\x00{"]
    ),
)  # fmt: skip
header_values = st.one_of(
    st.from_regex(r"\d{1,18}(\.\d{1,8})?", fullmatch=True),
    st.sampled_from(["-1", "1e309", "nan", "inf", "", " 5 ", "0x10", "9" * 40]),
    st.text(string.printable, max_size=12),
)
header_names = st.sampled_from(
    ["X-RateLimit-UserLimit", "X-RateLimit-UserRemaining", "X-RateLimit-UserReset",
     "X-RateLimit-ClientLimit", "X-RateLimit-ClientRemaining", "X-Post-Rate-Limit-Limit",
     "X-Post-Rate-Limit-Remaining", "X-Post-Rate-Limit-Reset"]
)  # fmt: skip
answers = st.tuples(
    st.one_of(
        st.sampled_from([200, 400, 401, 403, 404, 413, 429, 500, 502]), st.integers(100, 599)
    ),
    bodies,
    st.dictionaries(header_names, header_values, max_size=8),
)


class _Body:
    filename = "cat.png"
    mime = "image/png"
    size = 10
    in_memory = False

    def open(self) -> Any:
        raise AssertionError("the exchange is replaced; the file is never read")


def _client(answer_list: list[tuple[int, bytes, dict[str, str]]]) -> ImgurClient:
    async def no_sleep(seconds: float) -> None:
        return None

    client = ImgurClient(
        None,  # type: ignore[arg-type] # the exchange below never touches a session
        CLIENT_ID,
        access_token=ACCESS_TOKEN,
        backoff=0.0,
        sleep=no_sleep,
        clock=lambda: 1_700_000_000.0,
    )
    remaining = list(answer_list)

    async def exchange(request: _Request) -> tuple[int, bytes, Any]:
        status, raw, headers = remaining.pop(0) if len(remaining) > 1 else remaining[0]
        return status, raw, client._record_quota(headers)

    client._exchange = exchange  # type: ignore[method-assign]
    return client


CALLS = ["upload", "upload_url", "delete_image", "create_album", "delete_album", "credits"]


async def _call(client: ImgurClient, name: str) -> object:
    if name == "upload":
        return await client.upload(_Body(), title="t")
    if name == "upload_url":
        return await client.upload_url("https://example.com/a.png")
    if name == "delete_image":
        return await client.delete_image(DELETEHASH)
    if name == "create_album":
        return await client.create_album([DELETEHASH, "other1"])
    if name == "delete_album":
        return await client.delete_album(DELETEHASH)
    return await client.credits()


HOLDS_DELETEHASH = {"delete_image", "create_album", "delete_album"}


async def _call_or_error(client: ImgurClient, name: str) -> object:
    try:
        return await _call(client, name)
    except ImgurError as exc:
        return exc


EXPECTED = {
    "upload": ImgurImage,
    "upload_url": ImgurImage,
    "delete_image": bool,
    "create_album": ImgurAlbum,
    "delete_album": bool,
    "credits": Credits,
}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(CALLS), st.lists(answers, min_size=1, max_size=3))
@example(
    "upload",
    [(429, b"", {"X-RateLimit-UserRemaining": "0", "X-RateLimit-UserReset": "999999999999999"})],
)
@example(
    "upload",
    [
        (
            429,
            b"",
            {"X-Post-Rate-Limit-Remaining": "0", "X-Post-Rate-Limit-Reset": "999999999999999.5"},
        )
    ],
)
@example("upload", [(429, b'{"data":{"error":"wait 999999 hours"}}', {})])
@example(
    "credits",
    [
        (
            200,
            b'{"data":{"UserLimit":1,"UserRemaining":1,"UserReset":1e300,'
            b'"ClientLimit":1,"ClientRemaining":1}}',
            {},
        )
    ],
)
@example("upload", [(200, b"[" * 100_000, {})])
@example("upload", [(200, b'{"success":false,"status":true}', {})])
def test_any_answer_gives_a_result_or_an_imgur_error(
    call: str, answer_list: list[tuple[int, bytes, dict[str, str]]]
) -> None:
    client = _client(answer_list)

    result = asyncio.run(_call_or_error(client, call))

    if isinstance(result, ImgurError):
        text = str(result)
        assert text == result.user_message
        assert 0 < len(text) <= 300, text
        assert "\n" not in text
        # The values this call knows as secret never come back, whatever Imgur echoes.
        known = [CLIENT_ID, ACCESS_TOKEN] + ([DELETEHASH] if call in HOLDS_DELETEHASH else [])
        for secret in known:
            assert secret not in text, text
        if isinstance(result, ImgurRateLimited) and result.reset_at is not None:
            assert result.reset_at > 1_700_000_000.0
        return
    assert isinstance(result, EXPECTED[call])
    if isinstance(result, Credits):
        assert result.user_reset <= 1_700_000_000.0 + imgur_module.MAX_RESET_AHEAD
    if isinstance(result, ImgurImage):
        assert result.id
        assert result.link
        assert result.deletehash
        assert DELETEHASH not in repr(result) or result.deletehash != DELETEHASH


@FAST
@given(st.text(max_size=300))
def test_a_name_for_the_part_header_is_always_safe(name: str) -> None:
    safe = imgur_module._safe_filename(name)

    assert safe
    assert len(safe) <= 100
    assert all(c.isprintable() and c not in '"\\' for c in safe)


def test_a_deeply_nested_answer_is_unreadable_not_a_crash() -> None:
    assert imgur_module._parse_json(b"[" * 100_000 + b"]" * 100_000) is None


@pytest.mark.parametrize("data", [samples.png(), samples.gif(animated=True), samples.mp4()])
def test_real_samples_still_pass_the_ending_check(data: bytes) -> None:
    # The counterpart of the polyglot refusals: real files keep passing.
    kind = media.sniff(data)
    media.check_ending(kind, data[-media.TAIL_BYTES :])
