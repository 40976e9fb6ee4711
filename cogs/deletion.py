"""``/imgur-delete``: take an upload off Imgur again.

The owner of an upload may delete it; a member with Manage Messages server-wide (from a role, not
a channel's overwrite) may delete any upload made in the server. Uploads of other servers are
invisible.
"""

from __future__ import annotations

import logging
import time
from typing import Final

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_bot import RehostBot, UsageError, guild_of_interaction, guild_permissions
from bot.errors import NotFound, NotPermitted, RehostError
from bot.imgur import ImageReference
from bot.ledger import Rehost
from cogs.replies import retract_replies

log = logging.getLogger(__name__)

REASON: Final = "deleted with /imgur-delete"


def reference_from(text: str) -> ImageReference:
    """The upload named in ``text``: an Imgur link or id."""
    try:
        return ImageReference.parse(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def may_delete_any(interaction: discord.Interaction[RehostBot]) -> bool:
    """Moderators (Manage Messages server-wide) may delete any upload made in their server."""
    return guild_permissions(interaction).manage_messages


def _choice_name(rehost: Rehost) -> str:
    upload = rehost.upload
    day = time.strftime("%Y-%m-%d", time.gmtime(rehost.created_at))
    parts = [upload.imgur_id or "?", rehost.origin.filename or upload.kind, day]
    return " · ".join(parts)[:100]


class Deletion(commands.Cog):
    """The ``/imgur-delete`` command."""

    def __init__(self, bot: RehostBot) -> None:
        self.bot = bot

    @app_commands.command(name="imgur-delete")
    @app_commands.describe(upload="The Imgur link or id; start typing to pick one")
    @app_commands.guild_only()
    async def imgur_delete(self, interaction: discord.Interaction[RehostBot], upload: str) -> None:
        """Delete an upload from Imgur: yours, or any here with server-wide Manage Messages."""
        guild_id = guild_of_interaction(interaction)
        reference = reference_from(upload)
        imgur_id = reference.imgur_id
        ledger = self.bot.services.ledger
        pipeline = self.bot.services.pipeline
        user_id = interaction.user.id

        async with self.bot.working():
            await interaction.response.defer(ephemeral=True, thinking=True)
            record = await ledger.get_upload(imgur_id)
            if record is not None and not reference.names(record.link):
                raise NotFound(
                    "That link is not on Imgur; give the Imgur link or id of the upload."
                )
            here: list[Rehost] = []
            if record is not None and record.state == "done":
                every = await ledger.rehosts_of(record.id, live_only=False)
                here = [r for r in every if r.origin.guild_id == guild_id]
            if record is None or not here:
                raise NotFound(f"No live upload `{imgur_id}` from this server is on record.")

            allowed = here if may_delete_any(interaction) else [
                r for r in here if r.origin.owner_id == user_id
            ]  # fmt: skip
            if not allowed:
                raise NotPermitted(
                    "Only the person who posted it, or someone with Manage Messages "
                    "server-wide, may delete this upload."
                )

            live = [r for r in allowed if r.deleted_at is None]
            if live:
                deleted = await pipeline.release(live, by=user_id, reason=REASON)
            elif not await ledger.rehosts_of(record.id, live_only=True):
                # An earlier deletion was recorded but Imgur failed to delete: finish it.
                await pipeline.delete_upload(record, by=user_id, reason=REASON)
                deleted = [record]
            else:
                raise NotFound(f"Upload `{imgur_id}` was already removed here.")
            log.info("upload %s removed by %d in guild %d", imgur_id, user_id, guild_id)

            await retract_replies(self.bot, allowed)
            if deleted:
                text = f"Deleted `{imgur_id}` from Imgur; its link no longer works."
            elif await self._gone_meanwhile(imgur_id):
                # Another deletion (a second /imgur-delete, the source message going) took it
                # down while this one waited for the upload's lock.
                text = f"`{imgur_id}` was deleted from Imgur meanwhile; its link no longer works."
            else:
                text = (
                    f"Removed `{imgur_id}` from this server's uploads. The same image is still "
                    "used elsewhere, so it stays on Imgur."
                )
            await interaction.followup.send(text, ephemeral=True)

    async def _gone_meanwhile(self, imgur_id: str) -> bool:
        current = await self.bot.services.ledger.get_upload(imgur_id)
        return current is not None and current.state == "deleted"

    @imgur_delete.autocomplete("upload")
    async def upload_choices(
        self, interaction: discord.Interaction[RehostBot], current: str
    ) -> list[app_commands.Choice[str]]:
        """This server's recent uploads that the person typing may delete."""
        if interaction.guild_id is None:
            return []
        owner_id = None if may_delete_any(interaction) else interaction.user.id
        try:
            rehosts = await self.bot.services.ledger.search_rehosts(
                interaction.guild_id, current.strip(), owner_id=owner_id, limit=25
            )
        except RehostError as exc:
            log.warning("autocomplete for /imgur-delete failed: %s", exc)
            return []

        choices: list[app_commands.Choice[str]] = []
        seen: set[str] = set()
        for rehost in rehosts:
            imgur_id = rehost.upload.imgur_id
            if imgur_id is None or imgur_id in seen:
                continue
            seen.add(imgur_id)
            choices.append(app_commands.Choice(name=_choice_name(rehost), value=imgur_id))
        return choices


async def setup(bot: RehostBot) -> None:
    await bot.add_cog(Deletion(bot))
