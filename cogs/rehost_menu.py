"""The message menu **Rehost to Imgur**: copies a message's media; the links come privately."""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_bot import RehostBot, UsageError, refuse_when_held_back
from cogs.discord_media import (
    display_name,
    media_attachments,
    media_embeds,
    message_origin,
    rehost_items,
)
from cogs.replies import Progress, fit, link_line, summarise_failure
from cogs.source_deletion import take_down_copies

log = logging.getLogger(__name__)

MENU_NAME = "Rehost to Imgur"


class RehostMenu(commands.Cog):
    """The message context menu; it cannot be a decorated method (see DISCORD_NOTES.md)."""

    def __init__(self, bot: RehostBot) -> None:
        self.bot = bot
        self.menu = app_commands.ContextMenu(name=MENU_NAME, callback=self.rehost_message)

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.menu.name, type=self.menu.type)

    async def rehost_message(
        self, interaction: discord.Interaction[RehostBot], message: discord.Message
    ) -> None:
        """Copy every image and video of the message to Imgur; the links come to you alone."""
        items = media_attachments(message) + media_embeds(message)
        if not items:
            raise UsageError("That message has no image or video I can rehost.")
        refuse_when_held_back(self.bot)

        async with self.bot.working():
            await interaction.response.defer(ephemeral=True, thinking=True)
            what = display_name(items[0]) if len(items) == 1 else f"{len(items)} files"

            async with Progress(interaction, discord.utils.escape_markdown(what)) as progress:
                outcomes = await rehost_items(
                    self.bot,
                    message,
                    items,
                    lambda item: message_origin(
                        message, item, requester_id=interaction.user.id, auto=False
                    ),
                    progress.callback,
                )

            if await self._source_gone(message):
                await interaction.edit_original_response(
                    content="That message was deleted meanwhile, so its copies were taken down too."
                )
                return

            if len(outcomes) == 1 and outcomes[0].error is not None:
                raise outcomes[0].error
            lines = [link_line(o.rehost, spoiler=o.item.spoiler) for o in outcomes if o.rehost]
            lines += [
                summarise_failure(display_name(o.item), o.failure) for o in outcomes if o.failure
            ]
            # Edited, not followed up: the private "thinking…" or progress note is the answer.
            await interaction.edit_original_response(content=fit(lines))

    async def _source_gone(self, message: discord.Message) -> bool:
        """Whether the message was deleted while its files were on their way; if so, undo."""
        if message.guild is None or message.id not in self.bot.deleted_messages:
            return False
        guild_id = message.guild.id
        if not (await self.bot.services.ledger.guild_settings(guild_id)).delete_with_source:
            return False

        # Copies recorded before the deletion event came were taken down by its listener
        # already; this takes down those recorded after it.
        await take_down_copies(self.bot, guild_id, [message.id])
        return True


async def setup(bot: RehostBot) -> None:
    await bot.add_cog(RehostMenu(bot))
