"""``/imgur``, the message menu and the managers' commands, as Discord users see them."""

from __future__ import annotations

import pytest

from tests.discord_standin import Attachment, InteractionHandle, Permission
from tests.discord_standin import gateway as gw
from tests.e2e.conftest import Stage
from tests.e2e.harness import (
    Server,
    answered,
    copy_of,
    fresh_png,
    link_of,
    sentinel,
)

pytestmark = pytest.mark.asyncio(loop_scope="module")

MENU = "Rehost to Imgur"
COMMANDS = {
    "imgur",
    "imgur-auto",
    "imgur-delete",
    "imgur-status",
    "imgur-history",
    "imgur-settings",
    MENU,
}


def said(handle: InteractionHandle) -> str:
    """Everything the invoker can still read of the bot's answer."""
    return "\n".join(m.content for m in handle.visible_messages().all)


# --- start-up ---------------------------------------------------------------------------------


async def test_the_bot_syncs_its_commands_and_asks_only_for_the_intents_it_needs(
    stage: Stage,
) -> None:
    discord = stage.discord
    synced = {command["name"]: command for command in discord.commands}

    assert set(synced) >= COMMANDS
    assert synced[MENU]["type"] == 3  # a message context menu
    imgur_options = {o["name"]: o for o in synced["imgur"]["options"]}
    assert imgur_options["image"]["type"] == 11  # an attachment option
    assert imgur_options["url"]["type"] == 3
    (upload,) = synced["imgur-delete"]["options"]
    assert upload["autocomplete"] is True
    manage_guild = int(Permission.MANAGE_GUILD)
    assert int(synced["imgur-auto"]["default_member_permissions"]) == manage_guild
    assert int(synced["imgur-settings"]["default_member_permissions"]) == manage_guild

    assert discord.identify_payload is not None
    intents = discord.identify_payload["intents"]
    assert intents == gw.GUILDS | gw.GUILD_MESSAGES | gw.MESSAGE_CONTENT
    assert "synced" in stage.bot.log


# --- /imgur -------------------------------------------------------------------------------------


async def test_imgur_with_an_attachment_answers_everyone_with_the_link(
    stage: Stage, server: Server
) -> None:
    data = fresh_png()

    handle = await stage.discord.invoke_slash(
        "imgur", server.alice, server.media, {"image": Attachment("holiday cat.png", data)}
    )
    await answered(handle)

    image = copy_of(stage.imgur, data)
    assert image is not None
    assert image.name == "holiday_cat.png"
    assert handle.deferred
    visible = handle.visible_messages()
    assert not visible.invoker_only
    (answer,) = visible.channel
    assert link_of(stage.imgur, image) in answer.content
    assert answer in stage.discord.channel_messages(server.media)


async def test_imgur_with_a_url_answers_everyone_with_the_link(
    stage: Stage, server: Server
) -> None:
    data = fresh_png()
    url = stage.files.add("linked.png", data)

    handle = await stage.discord.invoke_slash(
        "imgur", server.bob, server.media, {"url": url, "title": "From the web"}
    )
    await answered(handle)

    image = copy_of(stage.imgur, data)
    assert image is not None
    assert image.title == "From the web"
    assert "/linked.png" in stage.files.hits
    (answer,) = handle.visible_messages().channel
    assert link_of(stage.imgur, image) in answer.content


async def test_imgur_hides_the_link_of_a_spoilered_attachment(stage: Stage, server: Server) -> None:
    data = fresh_png()

    handle = await stage.discord.invoke_slash(
        "imgur", server.alice, server.media, {"image": Attachment("plot.png", data, spoiler=True)}
    )
    await answered(handle)

    image = copy_of(stage.imgur, data)
    assert image is not None
    assert f"||{link_of(stage.imgur, image)}||" in said(handle)


async def test_imgur_with_a_file_that_is_no_image_answers_privately_and_uploads_nothing(
    stage: Stage, server: Server
) -> None:
    uploads_before = len(stage.imgur.uploads())

    handle = await stage.discord.invoke_slash(
        "imgur", server.alice, server.media, {"image": Attachment("notes.png", b"just text\n")}
    )
    await answered(handle)

    visible = handle.visible_messages()
    assert not visible.channel, "an error must not stay public"
    assert len(visible.invoker_only) == 1
    assert visible.invoker_only[0].content
    assert len(stage.imgur.uploads()) == uploads_before


async def test_imgur_with_neither_an_image_nor_a_url_says_so_privately(
    stage: Stage, server: Server
) -> None:
    handle = await stage.discord.invoke_slash("imgur", server.alice, server.media, {})
    await answered(handle)

    assert handle.ephemeral
    assert "image or a url" in said(handle)
    assert not handle.visible_messages().channel


async def test_imgur_defers_at_once_so_a_slow_download_misses_no_deadline(
    stage: Stage, server: Server
) -> None:
    data = fresh_png()
    url, held = stage.files.add_held("slow.png", data)

    handle = await stage.discord.invoke_slash("imgur", server.alice, server.media, {"url": url})
    await held.wait_until_requested()
    # The web server is still holding the file: let Discord's three seconds pass meanwhile.
    stage.discord.advance_clock(stage.discord.interaction_deadline + 1)
    held.release()
    await answered(handle)

    assert handle.deferred
    image = copy_of(stage.imgur, data)
    assert image is not None
    assert link_of(stage.imgur, image) in said(handle)


