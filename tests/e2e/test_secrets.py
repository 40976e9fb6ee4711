"""No secret leaves the bot: not on Discord, not in its log, whatever door was used."""

from __future__ import annotations

from pathlib import Path

from tests.discord_standin import Attachment
from tests.e2e.harness import (
    LinkedFiles,
    answered,
    copy_of,
    enable_auto_rehost,
    everything_the_bot_said,
    fresh_png,
    leaks,
    new_server,
    reply_to,
    running_bot,
    secrets_of,
    stand_ins,
)

MENU = "Rehost to Imgur"


async def test_no_token_client_id_or_deletehash_is_shown_on_discord_or_logged(
    tmp_path: Path,
) -> None:
    async with stand_ins() as (discord, imgur), LinkedFiles() as files:
        server = new_server(discord, "secrets")
        async with running_bot(discord, imgur, tmp_path) as bot:
            # Auto-rehost with an album, then the source deleted (album and images deleted).
            await enable_auto_rehost(discord, server, server.media)
            message = await discord.post_message(
                server.media,
                server.alice,
                attachments=[Attachment("1.png", fresh_png()), Attachment("2.png", fresh_png())],
            )
            await reply_to(discord, message)
            await discord.delete_message(message)
            await imgur.wait_for(lambda: all(a.deleted for a in imgur.albums.values()))

            # /imgur by attachment and by link, the menu, then deletion by a moderator.
            kept = fresh_png()
            for handle in [
                await discord.invoke_slash(
                    "imgur", server.bob, server.media, {"image": Attachment("k.png", kept)}
                ),
                await discord.invoke_slash(
                    "imgur", server.owner, server.media, {"url": files.add("u.png", fresh_png())}
                ),
            ]:
                await answered(handle)
            chat = server.guild.add_text_channel("chat")
            target = await discord.post_message(
                chat, server.bob, attachments=[Attachment("m.png", fresh_png())]
            )
            await answered(await discord.invoke_message_command(MENU, server.mod, target))
            image = copy_of(imgur, kept)
            assert image is not None
            await answered(
                await discord.invoke_slash(
                    "imgur-delete", server.mod, server.media, {"upload": image.id}
                )
            )

            # What members and moderators can look at.
            await discord.invoke_autocomplete(
                "imgur-delete", server.mod, server.media, {"upload": ""}, "upload"
            )
            for command, member in (("imgur-history", server.mod), ("imgur-status", server.bob)):
                await answered(await discord.invoke_slash(command, member, server.media, {}))

    # The scan has something to find: deletehashes were issued and used, messages were sent.
    secrets = secrets_of(discord, imgur)
    assert sum(name.startswith("the deletehash") for name in secrets) >= 6
    deletions = [r for r in imgur.requests if r.method == "DELETE"]
    assert len(deletions) >= 4
    assert len(everything_the_bot_said(discord)) > 20
    assert "DEBUG" in bot.log

    found = leaks(discord, imgur, [bot.log])
    assert not found, "\n".join(found)
