"""Auto-rehost: every image and video posted in chosen channels gets a reply with permanent links.

``/imgur-auto add|remove|list`` chooses the channels (Manage Server). Threads and forum posts
under a chosen channel count too. Messages by bots, this one included, are ignored.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_bot import (
    PORTAL_HINT,
    RehostBot,
    ShuttingDown,
    UsageError,
    answer_privately,
    defer_privately,
    guild_of_interaction,
    has_guild_permissions,
)
from bot.errors import RehostError
from bot.ledger import Origin, Rehost
from cogs.discord_media import (
    MediaItem,
    Outcome,
    display_name,
    media_attachments,
    message_origin,
    rehost_items,
)
from cogs.replies import fit, link_line, record_reply, spoilered, summarise_failure
from cogs.source_deletion import take_down_copies

log = logging.getLogger(__name__)

_NSFW_CHANNELS = (
    discord.TextChannel,
    discord.Thread,
    discord.VoiceChannel,
    discord.StageChannel,
    discord.ForumChannel,
)


def _is_nsfw(channel: object) -> bool:
    return isinstance(channel, _NSFW_CHANNELS) and channel.is_nsfw()


class AutoRehost(commands.Cog):
    """Chooses the auto-rehost channels and rehosts what is posted in them."""

    auto = app_commands.Group(
        name="imgur-auto",
        description="Choose the channels whose images and videos are rehosted automatically",
        guild_only=True,
        default_permissions=discord.Permissions(manage_guild=True),
    )

    def __init__(self, bot: RehostBot) -> None:
        self.bot = bot

    # --- choosing channels ------------------------------------------------------------------

    @auto.command(name="add")
    @app_commands.describe(channel="The channel whose images and videos should be rehosted")
    @has_guild_permissions(manage_guild=True)
    async def add(
        self, interaction: discord.Interaction[RehostBot], channel: app_commands.AppCommandChannel
    ) -> None:
        """Rehost every image and video posted in a channel, its threads and forum posts."""
        guild_id = guild_of_interaction(interaction)
        ledger = self.bot.services.ledger
        if channel.type is discord.ChannelType.category:
            raise UsageError("Pick a channel, not a category.")
        await defer_privately(interaction)

        # The option's channel carries only id, name, type and permissions (not the NSFW
        # flag, whatever discord.py's default says): look the channel itself up.
        full = channel.resolve() or await channel.fetch()
        if _is_nsfw(full) and not (await ledger.guild_settings(guild_id)).allow_nsfw:
            raise UsageError(
                f"<#{channel.id}> is marked NSFW and Imgur bans explicit content, so it is not "
                "rehosted. A manager can allow it with `/imgur-settings allow-nsfw`."
            )

        added = await ledger.add_auto_channel(guild_id, channel.id, added_by=interaction.user.id)
        if added:
            text = (
                f"Auto-rehost is on in <#{channel.id}>: images and videos posted there get "
                "permanent links."
            )
        else:
            text = f"Auto-rehost was already on in <#{channel.id}>."
        if not self.bot.reads_message_content:
            text += (
                "\n⚠️ It is paused: the bot's owner must switch on the Message Content intent "
                f"({PORTAL_HINT}) and restart the bot."
            )
        await answer_privately(interaction, text)

    @auto.command(name="remove")
    @app_commands.describe(channel="The channel to stop rehosting")
    @has_guild_permissions(manage_guild=True)
    async def remove(
        self, interaction: discord.Interaction[RehostBot], channel: app_commands.AppCommandChannel
    ) -> None:
        """Stop rehosting a channel automatically."""
        guild_id = guild_of_interaction(interaction)
        await defer_privately(interaction)

        removed = await self.bot.services.ledger.remove_auto_channel(guild_id, channel.id)
        if removed:
            text = f"Auto-rehost is off in <#{channel.id}>."
        else:
            text = f"Auto-rehost was not on in <#{channel.id}>."
        await answer_privately(interaction, text)

    @auto.command(name="list")
    @has_guild_permissions(manage_guild=True)
    async def list_channels(self, interaction: discord.Interaction[RehostBot]) -> None:
        """Show the channels rehosted automatically."""
        guild_id = guild_of_interaction(interaction)
        await defer_privately(interaction)

        channels = await self.bot.services.ledger.auto_channels(guild_id)
        if not channels:
            text = "No channel is rehosted automatically. Add one with `/imgur-auto add`."
        else:
            text = fit(["Rehosted automatically:", *(f"• <#{c}>" for c in channels)])
        await answer_privately(interaction, text)

    @commands.Cog.listener()
    async def on_guild_channel_delete(self, channel: discord.abc.GuildChannel) -> None:
        try:
            await self.bot.services.ledger.remove_auto_channel(channel.guild.id, channel.id)
        except RehostError as exc:
            log.warning("could not forget deleted channel %d: %s", channel.id, exc)

    # --- rehosting what is posted -----------------------------------------------------------

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        # Without the Message Content intent auto-rehost is off (as the owner was told), even
        # for the few messages that still carry their files: those that mention the bot.
        if self.bot.closing or not self.bot.reads_message_content:
            return
        try:
            await rehost_posted(self.bot, message)
        except ShuttingDown:
            return
        except RehostError as exc:
            log.warning("auto-rehost of message %d failed: %s", message.id, exc)


async def rehost_posted(
    bot: RehostBot, message: discord.Message, *, recorded: Sequence[Rehost] = ()
) -> bool:
    """Auto-rehost a message posted in a chosen channel; False if it is not one to rehost.

    ``recorded`` are rehosts of the message's attachments already on record (made before a
    restart cut the work short): those attachments are not rehosted again, and the reply
    carries their links with the others.

    Raises:
        ShuttingDown: the bot is stopping.
        RehostError: the ledger could not be read.
    """
    if message.guild is None or message.author.bot:
        return False
    items = media_attachments(message)
    if not items:
        return False
    guild_id = message.guild.id
    if not await _wanted_in(bot, guild_id, message.channel):
        return False

    async with bot.working():
        await _rehost(bot, message, guild_id, items, recorded)
    return True


async def _wanted_in(bot: RehostBot, guild_id: int, channel: object) -> bool:
    ledger = bot.services.ledger
    channel_ids = [getattr(channel, "id", 0)]
    if isinstance(channel, discord.Thread):
        channel_ids.append(channel.parent_id)
    if not any([await ledger.is_auto_channel(guild_id, c) for c in channel_ids]):
        return False
    if _is_nsfw(channel) and not (await ledger.guild_settings(guild_id)).allow_nsfw:
        log.info("not rehosting in NSFW channel %d of guild %d", channel_ids[0], guild_id)
        return False
    return True


async def _rehost(
    bot: RehostBot,
    message: discord.Message,
    guild_id: int,
    items: list[MediaItem],
    recorded: Sequence[Rehost],
) -> None:
    known: dict[int | None, Rehost] = {
        r.origin.attachment_id: r for r in recorded if r.origin.attachment_id is not None
    }
    fresh = iter(
        await rehost_items(
            bot,
            message,
            [item for item in items if item.attachment_id not in known],
            lambda item: message_origin(message, item, requester_id=message.author.id, auto=True),
        )
    )
    outcomes = [
        Outcome(item, rehost=known[item.attachment_id])
        if item.attachment_id in known
        else next(fresh)
        for item in items
    ]
    rehosts = [o.rehost for o in outcomes if o.rehost is not None]

    if message.id in bot.deleted_messages:
        # The poster deleted the message while its files were on their way.
        await take_down_copies(bot, guild_id, [message.id])
        return

    lines: list[str] = []
    album_link = await _album(bot, message, guild_id, rehosts)
    if album_link is not None:
        lines.append(f"Album: {spoilered(album_link, any(i.spoiler for i in items))}")
    lines += [link_line(o.rehost, spoiler=o.item.spoiler) for o in outcomes if o.rehost]
    lines += [summarise_failure(display_name(o.item), o.failure) for o in outcomes if o.failure]

    reply = await _reply(bot, message, guild_id, fit(lines), rehosts)

    if message.id in bot.deleted_messages and await _copies_follow_source(bot, guild_id):
        # Deleted while the reply was on its way: the deletion found no reply to take back.
        await take_down_copies(bot, guild_id, [message.id])
        if reply is not None:
            with contextlib.suppress(discord.HTTPException):
                await reply.delete()


async def _copies_follow_source(bot: RehostBot, guild_id: int) -> bool:
    return (await bot.services.ledger.guild_settings(guild_id)).delete_with_source


async def _reply(
    bot: RehostBot, message: discord.Message, guild_id: int, text: str, rehosts: list[Rehost]
) -> discord.Message | None:
    """Post the links under the message and remember the reply; None if Discord refused."""
    try:
        reply = await message.reply(text, mention_author=False)
    except discord.Forbidden:
        log.warning(
            "may not reply in channel %d of guild %d; %d uploads stay on record",
            message.channel.id,
            guild_id,
            len(rehosts),
        )
        return None
    except discord.HTTPException as exc:
        log.warning("could not reply to message %d: %s", message.id, exc)
        return None

    await record_reply(
        bot.services.ledger, rehosts, channel_id=reply.channel.id, message_id=reply.id
    )
    return reply


async def _album(
    bot: RehostBot, message: discord.Message, guild_id: int, rehosts: list[Rehost]
) -> str | None:
    """An album of the uploads when there are several; None if not (or if it failed)."""
    unique = list({r.upload.id: r for r in rehosts}.values())
    if len(unique) < 2:
        return None
    origin = Origin(
        door="discord",
        guild_id=guild_id,
        channel_id=message.channel.id,
        message_id=message.id,
        owner_id=message.author.id,
        requester_id=message.author.id,
        auto=True,
    )
    try:
        album = await bot.services.pipeline.create_album(unique, origin)
    except RehostError as exc:
        log.warning("could not make an album for message %d: %s", message.id, exc)
        return None
    return album.link


async def setup(bot: RehostBot) -> None:
    await bot.add_cog(AutoRehost(bot))
