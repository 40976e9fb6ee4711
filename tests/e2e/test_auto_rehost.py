"""Auto-rehost: images posted in chosen channels get a reply with permanent links."""

from __future__ import annotations

import pytest

from tests.discord_standin import Attachment
from tests.e2e.conftest import Stage
from tests.e2e.harness import (
    Server,
    answered,
    copy_of,
    enable_auto_rehost,
    fresh_png,
    link_of,
    new_server,
    reply_to,
    sentinel,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")


async def test_an_image_posted_in_an_enabled_channel_gets_a_reply_with_its_link(
    stage: Stage, server: Server
) -> None:
    await enable_auto_rehost(stage.discord, server, server.media)
    data = fresh_png()

    message = await stage.discord.post_message(
        server.media, server.alice, "my cat", attachments=[Attachment("cat.png", data)]
    )
    reply = await reply_to(stage.discord, message)

    image = copy_of(stage.imgur, data)
    assert image is not None
    assert link_of(stage.imgur, image) in reply.content
    assert not reply.ephemeral
    assert not reply.mentions  # a quiet reply: nobody is pinged


async def test_nothing_is_rehosted_where_auto_rehost_is_off(stage: Stage, server: Server) -> None:
    before, after = fresh_png(), fresh_png()
    await stage.discord.post_message(
        server.media, server.alice, attachments=[Attachment("before.png", before)]
    )
    await sentinel(stage.discord, stage.imgur, server)
    await enable_auto_rehost(stage.discord, server, server.media)
    removed = await stage.discord.invoke_slash(
        "imgur-auto remove", server.owner, server.media, {"channel": server.media}
    )
    await answered(removed)
    assert "Auto-rehost is off" in (removed.response_content or "")

    await stage.discord.post_message(
        server.media, server.alice, attachments=[Attachment("after.png", after)]
    )
    await sentinel(stage.discord, stage.imgur, server)

    assert copy_of(stage.imgur, before) is None
    assert copy_of(stage.imgur, after) is None
    assert not stage.discord.channel_messages(server.media)


async def test_the_managers_list_shows_the_enabled_channels(stage: Stage, server: Server) -> None:
    await enable_auto_rehost(stage.discord, server, server.media)

    handle = await stage.discord.invoke_slash("imgur-auto list", server.owner, server.media, {})
    await answered(handle)

    assert handle.ephemeral
    assert f"<#{server.media.id}>" in (handle.response_content or "")


async def test_several_attachments_get_an_album_and_a_line_each(
    stage: Stage, server: Server
) -> None:
    await enable_auto_rehost(stage.discord, server, server.media)
    files = [fresh_png() for _ in range(3)]

    message = await stage.discord.post_message(
        server.media,
        server.alice,
        attachments=[Attachment(f"shot{n}.png", data) for n, data in enumerate(files)]
        + [Attachment("notes.txt", b"not an image")],
    )
    reply = await reply_to(stage.discord, message)

    images = [copy_of(stage.imgur, data) for data in files]
    lines = reply.content.splitlines()
    for image in images:
        assert image is not None
        assert sum(link_of(stage.imgur, image) in line for line in lines) == 1
    first = images[0]
    assert first is not None
    (album,) = [a for a in stage.imgur.albums.values() if first.id in a.image_ids]
    assert set(album.image_ids) == {image.id for image in images if image is not None}
    assert lines[0].startswith("Album:")
    assert album.id in lines[0]
    assert "notes.txt" not in reply.content  # not media: left alone, no complaint


async def test_spoilered_attachments_get_spoilered_links(stage: Stage, server: Server) -> None:
    await enable_auto_rehost(stage.discord, server, server.media)
    hidden, shown = fresh_png(), fresh_png()

    message = await stage.discord.post_message(
        server.media,
        server.alice,
        attachments=[
            Attachment("ending.png", hidden, spoiler=True),
            Attachment("poster.png", shown),
        ],
    )
    reply = await reply_to(stage.discord, message)

    hidden_image, shown_image = copy_of(stage.imgur, hidden), copy_of(stage.imgur, shown)
    assert hidden_image is not None
    assert shown_image is not None
    assert f"||{link_of(stage.imgur, hidden_image)}||" in reply.content
    assert f"||{link_of(stage.imgur, shown_image)}||" not in reply.content
    assert link_of(stage.imgur, shown_image) in reply.content
    album_line = reply.content.splitlines()[0]
    assert album_line.startswith("Album: ||"), "an album showing a spoiler is hidden too"


async def test_threads_and_forum_posts_of_an_enabled_channel_are_rehosted(
    stage: Stage, server: Server
) -> None:
    forum = server.guild.add_forum_channel("showcase")
    post = server.guild.add_thread(forum, "my build")
    thread = server.guild.add_thread(server.media, "more cats")
    await enable_auto_rehost(stage.discord, server, server.media)
    await enable_auto_rehost(stage.discord, server, forum)
    in_post, in_thread = fresh_png(), fresh_png()

    first = await stage.discord.post_message(
        post, server.alice, attachments=[Attachment("build.png", in_post)]
    )
    second = await stage.discord.post_message(
        thread, server.bob, attachments=[Attachment("cat.png", in_thread)]
    )
    first_reply = await reply_to(stage.discord, first)
    second_reply = await reply_to(stage.discord, second)

    for data, reply in ((in_post, first_reply), (in_thread, second_reply)):
        image = copy_of(stage.imgur, data)
        assert image is not None
        assert link_of(stage.imgur, image) in reply.content


async def test_an_nsfw_channel_is_not_rehosted_until_the_server_allows_it(
    stage: Stage, server: Server
) -> None:
    after_dark = server.guild.add_text_channel("after-dark", nsfw=True)
    added = await stage.discord.invoke_slash(
        "imgur-auto add", server.owner, after_dark, {"channel": after_dark}
    )
    await answered(added)

    early = fresh_png()
    await stage.discord.post_message(
        after_dark, server.alice, attachments=[Attachment("early.png", early)]
    )
    await sentinel(stage.discord, stage.imgur, server)

    assert copy_of(stage.imgur, early) is None
    assert not stage.discord.channel_messages(after_dark)

    allowed = await stage.discord.invoke_slash(
        "imgur-settings allow-nsfw", server.owner, after_dark, {"enabled": True}
    )
    await answered(allowed)
    added_again = await stage.discord.invoke_slash(
        "imgur-auto add", server.owner, after_dark, {"channel": after_dark}
    )
    await answered(added_again)
    late = fresh_png()
    message = await stage.discord.post_message(
        after_dark, server.alice, attachments=[Attachment("late.png", late)]
    )
    reply = await reply_to(stage.discord, message)

    image = copy_of(stage.imgur, late)
    assert image is not None
    assert link_of(stage.imgur, image) in reply.content


async def test_adding_an_nsfw_channel_is_refused_with_a_reason(
    stage: Stage, server: Server
) -> None:
    after_dark = server.guild.add_text_channel("after-dark", nsfw=True)

    refused = await stage.discord.invoke_slash(
        "imgur-auto add", server.owner, after_dark, {"channel": after_dark}
    )
    await answered(refused)

    assert refused.ephemeral
    assert "NSFW" in (refused.response_content or "")


# --- following the source message -----------------------------------------------------------


async def test_deleting_the_source_message_deletes_its_copies_and_the_reply(
    stage: Stage, server: Server
) -> None:
    await enable_auto_rehost(stage.discord, server, server.media)
    files = [fresh_png(), fresh_png()]
    message = await stage.discord.post_message(
        server.media,
        server.alice,
        attachments=[Attachment(f"{n}.png", data) for n, data in enumerate(files)],
    )
    reply = await reply_to(stage.discord, message)
    images = [copy_of(stage.imgur, data) for data in files]
    albums = [a for a in stage.imgur.albums.values() if a.id in reply.content]

    await stage.discord.delete_message(message)
    await stage.discord.wait_until(lambda: reply.deleted, 30, "the reply to be deleted")
    await stage.imgur.wait_for(lambda: all(i is not None and i.deleted for i in images))

    assert len(albums) == 1
    assert albums[0].deleted


async def test_a_bulk_deletion_deletes_the_copies_of_every_message(
    stage: Stage, server: Server
) -> None:
    await enable_auto_rehost(stage.discord, server, server.media)
    first, second = fresh_png(), fresh_png()
    one = await stage.discord.post_message(
        server.media, server.alice, attachments=[Attachment("a.png", first)]
    )
    two = await stage.discord.post_message(
        server.media, server.bob, attachments=[Attachment("b.png", second)]
    )
    replies = [await reply_to(stage.discord, one), await reply_to(stage.discord, two)]
    images = [copy_of(stage.imgur, first), copy_of(stage.imgur, second)]

    await stage.discord.bulk_delete([one, two])
    await stage.imgur.wait_for(lambda: all(i is not None and i.deleted for i in images))
    await stage.discord.wait_until(
        lambda: all(r.deleted for r in replies), 30, "the replies to be deleted"
    )


async def test_copies_stay_when_the_server_keeps_them_after_deletion(
    stage: Stage, server: Server
) -> None:
    keeping = server
    following = new_server(stage.discord, "follows deletions")
    for place in (keeping, following):
        await enable_auto_rehost(stage.discord, place, place.media)
    switched = await stage.discord.invoke_slash(
        "imgur-settings delete-with-source", keeping.owner, keeping.media, {"enabled": False}
    )
    await answered(switched)
    assert "**off**" in (switched.response_content or "")

    kept, gone = fresh_png(), fresh_png()
    evidence = await stage.discord.post_message(
        keeping.media, keeping.alice, attachments=[Attachment("evidence.png", kept)]
    )
    other = await stage.discord.post_message(
        following.media, following.alice, attachments=[Attachment("other.png", gone)]
    )
    kept_reply = await reply_to(stage.discord, evidence)
    await reply_to(stage.discord, other)
    kept_image, gone_image = copy_of(stage.imgur, kept), copy_of(stage.imgur, gone)
    assert kept_image is not None
    assert gone_image is not None

    # The bot reads deletions in order: once the second one is handled (and a whole rehost
    # after it), the first one was decided long ago.
    await stage.discord.delete_message(evidence)
    await stage.discord.delete_message(other)
    await stage.imgur.wait_for(lambda: gone_image.deleted)
    await sentinel(stage.discord, stage.imgur, keeping)

    assert not kept_image.deleted
    assert not kept_reply.deleted


async def test_a_source_deleted_while_its_reply_is_held_up_is_deleted_from_imgur_once(
    stage: Stage, server: Server
) -> None:
    await enable_auto_rehost(stage.discord, server, server.media)
    # The reply is held up by a rate limit, and Imgur is slow to delete: the deletion of the
    # source and the auto-rehost finding its source gone overlap.
    stage.discord.inject_rate_limit(f"POST /channels/{server.media.id}/messages", retry_after=0.3)
    stage.imgur.fail_next("slow", method="DELETE", path="/3/image", delay=1.0)
    data = fresh_png()

    message = await stage.discord.post_message(
        server.media, server.alice, attachments=[Attachment("quick.png", data)]
    )
    await stage.discord.wait_for_request(
        lambda r: r.route == "POST /channels/{channel_id}/messages" and r.status == 429
    )
    await stage.discord.delete_message(message)
    image = copy_of(stage.imgur, data)
    assert image is not None
    await stage.imgur.wait_for(lambda: image.deleted)
    await sentinel(stage.discord, stage.imgur, server)
    stage.imgur.clear_faults()

    deletions = [
        r
        for r in stage.imgur.requests
        if r.method == "DELETE" and r.path.endswith(image.deletehash)
    ]
    assert len(deletions) == 1, "the copy was deleted from Imgur more than once"
    assert not [m for m in stage.discord.channel_messages(server.media) if not m.deleted]
