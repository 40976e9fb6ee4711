"""After a crash: the uploads the last process left unfinished are redone, or owned up to.

At start-up ``Pipeline.reconcile()`` closes every upload a crash left pending (whether Imgur
received it is unknown) and lists it in ``pipeline.interrupted``. Once Discord is connected,
this cog acts on those that came from Discord:

- an auto-rehosted message is fetched again (a fresh fetch carries fresh attachment links) and
  rehosted through auto-rehost's own path, if it still exists and its channel is still chosen;
- a person who asked with ``/imgur`` or the menu, whose interaction died with the process, is
  told in the channel that the upload was cut off and asked to try again.

Work is grouped (one action per source message, one per person and channel) and bounded.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import discord
from discord.ext import commands

from bot.discord_bot import RehostBot, ShuttingDown
from bot.errors import RehostError
from bot.ledger import Origin, Upload
from cogs.auto_rehost import rehost_posted
from cogs.source_deletion import take_down_copies

log = logging.getLogger(__name__)

# At most this many actions (a message rehosted again, a person told) after one restart.
MAX_ACTIONS: Final = 50
# File names shown in one notice, and their length.
NAMES_SHOWN: Final = 3
NAME_LENGTH: Final = 80


@dataclass
class Interrupted:
    """Uploads cut off by the restart that one action settles: one message, or one person."""

    auto: bool
    guild_id: int | None
    channel_id: int
    # The source message (auto-rehost) or the person who asked (``/imgur``, the menu).
    target_id: int
    origins: list[Origin] = field(default_factory=list)


def group_interrupted(interrupted: Sequence[tuple[Upload, Origin]]) -> list[Interrupted]:
    """Discord's interrupted uploads, one group per source message or per person and channel."""
    groups: dict[tuple[bool, int, int], Interrupted] = {}
    for upload, origin in interrupted:
        if origin.door != "discord":
            log.debug(
                "interrupted upload %d came from the %s door; left to it", upload.id, origin.door
            )
            continue
        if origin.channel_id is None:
            log.info("interrupted upload %d has no channel on record; nobody to tell", upload.id)
            continue
        target = origin.message_id if origin.auto else origin.requester_id
        if target is None or (origin.auto and origin.guild_id is None):
            log.info("interrupted upload %d names no message or person; left alone", upload.id)
            continue
        key = (origin.auto, origin.channel_id, target)
        group = groups.setdefault(
            key, Interrupted(origin.auto, origin.guild_id, origin.channel_id, target)
        )
        group.origins.append(origin)
    return list(groups.values())


def _shown_name(filename: str | None) -> str:
    if not filename:
        return "a file"
    # In a code span nothing is formatted, linked or mentioned; only a backtick could end it.
    name = " ".join(filename.replace("`", "'").split())[:NAME_LENGTH]
    return f"`{name}`"


def interrupted_notice(requester_id: int, filenames: Sequence[str | None]) -> str:
    """One short sentence for a person whose upload the restart cut off."""
    names = [_shown_name(name) for name in filenames]
    if len(names) == 1:
        what, finished = names[0], "it was"
    elif len(names) <= NAMES_SHOWN:
        what, finished = ", ".join(names[:-1]) + " and " + names[-1], "they were"
    else:
        shown = ", ".join(names[: NAMES_SHOWN - 1])
        what, finished = f"{shown} and {len(names) - NAMES_SHOWN + 1} more files", "they were"
    return (
        f"<@{requester_id}> I restarted while uploading {what}, so {finished} not finished; "
        "please try again."
    )


