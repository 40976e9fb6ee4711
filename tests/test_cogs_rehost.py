"""``/imgur``: one image or video, a permanent link for the channel to see."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from unittest.mock import patch

import pytest

from bot.discord_bot import GENERIC_FAILURE
from bot.media import MediaLimits
from cogs import replies
from tests import samples
from tests.conftest import WebFiles
from tests.discord_mocks import DiscordEnv, discord_env, no_deletehash_in

MB = 1024 * 1024


@pytest.fixture
async def env(tmp_path: Path, web_files: WebFiles) -> AsyncIterator[DiscordEnv]:
    async with discord_env(tmp_path, web_files) as env:
        yield env


async def test_an_attachment_gets_a_public_permanent_link_with_size_and_kind(
    env: DiscordEnv,
) -> None:
    interaction, talk = env.interaction()
    image = env.attachment(samples.png(seed=1), filename="cat.png")

    with no_deletehash_in(env, talk):
        await env.invoke("imgur", interaction, image=image)

    (stored,) = env.imgur.images.values()
    assert talk.deferred is False  # deferred publicly: everyone may see the link
    assert talk.last.how == "edit"
    assert not talk.last.ephemeral
    assert talk.last.text.startswith(f"https://i.imgur.com/{stored.id}.png (")
    assert "KB PNG image)" in talk.last.text

    (rehost,) = await env.ledger.recent_rehosts(guild_id=env.guild.id)
    assert rehost.origin.owner_id == rehost.origin.requester_id == env.member.id
    assert rehost.origin.attachment_id == image.id
    (reply,) = env.channels.live(env.channel.id)
    assert (rehost.reply_channel_id, rehost.reply_message_id) == (env.channel.id, reply.id)


async def test_a_url_is_fetched_and_rehosted(env: DiscordEnv) -> None:
    url = env.web.serve_bytes("/photo.jpg", samples.jpeg(seed=2), "image/jpeg")
    interaction, talk = env.interaction()

    await env.invoke("imgur", interaction, url=f"  {url} ")

    (stored,) = env.imgur.images.values()
    assert stored.mime == "image/jpeg"
    assert talk.last.text.startswith(f"https://i.imgur.com/{stored.id}.jpg")
    assert "JPEG image" in talk.last.text


@pytest.mark.parametrize(
    ("typed", "spoiler"), [("<{}>", False), ("||{}||", True), ("|| <{}> ||", True)]
)
async def test_a_url_typed_without_preview_or_as_a_spoiler_is_understood(
    env: DiscordEnv, typed: str, spoiler: bool
) -> None:
    url = env.web.serve_bytes("/photo.jpg", samples.jpeg(seed=2), "image/jpeg")
    interaction, talk = env.interaction()

    await env.invoke("imgur", interaction, url=typed.format(url))

    (stored,) = env.imgur.images.values()
    link = f"https://i.imgur.com/{stored.id}.jpg"
    assert talk.last.text.startswith(f"||{link}|| (" if spoiler else f"{link} (")


async def test_the_title_goes_to_imgur(env: DiscordEnv) -> None:
    interaction, _ = env.interaction()

    await env.invoke("imgur", interaction, image=env.attachment(samples.png()), title="Sunset")

    (stored,) = env.imgur.images.values()
    assert stored.title == "Sunset"


@pytest.mark.parametrize("given", ["neither", "both"])
async def test_exactly_one_of_image_or_url_is_required(env: DiscordEnv, given: str) -> None:
    interaction, talk = env.interaction()
    options = {}
    if given == "both":
        options = {"image": env.attachment(samples.png()), "url": env.web.url("/x.png")}

    await env.invoke("imgur", interaction, **options)

    assert [(s.how, s.ephemeral) for s in talk.said] == [("send_message", True)]
    assert "image or a url" in talk.last.text
    assert env.imgur.uploads() == []


async def test_a_spoiler_attachment_gets_its_link_behind_spoiler_bars(env: DiscordEnv) -> None:
    interaction, talk = env.interaction()

    await env.invoke("imgur", interaction, image=env.attachment(samples.png(), spoiler=True))

    (stored,) = env.imgur.images.values()
    assert talk.last.text.startswith(f"||https://i.imgur.com/{stored.id}.png|| (")


async def test_a_failure_after_the_public_deferral_is_told_privately(env: DiscordEnv) -> None:
    interaction, talk = env.interaction()
    text = env.attachment(b"just some text, not a picture", content_type="text/plain")

    await env.invoke("imgur", interaction, image=text)

    assert talk.deferred is False
    assert talk.original_deleted  # the public "thinking…" is gone first
    assert talk.last.how == "followup"
    assert talk.last.ephemeral
    assert "not an image or video" in talk.last.text
    assert env.channels.live() == []


async def test_a_file_over_the_limit_is_refused_with_the_limit(
    tmp_path: Path, web_files: WebFiles
) -> None:
    async with discord_env(tmp_path, web_files, limits=MediaLimits(image=MB, video=2 * MB)) as env:
        interaction, talk = env.interaction()

        await env.invoke("imgur", interaction, image=env.attachment(samples.big_png(MB + MB // 2)))

        assert talk.last.ephemeral
        assert "1.5 MB" in talk.last.text
        assert "at most 1 MB" in talk.last.text
        assert env.imgur.uploads() == []


async def test_a_spent_quota_says_until_when_in_discord_time(
    tmp_path: Path, web_files: WebFiles
) -> None:
    async with discord_env(tmp_path, web_files, user_limit=5) as env:
        interaction, talk = env.interaction()

        await env.invoke("imgur", interaction, image=env.attachment(samples.png()))

        reset = int(env.imgur.user_reset)
        assert talk.last.ephemeral
        assert talk.last.text.startswith(f"Imgur's upload quota is spent until <t:{reset}:t>")


async def test_while_the_quota_is_spent_a_new_upload_is_refused_at_once_not_queued(
    tmp_path: Path, web_files: WebFiles
) -> None:
    # Imgur's reset is an hour away; an interaction's answer can be sent for 15 minutes only.
    async with discord_env(tmp_path, web_files, user_limit=5) as env:
        first, _ = env.interaction()
        await env.invoke("imgur", first, image=env.attachment(samples.png(seed=1)))
        second, talk = env.interaction()

        await asyncio.wait_for(
            env.invoke("imgur", second, image=env.attachment(samples.png(seed=2))), 5
        )

        reset = int(env.imgur.user_reset)
        assert [(s.how, s.ephemeral) for s in talk.said] == [("send_message", True)]
        assert talk.last.text.startswith(f"Imgur's upload quota is spent until <t:{reset}:t>")
        assert env.services.pipeline.scheduler.waiting == 0


async def test_imgur_being_down_is_told_in_one_sentence(env: DiscordEnv) -> None:
    env.imgur.fail_next("server_error", times=2)
    interaction, talk = env.interaction()

    await env.invoke("imgur", interaction, image=env.attachment(samples.png()))

    assert talk.last.ephemeral
    assert "Imgur" in talk.last.text
    assert "\n" not in talk.last.text
    assert "Traceback" not in talk.last.text


async def test_an_unexpected_error_is_logged_and_told_generically(
    env: DiscordEnv, caplog: pytest.LogCaptureFixture
) -> None:
    interaction, talk = env.interaction()

    with patch.object(env.services.pipeline, "rehost", side_effect=RuntimeError("boom")):
        await env.invoke("imgur", interaction, image=env.attachment(samples.png()))

    assert talk.last.text == GENERIC_FAILURE
    assert talk.last.ephemeral
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.exc_info is not None
    assert "boom" in str(record.exc_info[1])


async def test_a_long_upload_shows_progress_by_editing_its_answer(
    env: DiscordEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(replies, "PROGRESS_FROM_BYTES", 1000)
    monkeypatch.setattr(replies, "PROGRESS_EVERY", 0.0)
    interaction, talk = env.interaction()
    progress = replies.Progress(interaction, "cat.mp4")
    await interaction.response.defer(thinking=True)

    report = progress.callback()
    report("download", 2000, 4000)
    while not talk.said:
        await asyncio.sleep(0)
    report("upload", 4000, 4000)
    while len(talk.said) < 2:
        await asyncio.sleep(0)
    await progress.stop()

    assert talk.texts == ["Rehosting cat.mp4… 25%", "Rehosting cat.mp4… 100%"]


async def test_small_uploads_show_no_progress(env: DiscordEnv) -> None:
    interaction, talk = env.interaction()

    await env.invoke("imgur", interaction, image=env.attachment(samples.png()))

    assert [s.how for s in talk.said] == ["edit"]
