"""``/imgur-delete`` and its permission paths; copies leaving with their source message."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord
import pytest

from bot.imgur import ImageReference
from cogs.rehost_menu import MENU_NAME
from cogs.replies import REMOVED
from tests import samples
from tests.conftest import WebFiles
from tests.discord_mocks import (
    DiscordEnv,
    discord_env,
    make_channel,
    make_guild,
    make_member,
    no_deletehash_in,
)


@pytest.fixture
async def env(tmp_path: Path, web_files: WebFiles) -> AsyncIterator[DiscordEnv]:
    async with discord_env(tmp_path, web_files) as env:
        yield env


async def upload_as(env: DiscordEnv, member: Any, *, seed: int = 1, channel: Any = None) -> str:
    """``/imgur`` by ``member``; the Imgur id of the upload."""
    interaction, talk = env.interaction(member, channel)
    await env.invoke("imgur", interaction, image=env.attachment(samples.png(seed=seed)))
    return ImageReference.parse(talk.last.text.split()[0]).imgur_id


async def delete_as(
    env: DiscordEnv, member: Any, target: str, permissions: discord.Permissions | None = None
) -> str:
    interaction, talk = env.interaction(member, permissions=permissions)
    await env.invoke("imgur-delete", interaction, upload=target)
    assert all(s.ephemeral for s in talk.said)
    return talk.last.text


# --- who may delete -----------------------------------------------------------------------


async def test_the_owner_deletes_their_upload_and_the_public_answer_goes(env: DiscordEnv) -> None:
    imgur_id = await upload_as(env, env.member)

    text = await delete_as(env, env.member, f"https://i.imgur.com/{imgur_id}.png")

    assert text.startswith(f"Deleted `{imgur_id}` from Imgur")
    assert env.imgur.images[imgur_id].deleted
    assert env.channels.live() == []  # the public answer carrying the link is removed
    upload = await env.ledger.get_upload(imgur_id)
    assert upload is not None
    assert upload.state == "deleted"
    assert upload.deleted_by == env.member.id


async def test_another_member_is_refused_privately(env: DiscordEnv) -> None:
    imgur_id = await upload_as(env, env.member)
    bob = make_member(env.guild, name="bob")

    text = await delete_as(env, bob, imgur_id)

    assert text.startswith("Only the person who posted it, or someone with Manage Messages")
    assert not env.imgur.images[imgur_id].deleted
    assert len(env.channels.live()) == 1


async def test_a_moderator_deletes_any_upload_of_the_server(env: DiscordEnv) -> None:
    imgur_id = await upload_as(env, env.member)

    text = await delete_as(env, env.moderator(), imgur_id)

    assert text.startswith(f"Deleted `{imgur_id}`")
    assert env.imgur.images[imgur_id].deleted


async def test_manage_messages_in_one_channel_deletes_no_one_elses_upload(
    env: DiscordEnv,
) -> None:
    # Discord resolves interaction.permissions for the channel the command is used in,
    # overwrites included; the upload may come from a channel this member cannot even see.
    imgur_id = await upload_as(env, env.member)
    channel_mod = make_member(env.guild, name="channel mod")

    text = await delete_as(env, channel_mod, imgur_id, env.moderator_permissions)

    assert text == (
        "Only the person who posted it, or someone with Manage Messages server-wide, "
        "may delete this upload."
    )
    assert not env.imgur.images[imgur_id].deleted
    assert len(env.channels.live()) == 1


async def test_the_owner_deletes_their_own_upload_whatever_their_permissions(
    env: DiscordEnv,
) -> None:
    owner = make_member(env.guild, name="owner")
    first = await upload_as(env, owner, seed=1)
    second = await upload_as(env, owner, seed=2)
    # The same person, seen in a copy of the server whose roles the bot cannot see.
    unknown = make_channel(make_guild(env.guild.id, roles_known=False))
    owner_unseen = make_member(unknown.guild, name="owner")
    owner_unseen.id = owner.id

    # No permission anywhere, none in this channel either; then with no roles known at all.
    denied = await delete_as(env, owner, first, discord.Permissions.none())
    interaction, talk = env.interaction(owner_unseen, unknown)
    await env.invoke("imgur-delete", interaction, upload=second)

    assert denied.startswith(f"Deleted `{first}`")
    assert talk.last.text.startswith(f"Deleted `{second}`")
    assert env.imgur.images[first].deleted
    assert env.imgur.images[second].deleted


async def test_uploads_of_another_server_are_invisible(env: DiscordEnv) -> None:
    elsewhere = make_channel(make_guild(), name="elsewhere")
    stranger = make_member(elsewhere.guild, name="stranger")
    imgur_id = await upload_as(env, stranger, channel=elsewhere)

    text = await delete_as(env, env.moderator(), imgur_id)

    assert text == f"No live upload `{imgur_id}` from this server is on record."
    assert not env.imgur.images[imgur_id].deleted


async def test_an_unknown_id_is_not_found(env: DiscordEnv) -> None:
    text = await delete_as(env, env.member, "AbCdEfG")

    assert text == "No live upload `AbCdEfG` from this server is on record."


@pytest.mark.parametrize("target", ["not a link", "https://example.com/", "ab"])
async def test_something_that_is_no_imgur_id_is_refused(env: DiscordEnv, target: str) -> None:
    assert await delete_as(env, env.member, target) == "That is not an Imgur link or id."


@pytest.mark.parametrize(
    ("text", "imgur_id"),
    [
        ("AbC1234", "AbC1234"),
        ("https://i.imgur.com/AbC1234.png", "AbC1234"),
        ("<https://imgur.com/AbC1234>", "AbC1234"),
        ("||https://i.imgur.com/AbC1234.mp4||", "AbC1234"),
    ],
)
def test_links_and_ids_name_the_same_upload(text: str, imgur_id: str) -> None:
    assert ImageReference.parse(text).imgur_id == imgur_id


async def test_a_link_of_another_site_never_deletes_the_upload_its_id_names(
    env: DiscordEnv,
) -> None:
    imgur_id = await upload_as(env, env.member)

    text = await delete_as(env, env.member, f"https://example.com/{imgur_id}.png")

    assert text == "That link is not on Imgur; give the Imgur link or id of the upload."
    assert not env.imgur.images[imgur_id].deleted


async def test_the_same_image_used_elsewhere_stays_on_imgur(env: DiscordEnv) -> None:
    bob = make_member(env.guild, name="bob")
    imgur_id = await upload_as(env, env.member, seed=3)
    assert await upload_as(env, bob, seed=3) == imgur_id  # same bytes: one upload

    text = await delete_as(env, env.member, imgur_id)

    assert "still used elsewhere" in text
    assert not env.imgur.images[imgur_id].deleted
    (bobs,) = env.channels.live()  # alice's answer is gone, bob's stays
    assert imgur_id in bobs.content


async def test_a_deletion_imgur_failed_can_be_finished_later(env: DiscordEnv) -> None:
    imgur_id = await upload_as(env, env.member)
    env.imgur.fail_next("server_error", times=2, path="/3/image", method="DELETE")

    first = await delete_as(env, env.member, imgur_id)
    second = await delete_as(env, env.member, imgur_id)

    assert "Imgur" in first
    assert not first.startswith("Deleted")
    assert second.startswith(f"Deleted `{imgur_id}`")
    assert env.imgur.images[imgur_id].deleted


async def test_two_deletions_at_once_delete_once_and_neither_says_it_stays(
    env: DiscordEnv,
) -> None:
    imgur_id = await upload_as(env, env.member)
    mod = env.moderator()
    # Imgur answers the first deletion slowly: the second one arrives while it is under way.
    env.imgur.fail_next("slow", path="/3/image", method="DELETE", delay=0.3)

    texts = await asyncio.gather(
        delete_as(env, env.member, imgur_id),
        delete_as(env, mod, imgur_id),
    )

    assert env.imgur.images[imgur_id].deleted
    assert not any("stays on Imgur" in text for text in texts), texts
    assert sum(text.startswith(f"Deleted `{imgur_id}`") for text in texts) == 1
    assert all("no longer works" in text for text in texts)


async def test_deleting_one_link_of_a_reply_edits_the_reply(env: DiscordEnv) -> None:
    await env.ledger.add_auto_channel(env.guild.id, env.channel.id, added_by=1)
    message = env.message(env.attachment(samples.png(seed=1)), env.attachment(samples.png(seed=2)))
    await env.event("message", message)
    first = (await env.ledger.rehosts_for_messages([message.id]))[0].upload

    with no_deletehash_in(env):
        await delete_as(env, env.member, first.imgur_id or "")

    (reply,) = env.channels.live()
    assert first.link not in reply.content
    assert REMOVED in reply.content.splitlines()
    assert reply.content.count("https://i.imgur.com/") == 1


# --- autocomplete -------------------------------------------------------------------------


async def choices_for(
    env: DiscordEnv, member: Any, current: str, permissions: discord.Permissions | None = None
) -> list[str]:
    interaction, _ = env.interaction(member, permissions=permissions)
    cog = env.bot.get_cog("Deletion")
    choices = await cog.upload_choices(interaction, current)  # type: ignore[union-attr]
    return [choice.value for choice in choices]


async def test_autocomplete_offers_what_the_caller_may_delete(env: DiscordEnv) -> None:
    bob = make_member(env.guild, name="bob")
    alices = await upload_as(env, env.member, seed=1)
    bobs = await upload_as(env, bob, seed=2)
    elsewhere = make_channel(make_guild())
    await upload_as(env, make_member(elsewhere.guild), seed=3, channel=elsewhere)

    assert await choices_for(env, env.member, "") == [alices]
    assert await choices_for(env, bob, "") == [bobs]
    assert await choices_for(env, make_member(env.guild), "") == []
    assert await choices_for(env, env.moderator(), "") == [bobs, alices]
    assert await choices_for(env, env.moderator(), alices[:4]) == [alices]
    # Manage Messages in this channel only: their own uploads, as any member.
    assert await choices_for(env, bob, "", env.moderator_permissions) == [bobs]


def test_imgur_delete_is_wired_to_its_autocomplete(env: DiscordEnv) -> None:
    command = env.command("imgur-delete")
    (parameter,) = command.parameters
    assert parameter.autocomplete


# --- when the source message is deleted ---------------------------------------------------


async def auto_rehosted(env: DiscordEnv, *attachments: Any) -> Any:
    await env.ledger.add_auto_channel(env.guild.id, env.channel.id, added_by=1)
    message = env.message(*attachments)
    await env.event("message", message)
    return message


def deleted_event(env: DiscordEnv, message: Any) -> discord.RawMessageDeleteEvent:
    return discord.RawMessageDeleteEvent(
        {"id": str(message.id), "channel_id": str(env.channel.id), "guild_id": str(env.guild.id)}
    )


async def test_deleting_the_source_takes_its_copies_album_and_reply_down(env: DiscordEnv) -> None:
    message = await auto_rehosted(
        env, env.attachment(samples.png(seed=1)), env.attachment(samples.png(seed=2))
    )

    await env.event("raw_message_delete", deleted_event(env, message))

    assert all(image.deleted for image in env.imgur.images.values())
    assert all(album.deleted for album in env.imgur.albums.values())
    assert env.channels.live() == []
    assert await env.ledger.rehosts_for_messages([message.id]) == []


async def test_a_server_can_keep_copies_when_the_source_goes(
    env: DiscordEnv, caplog: pytest.LogCaptureFixture
) -> None:
    await env.ledger.update_guild_settings(env.guild.id, delete_with_source=False)
    message = await auto_rehosted(env, env.attachment(samples.png()))

    with caplog.at_level(logging.INFO):
        await env.event("raw_message_delete", deleted_event(env, message))

    assert not any(image.deleted for image in env.imgur.images.values())
    assert len(env.channels.live()) == 1
    assert any("copies kept" in r.getMessage() for r in caplog.records)


async def test_a_bulk_deletion_takes_down_every_copy(env: DiscordEnv) -> None:
    await env.ledger.add_auto_channel(env.guild.id, env.channel.id, added_by=1)
    first = env.message(env.attachment(samples.png(seed=1)))
    second = env.message(env.attachment(samples.png(seed=2)))
    for message in (first, second):
        await env.event("message", message)

    event = discord.RawBulkMessageDeleteEvent(
        {
            "ids": [str(first.id), str(second.id)],
            "channel_id": str(env.channel.id),
            "guild_id": str(env.guild.id),
        }
    )
    await env.event("raw_bulk_message_delete", event)

    assert len(env.imgur.images) == 2
    assert all(image.deleted for image in env.imgur.images.values())
    assert env.channels.live() == []


async def test_a_menu_rehost_leaves_with_its_source_too(env: DiscordEnv) -> None:
    poster = make_member(env.guild, name="poster")
    message = env.message(env.attachment(samples.png()), author=poster)
    interaction, _ = env.interaction()
    await env.invoke(MENU_NAME, interaction, message)

    await env.event("raw_message_delete", deleted_event(env, message))

    (stored,) = env.imgur.images.values()
    assert stored.deleted


async def test_a_deletion_reported_for_another_server_changes_nothing(env: DiscordEnv) -> None:
    message = await auto_rehosted(env, env.attachment(samples.png()))
    event = discord.RawMessageDeleteEvent(
        {"id": str(message.id), "channel_id": "1", "guild_id": str(make_guild().id)}
    )

    await env.event("raw_message_delete", event)

    assert not any(image.deleted for image in env.imgur.images.values())
