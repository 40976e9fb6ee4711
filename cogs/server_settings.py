"""``/imgur-settings``: the server's switches (Manage Server)."""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_bot import (
    RehostBot,
    answer_privately,
    defer_privately,
    guild_of_interaction,
    has_guild_permissions,
)
from bot.ledger import GuildSettings

log = logging.getLogger(__name__)


def describe_settings(settings: GuildSettings) -> str:
    if settings.delete_with_source:
        source = "**on**: when a poster deletes their message, its copies leave Imgur too."
    else:
        source = "**off**: copies stay on Imgur when the message is deleted."
    nsfw = "**allowed**" if settings.allow_nsfw else "**refused** (Imgur bans explicit content)"
    return f"Delete with source: {source}\nAuto-rehost in NSFW channels: {nsfw}."


class ServerSettings(commands.Cog):
    """The ``/imgur-settings`` commands."""

    settings = app_commands.Group(
        name="imgur-settings",
        description="The server's Imgur settings",
        guild_only=True,
        default_permissions=discord.Permissions(manage_guild=True),
    )

    def __init__(self, bot: RehostBot) -> None:
        self.bot = bot

    @settings.command(name="show")
    @has_guild_permissions(manage_guild=True)
    async def show(self, interaction: discord.Interaction[RehostBot]) -> None:
        """Show this server's settings."""
        guild_id = guild_of_interaction(interaction)
        await defer_privately(interaction)

        current = await self.bot.services.ledger.guild_settings(guild_id)
        await answer_privately(interaction, describe_settings(current))

    @settings.command(name="delete-with-source")
    @app_commands.describe(enabled="True: copies go when the message goes. False: keep them.")
    @has_guild_permissions(manage_guild=True)
    async def delete_with_source(
        self, interaction: discord.Interaction[RehostBot], enabled: bool
    ) -> None:
        """Choose whether deleting a message deletes its copies on Imgur (keep for evidence)."""
        guild_id = guild_of_interaction(interaction)
        await defer_privately(interaction)

        updated = await self.bot.services.ledger.update_guild_settings(
            guild_id, delete_with_source=enabled
        )
        await answer_privately(interaction, describe_settings(updated))

    @settings.command(name="allow-nsfw")
    @app_commands.describe(
        enabled="True: auto-rehost NSFW channels too. Imgur bans explicit content."
    )
    @has_guild_permissions(manage_guild=True)
    async def allow_nsfw(self, interaction: discord.Interaction[RehostBot], enabled: bool) -> None:
        """Choose whether channels marked NSFW may be auto-rehosted."""
        guild_id = guild_of_interaction(interaction)
        await defer_privately(interaction)

        updated = await self.bot.services.ledger.update_guild_settings(guild_id, allow_nsfw=enabled)
        await answer_privately(interaction, describe_settings(updated))


async def setup(bot: RehostBot) -> None:
    await bot.add_cog(ServerSettings(bot))