class Recovery(commands.Cog):
    """Acts once, on the first ready, on what the previous process left unfinished."""

    def __init__(self, bot: RehostBot) -> None:
        self.bot = bot
        self._started = False

    @commands.Cog.listener()
    async def on_ready(self) -> None:
        # Discord sends ready again after a reconnect that could not resume: act only once.
        if self._started:
            return
        self._started = True
        await self.recover(self.bot.services.pipeline.interrupted)

    async def recover(self, interrupted: Sequence[tuple[Upload, Origin]]) -> None:
        """Redo or own up to each group of interrupted uploads; never raises."""
        groups = group_interrupted(interrupted)
        if not groups:
            return
        log.info("recovering %d uploads interrupted by the restart", len(interrupted))

        for left in groups[MAX_ACTIONS:]:
            log.info(
                "not recovered (over %d actions): %d uploads for %s %d in channel %d",
                MAX_ACTIONS,
                len(left.origins),
                "message" if left.auto else "member",
                left.target_id,
                left.channel_id,
            )
        if len(groups) > MAX_ACTIONS:
            log.warning(
                "%d groups of interrupted uploads left alone: at most %d are acted on",
                len(groups) - MAX_ACTIONS,
                MAX_ACTIONS,
            )

        for group in groups[:MAX_ACTIONS]:
            if self.bot.closing:
                log.info("stopping: the rest of the interrupted uploads are left alone")
                return
            try:
                if group.auto:
                    await self._rehost_again(group)
                else:
                    await self._tell_requester(group)
            except ShuttingDown:
                return
            except (RehostError, discord.HTTPException) as exc:
                log.warning(
                    "could not recover %d interrupted uploads in channel %d: %s",
                    len(group.origins),
                    group.channel_id,
                    exc,
                )
            except Exception:
                log.exception(
                    "recovering interrupted uploads in channel %d failed unexpectedly",
                    group.channel_id,
                )

    async def _rehost_again(self, group: Interrupted) -> None:
        """Fetch the source message again and auto-rehost it, keeping what was done before."""
        message_id = group.target_id
        if not self.bot.reads_message_content:
            log.warning(
                "message %d was being auto-rehosted when the bot stopped; without the Message "
                "Content intent its attachments cannot be read again",
                message_id,
            )
            return
        guild_id = group.guild_id
        assert guild_id is not None  # grouping keeps only auto-rehosts with a guild
        earlier = [
            r
            for r in await self.bot.services.ledger.rehosts_for_messages([message_id])
            if r.origin.door == "discord" and r.origin.auto and r.origin.guild_id == guild_id
        ]

        message = await self._source_message(group.channel_id, message_id)
        if message is None:
            log.info("message %d, cut off by the restart, is gone; nothing to redo", message_id)
            if earlier:
                # Its other files were rehosted but never announced; the source went meanwhile.
                async with self.bot.working():
                    await take_down_copies(self.bot, guild_id, [message_id])
            return
        if any(r.reply_message_id is not None for r in earlier):
            log.info("message %d was answered before the restart; nothing to redo", message_id)
            return

        if await rehost_posted(self.bot, message, recorded=earlier):
            log.info("auto-rehost of message %d redone after the restart", message_id)
        else:
            log.info(
                "message %d is no longer one to auto-rehost (channel off or no media)", message_id
            )

    async def _source_message(self, channel_id: int, message_id: int) -> discord.Message | None:
        """The message as Discord has it now; None if it or its channel is gone."""
        try:
            channel = self.bot.get_channel(channel_id) or await self.bot.fetch_channel(channel_id)
            if not isinstance(channel, discord.abc.Messageable):
                return None
            return await channel.fetch_message(message_id)
        except discord.NotFound:
            return None

    async def _tell_requester(self, group: Interrupted) -> None:
        """Post one short message in the channel, mentioning only the person who asked."""
        requester_id = group.target_id
        text = interrupted_notice(requester_id, [o.filename for o in group.origins])
        channel = self.bot.get_partial_messageable(group.channel_id, guild_id=group.guild_id)
        await channel.send(
            text,
            allowed_mentions=discord.AllowedMentions(
                everyone=False,
                roles=False,
                replied_user=False,
                users=[discord.Object(requester_id)],
            ),
        )
        log.info(
            "told member %d in channel %d that %d uploads were cut off by the restart",
            requester_id,
            group.channel_id,
            len(group.origins),
        )


async def setup(bot: RehostBot) -> None:
    await bot.add_cog(Recovery(bot))
