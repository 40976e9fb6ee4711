"""How links are written in replies, and taken out of them again."""

from __future__ import annotations

import dataclasses
from typing import Any
from unittest.mock import patch

import discord
import pytest

from bot.discord_bot import RehostBot
from bot.ledger import Upload
from bot.settings import Settings
from cogs.replies import MAX_CONTENT, REMOVED, fit, kind_label, retract_links, size_label
from tests.discord_mocks import Channels, http_error, spec

UPLOAD = Upload(
    id=1,
    imgur_id="AbCdEfG",
    link="https://i.imgur.com/AbCdEfG.png",
    deletehash="secret",
    kind="image",
    mime="image/png",
    size=1000,
    digest="0" * 64,
    state="done",
    created_at=0.0,
    completed_at=0.0,
    deleted_at=None,
    deleted_by=None,
    delete_reason=None,
)


@pytest.mark.parametrize(
    ("mime", "kind", "label"),
    [
        ("image/png", "image", "PNG image"),
        ("image/jpeg", "image", "JPEG image"),
        ("image/gif", "animated", "animated GIF"),
        ("video/mp4", "video", "MP4 video"),
        ("video/quicktime", "video", "MOV video"),
    ],
)
def test_kinds_read_like_people_say_them(mime: str, kind: str, label: str) -> None:
    assert kind_label(dataclasses.replace(UPLOAD, mime=mime, kind=kind)) == label


@pytest.mark.parametrize(
    ("size", "label"), [(1, "1 KB"), (2048, "2 KB"), (1024 * 1024 * 3 // 2, "1.5 MB")]
)
def test_sizes_are_short(size: int, label: str) -> None:
    assert size_label(size) == label


def test_fit_keeps_whole_lines_and_says_how_many_were_left_out() -> None:
    lines = [f"https://i.imgur.com/{n:07d}.png (1 KB PNG image)" for n in range(100)]

    text = fit(lines)

    assert len(text) <= MAX_CONTENT
    kept = text.splitlines()
    assert kept[:-1] == lines[: len(kept) - 1]
    assert kept[-1] == f"…and {100 - (len(kept) - 1)} more"


def test_fit_leaves_short_texts_alone() -> None:
    assert fit(["a", "b"]) == "a\nb"


# --- retracting ---------------------------------------------------------------------------


@pytest.fixture
async def bot_with_channels() -> Any:
    bot = RehostBot(Settings(imgur_client_id="x"), extensions=(), sync_commands=False)
    channels = Channels()
    with patch.object(bot, "get_partial_messageable", channels.partial_messageable):
        yield bot, channels


async def test_only_the_exact_link_is_replaced(bot_with_channels: Any) -> None:
    bot, channels = bot_with_channels
    reply = channels.post(
        5,
        "Album: https://imgur.com/a/AbC12\n"
        "https://i.imgur.com/AbC1234.png (1 KB PNG image)\n"
        "||https://i.imgur.com/AbC12345.png|| (1 KB PNG image)",
    )

    await retract_links(bot, 5, reply.id, {"https://i.imgur.com/AbC12345.png"})

    assert channels.posted[reply.id].content.splitlines() == [
        "Album: https://imgur.com/a/AbC12",
        "https://i.imgur.com/AbC1234.png (1 KB PNG image)",
        REMOVED,
    ]


async def test_a_reply_with_no_link_left_is_deleted(bot_with_channels: Any) -> None:
    bot, channels = bot_with_channels
    reply = channels.post(5, "https://i.imgur.com/AbC1234.png (1 KB PNG image)\n⚠️ x.txt: no")

    await retract_links(bot, 5, reply.id, {"https://i.imgur.com/AbC1234.png"})

    assert channels.posted[reply.id].deleted


async def test_a_reply_already_gone_is_no_error(bot_with_channels: Any) -> None:
    bot, channels = bot_with_channels

    await retract_links(bot, 5, 12345, {"https://i.imgur.com/AbC1234.png"})

    assert channels.posted == {}


async def test_a_reply_the_bot_may_not_edit_is_logged(
    bot_with_channels: Any, caplog: pytest.LogCaptureFixture
) -> None:
    bot, _ = bot_with_channels
    reply = spec(discord.PartialMessage)
    reply.fetch.side_effect = http_error(discord.Forbidden, 403, "Missing Access")
    channel = spec(discord.PartialMessageable)
    channel.get_partial_message.return_value = reply

    with patch.object(bot, "get_partial_messageable", return_value=channel):
        await retract_links(bot, 5, 12345, {"https://i.imgur.com/AbC1234.png"})

    assert "could not read reply" in caplog.records[-1].getMessage()
    reply.edit.assert_not_awaited()
    reply.delete.assert_not_awaited()
