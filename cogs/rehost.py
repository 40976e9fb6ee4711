"""``/imgur``: give one image or video a permanent link, posted for the channel to see."""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_bot import RehostBot, UsageError, defer_publicly, refuse_when_held_back
from bot.ledger import Origin
from cogs.replies import Progress, link_line, record_reply

log = logging.getLogger(__name__)


def unwrap_link(text: str) -> tuple[str | None, bool]:
    """A link as typed in Discord, without its ``<…>`` (no preview) and ``||…||`` (spoiler).

    Returns the link (None when nothing is left) and whether it was spoilered.
    """
    text = text.strip()
    spoiler = len(text) > 4 and text.startswith("||") and text.endswith("||")
    if spoiler:
        text = text[2:-2].strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    return text or None, spoiler


class RehostCommand(commands.Cog):
    """The ``/imgur`` command."""

    def __init__(self, bot: RehostBot) -> None:
        self.bot = bot

    @app_commands.command(name="imgur")
    @app_commands.describe(
        image="The image or video to upload",
        url="Or a link to an image or video",
        title="A title shown on Imgur (optional)",
    )
    async def imgur(
        self,
        interaction: discord.Interaction[RehostBot],
        image: discord.Attachment | None = None,
        url: str | None = None,
        title: app_commands.Range[str, 1, 128] | None = None,
    ) -> None:
        """Give an image or video a permanent link on Imgur."""
        url, hidden = unwrap_link(url) if url else (None, False)
        if (image is None) == (url is None):
            raise UsageError("Give me an image or a url: one of the two.")

        refuse_when_held_back(self.bot)

        pipeline = self.bot.services.pipeline
        if image is not None:
            source = pipeline.url_source(
                image.url, filename=image.filename, declared_size=image.size, from_discord=True
            )
            spoiler = image.is_spoiler()
        else:
            assert url is not None
            source = pipeline.url_source(url)
            spoiler = hidden
        origin = Origin(
            door="discord",
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            attachment_id=image.id if image is not None else None,
            owner_id=interaction.user.id,
            requester_id=interaction.user.id,
            filename=source.filename,
            title=title,
        )

        async with self.bot.working():
            await defer_publicly(interaction)
            async with Progress(interaction, discord.utils.escape_markdown(source.filename)) as p:
                rehost = await pipeline.rehost(source, origin, on_progress=p.callback())

            answer = await interaction.edit_original_response(
                content=link_line(rehost, spoiler=spoiler)
            )
            await record_reply(
                self.bot.services.ledger,
                [rehost],
                channel_id=answer.channel.id,
                message_id=answer.id,
            )


async def setup(bot: RehostBot) -> None:
    await bot.add_cog(RehostCommand(bot))
