"""Discord misbehaving: refused and rate-limited replies, lost connections, dead links."""

from __future__ import annotations

import pytest

from tests.discord_standin import Attachment, Channel, Message
from tests.e2e.conftest import Stage
from tests.e2e.harness import (
    ANSWER_TIMEOUT,
    Server,
    answered,
    copy_of,
    enable_auto_rehost,
    fresh_png,
    link_of,
    reply_to,
    sentinel,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

POST_MESSAGE = "POST /channels/{channel_id}/messages"
EDIT_ANSWER = "PATCH /webhooks/{application_id}/{interaction_token}/messages/{message_id}"


def posts_to(channel: Channel) -> str:
    return f"POST /channels/{channel.id}/messages"


async def during_an_outage(stage: Stage) -> None:
    """Cut the bot's gateway connection and keep it from reconnecting until ``resume``."""
    stage.discord.hold_gateway()
    await stage.discord.disconnect(4000)


async def resume(stage: Stage) -> None:
    stage.discord.release_gateway()
    connection = await stage.discord.wait_for_resume(ANSWER_TIMEOUT)
    assert connection.kind == "resume"


def cdn_fetches(stage: Stage, message: Message) -> list[int | None]:
    """The statuses of the bot's downloads of ``message``'s first attachment, in order."""
    path = "/" + message.attachments[0].path
    return [r.status for r in stage.discord.requests if r.kind == "cdn" and r.path == path]


async def test_a_refused_reply_is_logged_and_the_upload_stays_on_record(
    stage: Stage, server: Server
) -> None:
    await enable_auto_rehost(stage.discord, server, server.media)
    stage.discord.inject_error(
        posts_to(server.media), 403, code=50013, message="Missing Permissions"
    )
    data = fresh_png()

    await stage.discord.post_message(
        server.media, server.alice, attachments=[Attachment("kept.png", data)]
    )
    await stage.discord.wait_for_request(
        lambda r: r.route == POST_MESSAGE and r.status == 403, ANSWER_TIMEOUT
    )
    await stage.bot.wait_for_log(f"channel {server.media.id}", level="WARNING")

    image = copy_of(stage.imgur, data)
    assert image is not None
    assert not image.deleted
    choices = await stage.discord.invoke_autocomplete(
        "imgur-delete", server.alice, server.media, {"upload": ""}, "upload"
    )
    assert [c["value"] for c in choices] == [image.id]
    assert not stage.discord.channel_messages(server.media)


async def test_a_rate_limited_reply_is_posted_once_the_limit_passes(
    stage: Stage, server: Server
) -> None:
    await enable_auto_rehost(stage.discord, server, server.media)
    stage.discord.inject_rate_limit(posts_to(server.media), retry_after=0.3)
    data = fresh_png()

    message = await stage.discord.post_message(
        server.media, server.alice, attachments=[Attachment("limited.png", data)]
    )
    reply = await reply_to(stage.discord, message)

    image = copy_of(stage.imgur, data)
    assert image is not None
    assert link_of(stage.imgur, image) in reply.content
    path = f"/channels/{server.media.id}/messages"
    posts = [r.status for r in stage.discord.requests if r.method == "POST" and r.path == path]
    assert posts == [429, 200]


async def test_a_rate_limited_answer_to_imgur_is_sent_once_the_limit_passes(
    stage: Stage, server: Server
) -> None:
    stage.discord.inject_rate_limit(EDIT_ANSWER, retry_after=0.3)
    data = fresh_png()

    handle = await stage.discord.invoke_slash(
        "imgur", server.alice, server.media, {"image": Attachment("limited.png", data)}
    )
    await answered(handle)

    image = copy_of(stage.imgur, data)
    assert image is not None
    assert link_of(stage.imgur, image) in (handle.response_content or "")
    edits = [r.status for r in stage.discord.requests if r.route == EDIT_ANSWER]
    assert 429 in edits


async def test_after_a_dropped_connection_the_bot_resumes_and_still_answers(
    stage: Stage, server: Server
) -> None:
    session = stage.discord.session
    await stage.discord.disconnect(4000)
    connection = await stage.discord.wait_for_resume(ANSWER_TIMEOUT)
    data = fresh_png()

    handle = await stage.discord.invoke_slash(
        "imgur", server.bob, server.media, {"image": Attachment("after.png", data)}
    )
    await answered(handle)

    assert connection.session is session  # resumed, not a new identify
    image = copy_of(stage.imgur, data)
    assert image is not None
    assert link_of(stage.imgur, image) in (handle.response_content or "")


async def test_images_posted_while_the_bot_was_away_are_rehosted_when_it_resumes(
    stage: Stage, server: Server
) -> None:
    await enable_auto_rehost(stage.discord, server, server.media)
    data = fresh_png()

    await during_an_outage(stage)
    message = await stage.discord.post_message(
        server.media, server.alice, attachments=[Attachment("missed.png", data)]
    )
    await resume(stage)
    reply = await reply_to(stage.discord, message)

    image = copy_of(stage.imgur, data)
    assert image is not None
    assert link_of(stage.imgur, image) in reply.content


async def test_an_expired_attachment_link_is_fetched_again_and_retried_once(
    stage: Stage, server: Server
) -> None:
    await enable_auto_rehost(stage.discord, server, server.media)
    data = fresh_png()

    await during_an_outage(stage)
    message = await stage.discord.post_message(
        server.media, server.alice, attachments=[Attachment("stale.png", data)]
    )
    # The event waits in the session; by the time it arrives its signed link has expired.
    stage.discord.advance_clock(stage.discord.cdn.link_ttl + 60)
    refetches_before = len(stage.discord.requests)
    await resume(stage)
    reply = await reply_to(stage.discord, message)

    assert cdn_fetches(stage, message) == [404, 200]
    message_path = f"/channels/{server.media.id}/messages/{message.id}"
    assert any(
        r.method == "GET" and r.path == message_path
        for r in stage.discord.requests[refetches_before:]
    )
    image = copy_of(stage.imgur, data)
    assert image is not None
    assert link_of(stage.imgur, image) in reply.content


async def test_a_message_deleted_before_its_files_were_read_leaves_nothing_behind(
    stage: Stage, server: Server
) -> None:
    await enable_auto_rehost(stage.discord, server, server.media)
    data = fresh_png()
    log_before = len(stage.bot.log_lines())

    await during_an_outage(stage)
    message = await stage.discord.post_message(
        server.media, server.alice, attachments=[Attachment("regret.png", data)]
    )
    await stage.discord.delete_message(message)
    await resume(stage)
    await sentinel(stage.discord, stage.imgur, server)

    assert copy_of(stage.imgur, data) is None
    assert not stage.discord.channel_messages(server.media)
    assert 200 not in cdn_fetches(stage, message)
    assert not [line for line in stage.bot.log_lines()[log_before:] if " ERROR   " in line]


async def test_an_imgur_refusal_is_told_privately_and_nothing_stays_public(
    stage: Stage, server: Server
) -> None:
    stage.imgur.fail_next("reject", method="POST", message="Image format not supported")
    data = fresh_png()

    handle = await stage.discord.invoke_slash(
        "imgur", server.alice, server.media, {"image": Attachment("refused.png", data)}
    )
    await answered(handle)
    stage.imgur.clear_faults()

    visible = handle.visible_messages()
    assert not visible.channel
    assert len(visible.invoker_only) == 1
    assert not [m for m in stage.discord.channel_messages(server.media) if not m.deleted]