# --- the message menu ---------------------------------------------------------------------------


async def test_the_menu_rehosts_each_image_of_a_message_and_tells_only_the_asker(
    stage: Stage, server: Server
) -> None:
    first, second = fresh_png(), fresh_png()
    message = await stage.discord.post_message(
        server.media,
        server.bob,
        "two shots and a readme",
        attachments=[
            Attachment("one.png", first),
            Attachment("two.png", second),
            Attachment("readme.txt", b"not media"),
        ],
    )

    handle = await stage.discord.invoke_message_command(MENU, server.alice, message)
    await answered(handle)

    images = [copy_of(stage.imgur, first), copy_of(stage.imgur, second)]
    assert all(images)
    assert handle.ephemeral
    text = said(handle)
    for image in images:
        assert image is not None
        assert link_of(stage.imgur, image) in text
    assert not handle.visible_messages().channel
    assert not stage.discord.channel_messages(server.media)


async def test_the_menu_on_a_message_without_media_says_so_privately(
    stage: Stage, server: Server
) -> None:
    message = await stage.discord.post_message(server.media, server.bob, "only words")

    handle = await stage.discord.invoke_message_command(MENU, server.alice, message)
    await answered(handle)

    assert handle.ephemeral
    assert "no image or video" in said(handle)


async def test_the_menu_defers_at_once_so_a_slow_download_misses_no_deadline(
    stage: Stage, server: Server
) -> None:
    data = fresh_png()
    url, held = stage.files.add_held("shown.png", data)
    message = await stage.discord.post_message(
        server.media,
        server.bob,
        f"look {url}",
        embeds=[{"type": "image", "url": url, "thumbnail": {"url": url}}],
    )

    handle = await stage.discord.invoke_message_command(MENU, server.alice, message)
    await held.wait_until_requested()
    stage.discord.advance_clock(stage.discord.interaction_deadline + 1)
    held.release()
    await answered(handle)

    assert handle.deferred
    image = copy_of(stage.imgur, data)
    assert image is not None
    assert link_of(stage.imgur, image) in said(handle)


# --- managers' commands -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "options", "needed"),
    [
        ("imgur-auto add", "channel", "Manage Server"),
        ("imgur-auto list", None, "Manage Server"),
        ("imgur-settings delete-with-source", "enabled", "Manage Server"),
        ("imgur-history", None, "Manage Messages"),
    ],
)
async def test_a_member_who_can_see_a_managers_command_still_may_not_use_it(
    stage: Stage, server: Server, command: str, options: str | None, needed: str
) -> None:
    values: dict[str, object] = {}
    if options == "channel":
        values["channel"] = server.media
    elif options == "enabled":
        values["enabled"] = False

    # A server may show the command to everyone (an override in its settings).
    handle = await stage.discord.invoke_slash(
        command, server.alice, server.media, values, bypass_default_permissions=True
    )
    await answered(handle)

    assert handle.ephemeral
    assert f"You need the {needed} permission" in said(handle)


async def test_a_member_cannot_switch_auto_rehost_on(stage: Stage, server: Server) -> None:
    handle = await stage.discord.invoke_slash(
        "imgur-auto add",
        server.alice,
        server.media,
        {"channel": server.media},
        bypass_default_permissions=True,
    )
    await answered(handle)
    data = fresh_png()
    await stage.discord.post_message(
        server.media, server.alice, attachments=[Attachment("mine.png", data)]
    )
    await sentinel(stage.discord, stage.imgur, server)

    assert copy_of(stage.imgur, data) is None
    assert not stage.discord.channel_messages(server.media)


async def test_managers_see_the_servers_settings_and_history(stage: Stage, server: Server) -> None:
    data = fresh_png()
    message = await stage.discord.post_message(
        server.media, server.alice, attachments=[Attachment("for history.png", data)]
    )
    await answered(await stage.discord.invoke_message_command(MENU, server.bob, message))
    image = copy_of(stage.imgur, data)
    assert image is not None

    settings = await stage.discord.invoke_slash(
        "imgur-settings show", server.owner, server.media, {}
    )
    history = await stage.discord.invoke_slash("imgur-history", server.mod, server.media, {})
    await answered(settings)
    await answered(history)

    assert settings.ephemeral
    assert "Delete with source" in said(settings)
    assert history.ephemeral
    assert link_of(stage.imgur, image) in said(history)
    assert f"<@{server.alice.id}>" in said(history)  # the poster owns the copy


async def test_imgur_status_answers_privately_with_the_quota(stage: Stage, server: Server) -> None:
    handle = await stage.discord.invoke_slash("imgur-status", server.bob, server.media, {})
    await answered(handle)

    assert handle.ephemeral
    assert "Uploads since midnight UTC" in said(handle)
    assert not handle.visible_messages().channel
