"""When a poster deletes their message, its copies leave Imgur too (unless the server says no)."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import discord
from discord.ext import commands

from bot.discord_bot import RehostBot
from bot.errors import RehostError
from cogs.replies import retract_replies

log = logging.getLogger(__name__)

REASON = "source message deleted"


async def take_down_copies(bot: RehostBot, guild_id: int, message_ids: Sequence[int]) -> int:
    """Delete the copies of these source messages, if the guild wants that; how many went."""
    ledger = bot.services.ledger
    pipeline = bot.services.pipeline
    rehosts = [
        r
        for r in await ledger.rehosts_for_messages(message_ids)
        if r.origin.guild_id == guild_id and r.origin.door == "discord"
    ]
    albums = [a for a in await ledger.albums_for_messages(message_ids) if a.guild_id == guild_id]
    if not rehosts and not albums:
        return 0

    settings = await ledger.guild_settings(guild_id)
    if not settings.delete_with_source:
        log.info(
            "source messages deleted in guild %d; %d copies kept (delete-with-source is off)",
            guild_id,
            len(rehosts),
        )
        return 0

    for album in albums:
        try:
            await pipeline.delete_album(album)
        except RehostError as exc:
            log.warning("could not delete album %s of a deleted message: %s", album.imgur_id, exc)

    try:
        deleted = await pipeline.release(rehosts, by=None, reason=REASON)
    except RehostError as exc:
        log.warning("could not delete the copies of deleted messages from Imgur: %s", exc)
        deleted = []
    log.info(
        "source messages deleted in guild %d: %d rehosts withdrawn, %d uploads deleted",
        guild_id,
        len(rehosts),
        len(deleted),
    )

    await retract_replies(bot, rehosts, extra_links=[album.link for album in albums])
    return len(rehosts)


class SourceDeletion(commands.Cog):
    """Follows message deletions, one at a time or in bulk."""

    def __init__(self, bot: RehostBot) -> None:
        self.bot = bot

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        await self._deleted(payload.guild_id, [payload.message_id])

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        await self._deleted(payload.guild_id, sorted(payload.message_ids))

    async def _deleted(self, guild_id: int | None, message_ids: list[int]) -> None:
        # Remembered first, so an upload still in flight for one of them is withdrawn when it
        # lands (see cogs.auto_rehost).
        self.bot.deleted_messages.add(message_ids)
        if guild_id is None or self.bot.closing:
            return
        try:
            async with self.bot.working():
                await take_down_copies(self.bot, guild_id, message_ids)
        except RehostError as exc:
            log.warning("could not take down the copies of deleted messages: %s", exc)


async def setup(bot: RehostBot) -> None:
    await bot.add_cog(SourceDeletion(bot))
