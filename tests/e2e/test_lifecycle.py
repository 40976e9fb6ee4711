"""Starting, stopping and restarting the bot process, and running without Message Content."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.discord_standin import Attachment
from tests.discord_standin import gateway as gw
from tests.e2e.harness import (
    START_TIMEOUT,
    LinkedFiles,
    answered,
    copy_of,
    enable_auto_rehost,
    fresh_png,
    launch_bot,
    leaks,
    link_of,
    new_secret,
    new_server,
    reply_to,
    running_bot,
    stand_ins,
    start_bot,
)

MENU = "Rehost to Imgur"


async def test_a_restart_with_the_same_database_remembers_channels_and_uploads(
    tmp_path: Path,
) -> None:
    async with stand_ins() as (discord, imgur):
        server = new_server(discord, "restarted")
        posted, commanded = fresh_png(), fresh_png()

        async with running_bot(discord, imgur, tmp_path, log_name="first.log") as first:
            await enable_auto_rehost(discord, server, server.media)
            message = await discord.post_message(
                server.media, server.alice, attachments=[Attachment("before.png", posted)]
            )
            await reply_to(discord, message)
            await answered(
                await discord.invoke_slash(
                    "imgur", server.bob, server.media, {"image": Attachment("b.png", commanded)}
                )
            )
        posted_image, commanded_image = copy_of(imgur, posted), copy_of(imgur, commanded)
        assert posted_image is not None
        assert commanded_image is not None

        async with running_bot(discord, imgur, tmp_path, log_name="second.log") as second:
            # Auto-rehost is still on in the channel.
            later = fresh_png()
            message = await discord.post_message(
                server.media, server.bob, attachments=[Attachment("after.png", later)]
            )
            await reply_to(discord, message)
            assert copy_of(imgur, later) is not None

            # The same file again is answered from the ledger: no second upload to Imgur.
            uploads = len(imgur.uploads())
            again = await discord.invoke_slash(
                "imgur", server.mod, server.media, {"image": Attachment("again.png", commanded)}
            )
            await answered(again)
            assert link_of(imgur, commanded_image) in (again.response_content or "")
            assert len(imgur.uploads()) == uploads

            # The poster can still delete what they posted before the restart.
            deleted = await discord.invoke_slash(
                "imgur-delete", server.alice, server.media, {"upload": posted_image.id}
            )
            await answered(deleted)
            assert posted_image.deleted

    assert not leaks(discord, imgur, [first.log, second.log])


async def test_sigterm_lets_the_upload_in_flight_finish_and_turns_new_work_away(
    tmp_path: Path,
) -> None:
    async with stand_ins() as (discord, imgur), LinkedFiles() as files:
        server = new_server(discord, "stopping")
        data = fresh_png()
        url, held = files.add_held("late.png", data)
        bot = await start_bot(discord, imgur, tmp_path)
        try:
            in_flight = await discord.invoke_slash(
                "imgur", server.alice, server.media, {"url": url}
            )
            await held.wait_until_requested()

            stopping = asyncio.ensure_future(bot.stop())
            await bot.wait_for_log("SIGTERM")
            turned_away = await discord.invoke_slash(
                "imgur", server.bob, server.media, {"image": Attachment("new.png", fresh_png())}
            )
            await answered(turned_away)
            held.release()
            status = await stopping
        finally:
            await bot.kill()

        bot.assert_stopped_cleanly(status)
        image = copy_of(imgur, data)
        assert image is not None
        assert in_flight.done
        assert link_of(imgur, image) in (in_flight.response_content or "")
        assert turned_away.ephemeral
        assert "try again" in (turned_away.response_content or "")
        assert len(imgur.uploads()) == 1

    assert not leaks(discord, imgur, [bot.log])


async def test_without_the_message_content_intent_commands_work_and_auto_rehost_pauses(
    tmp_path: Path,
) -> None:
    async with stand_ins(message_content_allowed=False) as (discord, imgur):
        server = new_server(discord, "no content")
        async with running_bot(discord, imgur, tmp_path) as bot:
            # One warning that says where to switch the intent on; then it runs without it.
            warnings = [line for line in bot.log_lines("WARNING") if "Message Content" in line]
            assert len(warnings) == 1, bot.log_lines("WARNING")
            assert "Developer Portal" in warnings[0]
            assert discord.identify_payload is not None
            assert not discord.identify_payload["intents"] & gw.MESSAGE_CONTENT

            command_file = fresh_png()
            command = await discord.invoke_slash(
                "imgur", server.alice, server.media, {"image": Attachment("a.png", command_file)}
            )
            await answered(command)
            command_image = copy_of(imgur, command_file)
            assert command_image is not None
            assert link_of(imgur, command_image) in (command.response_content or "")

            # The menu's target message arrives whole, intent or not.
            menu_file = fresh_png()
            target = await discord.post_message(
                server.media, server.bob, attachments=[Attachment("b.png", menu_file)]
            )
            menu = await discord.invoke_message_command(MENU, server.mod, target)
            await answered(menu)
            menu_image = copy_of(imgur, menu_file)
            assert menu_image is not None
            assert link_of(imgur, menu_image) in (menu.response_content or "")

            added = await discord.invoke_slash(
                "imgur-auto add", server.owner, server.media, {"channel": server.media}
            )
            await answered(added)
            assert "paused" in (added.response_content or "")

            unseen = fresh_png()
            posted = await discord.post_message(
                server.media, server.alice, attachments=[Attachment("c.png", unseen)]
            )
            # Handled in order: once this answer is back, the message above was seen.
            await answered(
                await discord.invoke_slash("imgur-auto list", server.owner, server.media, {})
            )
            assert copy_of(imgur, unseen) is None
            assert not [m for m in discord.channel_messages(server.media) if m.reference]
            cdn_paths = {r.path for r in discord.requests if r.kind == "cdn"}
            assert "/" + posted.attachments[0].path not in cdn_paths

    assert not leaks(discord, imgur, [bot.log])


async def test_with_private_links_refused_discords_own_attachments_are_still_rehosted(
    tmp_path: Path,
) -> None:
    # Production's link rule, while Discord (its CDN too) is a stand-in on 127.0.0.1.
    private_links_refused = {"ALLOW_PRIVATE_URLS": "false"}
    async with (
        stand_ins() as (discord, imgur),
        LinkedFiles() as files,
        running_bot(discord, imgur, tmp_path, extra_env=private_links_refused) as bot,
    ):
        server = new_server(discord, "private links refused")
        attached = fresh_png()
        command = await discord.invoke_slash(
            "imgur", server.alice, server.media, {"image": Attachment("a.png", attached)}
        )
        await answered(command)
        image = copy_of(imgur, attached)
        assert image is not None
        assert link_of(imgur, image) in (command.response_content or "")

        linked = fresh_png()
        typed = await discord.invoke_slash(
            "imgur", server.bob, server.media, {"url": files.add("inside.png", linked)}
        )
        await answered(typed)
        visible = typed.visible_messages()
        assert not visible.channel, "an error must not stay public"
        (refusal,) = visible.invoker_only
        assert "private or local address" in refusal.content
        assert files.hits == []
        assert copy_of(imgur, linked) is None

    assert not leaks(discord, imgur, [bot.log])


async def test_a_refused_token_stops_the_bot_with_one_clear_line(tmp_path: Path) -> None:
    wrong = new_secret("old-token")
    async with stand_ins() as (discord, imgur):
        bot = await launch_bot(discord, imgur, tmp_path, extra_env={"DISCORD_TOKEN": wrong})
        try:
            status = await asyncio.wait_for(bot.process.wait(), START_TIMEOUT)
        finally:
            await bot.kill()

    assert status == 1
    errors = bot.log_lines("ERROR")
    assert len(errors) == 1, bot.tail()
    assert "DISCORD_TOKEN was refused" in errors[0]
    assert wrong not in bot.log
    assert not bot.unclean_lines(), bot.unclean_lines()
