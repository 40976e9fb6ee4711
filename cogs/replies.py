"""The bot's answers: how links are written, progress shown, and replies taken back.

Not an extension; the features share it. A public message never carries a deletehash: only
links, sizes and kinds are written here.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Collection, Iterable, Sequence
from types import TracebackType
from typing import Any, Final

import discord

from bot.discord_bot import RehostBot
from bot.ledger import Ledger, LedgerError, Rehost, Upload
from bot.sources import ProgressCallback

log = logging.getLogger(__name__)

MB: Final = 1024 * 1024
REMOVED: Final = "*(removed from Imgur)*"
# Discord's limit on a message's content.
MAX_CONTENT: Final = 2000

# A long upload shows progress once this many bytes are involved, at most this often.
PROGRESS_FROM_BYTES = 8 * MB
PROGRESS_EVERY = 2.0

_LINK: Final = re.compile(r"https?://[^\s|<>]+")
_FORMAT_NAMES: Final = {"image/jpeg": "JPEG", "video/quicktime": "MOV"}


def size_label(size: int) -> str:
    """``1.2 MB`` or ``340 KB``."""
    if size >= MB // 10:
        return f"{size / MB:.1f} MB"
    return f"{max(1, round(size / 1024))} KB"


def kind_label(upload: Upload) -> str:
    """``PNG image``, ``animated GIF`` or ``MP4 video``."""
    name = _FORMAT_NAMES.get(upload.mime, upload.mime.rpartition("/")[2].upper())
    if upload.kind == "animated":
        return f"animated {name}"
    return f"{name} {upload.kind}"


def spoilered(link: str, spoiler: bool) -> str:
    """The link, hidden behind spoiler bars when what it shows was hidden too."""
    return f"||{link}||" if spoiler else link


def link_line(rehost: Rehost, *, spoiler: bool) -> str:
    """One line per upload: the link Discord unfurls, then its size and kind."""
    upload = rehost.upload
    link = spoilered(upload.link or "", spoiler)
    return f"{link} ({size_label(upload.size)} {kind_label(upload)})"


def fit(lines: Iterable[str], limit: int = MAX_CONTENT) -> str:
    """Join lines, leaving out whole lines (and saying so) rather than cutting one."""
    kept: list[str] = []
    used = 0
    all_lines = list(lines)
    for index, line in enumerate(all_lines):
        more = len(all_lines) - index
        reserve = len(f"\n…and {more} more") if index < len(all_lines) - 1 else 0
        if used + len(line) + 1 + reserve > limit:
            kept.append(f"…and {more} more")
            break
        kept.append(line)
        used += len(line) + 1
    return "\n".join(kept)


def links_in(text: str) -> list[str]:
    return _LINK.findall(text)


async def record_reply(
    ledger: Ledger, rehosts: Sequence[Rehost], *, channel_id: int, message_id: int
) -> None:
    """Remember the public message carrying these links, so a deletion can take them back."""
    try:
        await ledger.set_reply(
            [r.id for r in rehosts], channel_id=channel_id, message_id=message_id
        )
    except LedgerError:
        # The uploads are on record; only the later clean-up of this reply is lost.
        log.warning("could not record reply %d for %d rehosts", message_id, len(rehosts))


async def retract_replies(
    bot: RehostBot, rehosts: Sequence[Rehost], *, extra_links: Collection[str] = ()
) -> None:
    """Take the links of ``rehosts`` out of the bot's public replies that carried them."""
    by_reply: dict[tuple[int, int], set[str]] = {}
    for rehost in rehosts:
        if rehost.reply_channel_id is None or rehost.reply_message_id is None:
            continue
        links = by_reply.setdefault((rehost.reply_channel_id, rehost.reply_message_id), set())
        if rehost.upload.link:
            links.add(rehost.upload.link)
        links.update(extra_links)
    for (channel_id, message_id), links in by_reply.items():
        await retract_links(bot, channel_id, message_id, links)


async def retract_links(
    bot: RehostBot, channel_id: int, message_id: int, links: Collection[str]
) -> None:
    """Replace lines carrying ``links`` in one reply; delete the reply if no link is left."""
    reply = bot.get_partial_messageable(channel_id).get_partial_message(message_id)
    try:
        current = await reply.fetch()
    except discord.NotFound:
        return
    except discord.HTTPException as exc:
        log.warning("could not read reply %d in channel %d: %s", message_id, channel_id, exc)
        return

    lines = current.content.splitlines()
    kept = [REMOVED if any(link in links for link in links_in(line)) else line for line in lines]
    try:
        if not any(links_in(line) for line in kept):
            await reply.delete()
            log.info("deleted reply %d: none of its links is left", message_id)
        elif kept != lines:
            await reply.edit(content="\n".join(kept))
            log.info("edited reply %d: a link was removed", message_id)
    except discord.NotFound:
        return
    except discord.HTTPException as exc:
        log.warning("could not update reply %d in channel %d: %s", message_id, channel_id, exc)


class Progress:
    """Edits an interaction's answer with a percentage while a long upload runs.

    Used as ``async with Progress(...) as progress`` and handed to the pipeline as
    ``on_progress=progress.callback(key)``; one key per file when several run at once.
    """

    def __init__(self, interaction: discord.Interaction[Any], what: str) -> None:
        self._interaction = interaction
        self._what = what
        self._state: dict[object, tuple[str, int, int | None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._shown = ""

    def callback(self, key: object = None) -> ProgressCallback:
        def report(stage: str, done: int, total: int | None) -> None:
            self._state[key] = (stage, done, total)
            if self._task is None and max(done, total or 0) >= PROGRESS_FROM_BYTES:
                self._task = asyncio.get_running_loop().create_task(self._show())

        return report

    def text(self) -> str:
        fractions: list[float] = []
        moved = 0
        for stage, done, total in self._state.values():
            moved += done
            if total:
                share = min(done / total, 1.0) / 2
                fractions.append(share + (0.5 if stage == "upload" else 0.0))
        if fractions and len(fractions) == len(self._state):
            percent = int(100 * sum(fractions) / len(fractions))
            return f"Rehosting {self._what}… {percent}%"
        return f"Rehosting {self._what}… {moved / MB:.1f} MB so far"

    async def _show(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            text = self.text()
            if text == self._shown:
                continue
            try:
                await self._interaction.edit_original_response(content=text)
            except discord.HTTPException as exc:
                log.debug("could not show progress: %s", exc)
                return
            self._shown = text

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
            self._task = None

    async def __aenter__(self) -> Progress:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def summarise_failure(name: str, reason: str) -> str:
    """One short line for an item that could not be rehosted."""
    return f"⚠️ {discord.utils.escape_markdown(name)}: {reason}"
