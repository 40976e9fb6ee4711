"""``/imgur-delete``: who may take an upload off Imgur, and what the channel sees afterwards."""

from __future__ import annotations

import pytest

from tests.discord_standin import Attachment, InteractionHandle, Member, Message, Permission
from tests.e2e.conftest import Stage
from tests.e2e.harness import (
    ANSWER_TIMEOUT,
    Server,
    answered,
    copy_of,
    enable_auto_rehost,
    fresh_png,
    link_of,
    new_server,
    reply_to,
)
from tests.imgur_standin import ImageRecord

pytestmark = pytest.mark.asyncio(loop_scope="module")


def said(handle: InteractionHandle) -> str:
    return "\n".join(m.content for m in handle.visible_messages().all)


async def uploaded_by(stage: Stage, member: Member, server: Server) -> tuple[ImageRecord, Message]:
    """``member`` rehosts a fresh image with ``/imgur``; the upload and the public answer."""
    data = fresh_png()
    handle = await stage.discord.invoke_slash(
        "imgur", member, server.media, {"image": Attachment("mine.png", data)}
    )
    await answered(handle)
    image = copy_of(stage.imgur, data)
    assert image is not None
    (answer,) = handle.visible_messages().channel
    return image, answer


async def delete(stage: Stage, member: Member, server: Server, upload: str) -> InteractionHandle:
    handle = await stage.discord.invoke_slash(
        "imgur-delete", member, server.media, {"upload": upload}
    )
    return await answered(handle)


async def test_the_poster_deletes_their_upload_and_the_link_leaves_the_channel(
    stage: Stage, server: Server
) -> None:
    image, answer = await uploaded_by(stage, server.alice, server)

    handle = await delete(stage, server.alice, server, link_of(stage.imgur, image))

    assert handle.ephemeral
    assert f"Deleted `{image.id}`" in said(handle)
    assert image.deleted
    await stage.discord.wait_until(lambda: answer.deleted, ANSWER_TIMEOUT, "the answer to go")


async def test_another_member_may_not_delete_it(stage: Stage, server: Server) -> None:
    image, answer = await uploaded_by(stage, server.alice, server)

    handle = await delete(stage, server.bob, server, image.id)

    assert handle.ephemeral
    assert "Only the person who posted it" in said(handle)
    assert not handle.visible_messages().channel
    assert not image.deleted
    assert not answer.deleted


@pytest.mark.parametrize("deleter", ["mod", "owner"])
async def test_a_moderator_or_the_server_owner_deletes_anyones_upload(
    stage: Stage, server: Server, deleter: str
) -> None:
    await enable_auto_rehost(stage.discord, server, server.media)
    data = fresh_png()
    message = await stage.discord.post_message(
        server.media, server.alice, attachments=[Attachment("posted.png", data)]
    )
    reply = await reply_to(stage.discord, message)
    image = copy_of(stage.imgur, data)
    assert image is not None

    handle = await delete(stage, getattr(server, deleter), server, image.id)

    assert handle.ephemeral
    assert f"Deleted `{image.id}`" in said(handle)
    assert image.deleted
    await stage.discord.wait_until(lambda: reply.deleted, ANSWER_TIMEOUT, "the reply to go")
    assert not message.deleted  # the member's own message is theirs


async def test_manage_messages_in_one_channel_neither_deletes_nor_reads_the_servers_uploads(
    stage: Stage, server: Server
) -> None:
    image, answer = await uploaded_by(stage, server.alice, server)
    # An overwrite makes bob a moderator of this channel only; Discord then reports Manage
    # Messages in the interaction's permissions here, and shows him the moderators' commands.
    server.media.set_permissions(server.bob, allow=Permission.MANAGE_MESSAGES)

    deletion = await delete(stage, server.bob, server, image.id)
    history = await answered(
        await stage.discord.invoke_slash("imgur-history", server.bob, server.media, {})
    )

    assert deletion.ephemeral
    assert "someone with Manage Messages server-wide" in said(deletion)
    assert not image.deleted
    assert not answer.deleted
    assert history.ephemeral
    assert said(history) == "You need the Manage Messages permission server-wide for this."


async def test_deleting_one_of_several_links_edits_the_reply(stage: Stage, server: Server) -> None:
    await enable_auto_rehost(stage.discord, server, server.media)
    first, second = fresh_png(), fresh_png()
    message = await stage.discord.post_message(
        server.media,
        server.alice,
        attachments=[Attachment("first.png", first), Attachment("second.png", second)],
    )
    reply = await reply_to(stage.discord, message)
    gone, kept = copy_of(stage.imgur, first), copy_of(stage.imgur, second)
    assert gone is not None
    assert kept is not None

    await delete(stage, server.mod, server, gone.id)
    await stage.discord.wait_until(lambda: reply.edited, ANSWER_TIMEOUT, "the reply to change")

    assert gone.deleted
    assert not kept.deleted
    assert not reply.deleted
    assert link_of(stage.imgur, gone) not in reply.content
    assert link_of(stage.imgur, kept) in reply.content


async def test_uploads_of_another_server_cannot_be_deleted_from_here(
    stage: Stage, server: Server
) -> None:
    image, _ = await uploaded_by(stage, server.alice, server)
    elsewhere = new_server(stage.discord, "elsewhere")

    handle = await stage.discord.invoke_slash(
        "imgur-delete", elsewhere.mod, elsewhere.media, {"upload": image.id}
    )
    await answered(handle)

    assert handle.ephemeral
    assert "from this server" in said(handle)
    assert not image.deleted


async def test_autocomplete_offers_members_their_own_uploads_and_moderators_all(
    stage: Stage, server: Server
) -> None:
    alices, _ = await uploaded_by(stage, server.alice, server)
    bobs, _ = await uploaded_by(stage, server.bob, server)

    async def choices(member: Member) -> set[str]:
        found = await stage.discord.invoke_autocomplete(
            "imgur-delete", member, server.media, {"upload": ""}, "upload"
        )
        return {choice["value"] for choice in found}

    assert await choices(server.alice) == {alices.id}
    assert await choices(server.bob) == {bobs.id}
    assert await choices(server.mod) == {alices.id, bobs.id}


async def test_deleting_defers_at_once_so_a_slow_imgur_misses_no_deadline(
    stage: Stage, server: Server
) -> None:
    image, _ = await uploaded_by(stage, server.alice, server)
    stage.imgur.fail_next("slow", method="DELETE", path="/3/image", delay=1.0)
    asked_before = len(stage.imgur.requests)

    handle = await stage.discord.invoke_slash(
        "imgur-delete", server.alice, server.media, {"upload": image.id}
    )
    await stage.discord.wait_until(
        lambda: any(r.method == "DELETE" for r in stage.imgur.requests[asked_before:]),
        ANSWER_TIMEOUT,
        "the deletion to reach Imgur",
    )
    stage.discord.advance_clock(stage.discord.interaction_deadline + 1)
    await answered(handle)

    assert handle.deferred
    assert f"Deleted `{image.id}`" in said(handle)
