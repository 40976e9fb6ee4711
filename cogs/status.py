"""``/imgur-status`` (quota, today's uploads, work waiting) and ``/imgur-history`` (moderators)."""

from __future__ import annotations

import calendar
import logging
import time
from typing import Final

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_bot import (
    RehostBot,
    defer_privately,
    guild_of_interaction,
    has_guild_permissions,
)
from bot.imgur import ImgurError, Quota
from bot.ledger import Rehost
from cogs.replies import fit, kind_label, size_label

log = logging.getLogger(__name__)

HISTORY_LENGTH: Final = 20


def start_of_day(now: float) -> float:
    """Midnight UTC of the day ``now`` falls in."""
    day = time.gmtime(now)
    return float(calendar.timegm((day.tm_year, day.tm_mon, day.tm_mday, 0, 0, 0)))


def _when(epoch: float | None) -> str:
    return "at an unknown time" if epoch is None else f"<t:{int(epoch)}:R>"


def quota_lines(quota: Quota) -> list[str]:
    """What is known of Imgur's limits, as Imgur last reported them."""
    lines: list[str] = []
    if quota.post_remaining is not None:
        limit = f" of {quota.post_limit}" if quota.post_limit is not None else ""
        lines.append(
            f"Uploads left this hour: **{quota.post_remaining}**{limit}, "
            f"refilled {_when(quota.post_reset)}."
        )
    if quota.user_remaining is not None:
        limit = f" of {quota.user_limit}" if quota.user_limit is not None else ""
        lines.append(
            f"Credits left for this address: **{quota.user_remaining}**{limit}, "
            f"refilled {_when(quota.user_reset)}."
        )
    if quota.client_remaining is not None:
        limit = f" of {quota.client_limit}" if quota.client_limit is not None else ""
        lines.append(
            f"Credits left for the application today: **{quota.client_remaining}**{limit}."
        )
    return lines


def history_line(rehost: Rehost) -> str:
    upload = rehost.upload
    owner = f"<@{rehost.origin.owner_id}>" if rehost.origin.owner_id else "someone"
    gone = rehost.deleted_at is not None or upload.state == "deleted"
    if upload.link is None:
        what = f"~~{upload.state}~~"
    elif gone:
        what = f"~~{upload.link}~~ (deleted)"
    else:
        # Angle brackets keep Discord from unfurling twenty previews.
        what = f"<{upload.link}>"
    when = f"<t:{int(rehost.created_at)}:R>"
    return f"{when} {owner} {what} {size_label(upload.size)} {kind_label(upload)}"


class Status(commands.Cog):
    """Quota and history, answered privately."""

    def __init__(self, bot: RehostBot) -> None:
        self.bot = bot

    @app_commands.command(name="imgur-status")
    async def imgur_status(self, interaction: discord.Interaction[RehostBot]) -> None:
        """How much Imgur quota is left, uploads today, and work waiting."""
        services = self.bot.services
        await defer_privately(interaction)

        quota = services.imgur.quota
        lines = quota_lines(quota)
        if quota.user_remaining is None:
            try:
                credits = await services.imgur.credits()
            except ImgurError as exc:
                lines.append(f"Imgur's quota is not known yet: {exc.user_message}")
            else:
                lines.append(
                    f"Credits left for this address: **{credits.user_remaining}** of "
                    f"{credits.user_limit}, refilled {_when(credits.user_reset)}."
                )
                lines.append(
                    f"Credits left for the application today: **{credits.client_remaining}** "
                    f"of {credits.client_limit}."
                )

        since = start_of_day(time.time())
        uploads = await services.ledger.count_uploads_since(since)
        reused = await services.ledger.count_rehosts_since(since, reused=True)
        waiting = services.pipeline.scheduler.waiting
        lines.append(f"Uploads since midnight UTC: **{uploads}** (plus {reused} reused links).")
        lines.append(f"Waiting for a turn: **{waiting}**.")
        await interaction.followup.send(fit(lines), ephemeral=True)

    @app_commands.command(name="imgur-history")
    @app_commands.describe(member="Only this member's uploads")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_messages=True)
    @has_guild_permissions(manage_messages=True)
    async def imgur_history(
        self, interaction: discord.Interaction[RehostBot], member: discord.User | None = None
    ) -> None:
        """This server's recent uploads, newest first (moderators)."""
        guild_id = guild_of_interaction(interaction)
        await defer_privately(interaction)

        rehosts = await self.bot.services.ledger.recent_rehosts(
            guild_id=guild_id,
            owner_id=member.id if member is not None else None,
            limit=HISTORY_LENGTH,
        )
        if not rehosts:
            whose = f" by {member.mention}" if member is not None else ""
            text = f"No uploads{whose} on record in this server."
        else:
            text = fit(history_line(r) for r in rehosts)
        # The private "thinking…" message becomes the answer; nobody named in it is pinged.
        await interaction.edit_original_response(
            content=text, allowed_mentions=discord.AllowedMentions.none()
        )


async def setup(bot: RehostBot) -> None:
    await bot.add_cog(Status(bot))
