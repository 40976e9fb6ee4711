"""The media in a Discord message, and rehosting it through the pipeline.

Not an extension; the menu and auto-rehost share it. Attachment links are signed and die
about a day after they were issued, or minutes after the message is deleted: they are
downloaded as soon as the event arrives, and a failed download is retried once with the
fresh links of a fresh fetch of the message.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import discord

from bot.discord_bot import RehostBot
from bot.errors import RehostError
from bot.ledger import Origin, Rehost
from bot.sources import BlockedAddress, ProgressCallback, SourceError

log = logging.getLogger(__name__)

MEDIA_PREFIXES: Final = ("image/", "video/")
_SPOILER: Final = re.compile(r"\|\|(.+?)\|\|", re.DOTALL)
SOMETHING_WENT_WRONG: Final = "something went wrong on my side."


@dataclass(frozen=True)
class MediaItem:
    """One image or video in a message: an attachment, or an image an embed shows."""

    url: str
    filename: str
    size: int | None = None
    attachment_id: int | None = None
    spoiler: bool = False


@dataclass(frozen=True)
class Outcome:
    """What became of one item: a rehost, or one short sentence saying why not."""

    item: MediaItem
    rehost: Rehost | None = None
    failure: str | None = None
    error: RehostError | None = None


def is_media(attachment: discord.Attachment) -> bool:
    """Images and videos, and files Discord could not type (the pipeline sniffs the bytes)."""
    content_type = attachment.content_type
    return content_type is None or content_type.startswith(MEDIA_PREFIXES)


def media_attachments(message: discord.Message) -> list[MediaItem]:
    return [
        MediaItem(
            url=attachment.url,
            filename=attachment.filename,
            size=attachment.size,
            attachment_id=attachment.id,
            spoiler=attachment.is_spoiler(),
        )
        for attachment in message.attachments
        if is_media(attachment)
    ]


def media_embeds(message: discord.Message) -> list[MediaItem]:
    """Images and videos shown by the message's embeds (links to images, GIF services)."""
    hidden = " ".join(_SPOILER.findall(message.content))
    items: list[MediaItem] = []
    seen: set[str] = set()
    for embed in message.embeds:
        if embed.type == "image":
            url = embed.thumbnail.url or embed.url
        elif embed.type == "gifv":
            url = embed.video.url
        else:
            url = embed.image.url
        if not url or url in seen:
            continue
        seen.add(url)
        spoiler = bool(embed.url and embed.url in hidden) or url in hidden
        items.append(MediaItem(url=url, filename="", spoiler=spoiler))
    return items


def message_origin(
    message: discord.Message, item: MediaItem, *, requester_id: int, auto: bool
) -> Origin:
    """The poster owns the copy; ``requester_id`` is who asked for it."""
    return Origin(
        door="discord",
        guild_id=message.guild.id if message.guild else None,
        channel_id=message.channel.id,
        message_id=message.id,
        attachment_id=item.attachment_id,
        owner_id=message.author.id,
        requester_id=requester_id,
        filename=item.filename or None,
        auto=auto,
    )


async def rehost_item(
    bot: RehostBot,
    message: discord.Message,
    item: MediaItem,
    origin: Origin,
    on_progress: ProgressCallback | None = None,
) -> Rehost:
    """Rehost one item; an attachment that cannot be fetched is tried once more, fresh."""
    pipeline = bot.services.pipeline
    attachment = item.attachment_id is not None  # Discord issued the link, not a person
    source = pipeline.url_source(
        item.url, filename=item.filename, declared_size=item.size, from_discord=attachment
    )
    try:
        return await pipeline.rehost(source, origin, on_progress=on_progress)
    except BlockedAddress:
        raise
    except SourceError:
        if item.attachment_id is None:
            raise
        fresh = await _fresh_url(message, item.attachment_id)
        if fresh is None:
            raise
        log.info(
            "attachment %d of message %d failed to download; retrying with a fresh link",
            item.attachment_id,
            message.id,
        )

    source = pipeline.url_source(
        fresh, filename=item.filename, declared_size=item.size, from_discord=True
    )
    return await pipeline.rehost(source, origin, on_progress=on_progress)


async def _fresh_url(message: discord.Message, attachment_id: int) -> str | None:
    try:
        again = await message.fetch()
    except discord.HTTPException as exc:
        log.info("could not fetch message %d again: %s", message.id, exc)
        return None
    for attachment in again.attachments:
        if attachment.id == attachment_id:
            return attachment.url
    return None


async def rehost_items(
    bot: RehostBot,
    message: discord.Message,
    items: Sequence[MediaItem],
    origin_for: Callable[[MediaItem], Origin],
    progress_for: Callable[[MediaItem], ProgressCallback | None] = lambda _: None,
) -> list[Outcome]:
    """Rehost the items concurrently; one outcome per item, in order."""

    async def one(item: MediaItem) -> Outcome:
        try:
            rehost = await rehost_item(bot, message, item, origin_for(item), progress_for(item))
        except RehostError as exc:
            return Outcome(item, failure=exc.user_message, error=exc)
        except Exception:
            log.exception("rehosting an item of message %d failed unexpectedly", message.id)
            return Outcome(item, failure=SOMETHING_WENT_WRONG)
        return Outcome(item, rehost=rehost)

    return list(await asyncio.gather(*(one(item) for item in items)))


def display_name(item: MediaItem) -> str:
    """A name for a failure line: the file name, or the link of an embed."""
    return item.filename or item.url
