"""The stand-in's world: users, guilds, roles, channels, messages and attachments."""

from __future__ import annotations

import datetime
import enum
import mimetypes
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .permissions import (
    ADMIN,
    MEMBER,
    MODERATOR,
    Overwrite,
    apply_overwrites,
    base_permissions,
)

if TYPE_CHECKING:
    from .interactions import InteractionHandle
    from .server import DiscordStandIn

DISCORD_EPOCH_MS = 1_420_070_400_000

#: Message flags used by the stand-in.
FLAG_SUPPRESS_EMBEDS = 1 << 2
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
FLAG_SUPPRESS_NOTIFICATIONS = 1 << 12

Payload = dict[str, Any]


def iso(timestamp: float) -> str:
    """Discord's ISO 8601 timestamp format."""
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat()


class ChannelType(enum.IntEnum):
    GUILD_TEXT = 0
    DM = 1
    GUILD_CATEGORY = 4
    GUILD_ANNOUNCEMENT = 5
    PUBLIC_THREAD = 11
    PRIVATE_THREAD = 12
    GUILD_FORUM = 15


class MessageType(enum.IntEnum):
    DEFAULT = 0
    REPLY = 19
    CHAT_INPUT_COMMAND = 20
    CONTEXT_MENU_COMMAND = 23


@dataclass(eq=False)
class User:
    """A Discord user; ``accepts_dms=False`` makes DMs from the bot fail with 50007."""

    id: int
    name: str
    bot: bool = False
    global_name: str | None = None
    accepts_dms: bool = True
    locale: str = "en-US"

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    def to_payload(self) -> Payload:
        return {
            "id": str(self.id),
            "username": self.name,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
        }


@dataclass(eq=False)
class Role:
    """A guild role; the @everyone role shares the guild's id."""

    id: int
    guild: Guild
    name: str
    permissions: int
    position: int = 0
    bot_id: int | None = None

    def to_payload(self) -> Payload:
        payload: Payload = {
            "id": str(self.id),
            "name": self.name,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": self.position,
            "permissions": str(self.permissions),
            "managed": self.bot_id is not None,
            "mentionable": False,
            "flags": 0,
        }
        if self.bot_id is not None:
            payload["tags"] = {"bot_id": str(self.bot_id)}
        return payload

    def set_permissions(self, permissions: int) -> None:
        """Change the role's permissions (dispatches GUILD_ROLE_UPDATE when connected)."""
        self.permissions = int(permissions)
        self.guild.standin._dispatch_world(
            "GUILD_ROLE_UPDATE", {"guild_id": str(self.guild.id), "role": self.to_payload()}
        )


@dataclass(eq=False)
class Member:
    """A user's membership in a guild."""

    guild: Guild
    user: User
    roles: list[Role] = field(default_factory=list)
    nick: str | None = None
    joined_at: float = 0.0

    @property
    def id(self) -> int:
        return self.user.id

    @property
    def name(self) -> str:
        return self.user.name

    @property
    def mention(self) -> str:
        return self.user.mention

    def guild_permissions(self) -> int:
        return base_permissions(
            is_owner=self.guild.owner_id == self.user.id,
            everyone=self.guild.everyone.permissions,
            role_permissions=[role.permissions for role in self.roles],
        )

    def permissions_in(self, channel: Channel) -> int:
        """Effective permissions in a channel (threads use their parent's overwrites)."""
        overwrites = channel.permission_source().overwrites.values()
        return apply_overwrites(
            self.guild_permissions(),
            guild_id=self.guild.id,
            member_id=self.user.id,
            role_ids=[role.id for role in self.roles],
            overwrites=overwrites,
        )

    def add_role(self, role: Role) -> None:
        """Give the member a role (dispatches GUILD_MEMBER_UPDATE when connected)."""
        if role not in self.roles:
            self.roles.append(role)
        self._updated()

    def remove_role(self, role: Role) -> None:
        if role in self.roles:
            self.roles.remove(role)
        self._updated()

    def _updated(self) -> None:
        payload = self.to_payload()
        payload["guild_id"] = str(self.guild.id)
        self.guild.standin._dispatch_world("GUILD_MEMBER_UPDATE", payload)

    def to_payload(self, *, include_user: bool = True, permissions: int | None = None) -> Payload:
        payload: Payload = {
            "roles": [str(role.id) for role in self.roles],
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "joined_at": iso(self.joined_at),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": None,
        }
        if include_user:
            payload["user"] = self.user.to_payload()
        if permissions is not None:
            payload["permissions"] = str(permissions)
        return payload


@dataclass(eq=False)
class Channel:
    """A guild channel, thread or DM channel."""

    id: int
    type: ChannelType
    name: str
    guild: Guild | None = None
    parent: Channel | None = None
    position: int = 0
    nsfw: bool = False
    topic: str | None = None
    recipient: User | None = None
    owner: User | None = None
    archived: bool = False
    locked: bool = False
    created_at: float = 0.0
    overwrites: dict[tuple[int, int], Overwrite] = field(default_factory=dict)
    last_message_id: int | None = None
    message_count: int = 0

    @property
    def mention(self) -> str:
        return f"<#{self.id}>"

    @property
    def is_thread(self) -> bool:
        return self.type in (ChannelType.PUBLIC_THREAD, ChannelType.PRIVATE_THREAD)

    @property
    def is_dm(self) -> bool:
        return self.type is ChannelType.DM

    @property
    def accepts_messages(self) -> bool:
        return self.type not in (ChannelType.GUILD_CATEGORY, ChannelType.GUILD_FORUM)

    def permission_source(self) -> Channel:
        if self.is_thread and self.parent is not None:
            return self.parent
        return self

    def set_permissions(
        self, target: Member | Role | User | Guild, *, allow: int = 0, deny: int = 0
    ) -> None:
        """Set a permission overwrite for a member, a role or @everyone (pass the guild)."""
        if self.is_thread:
            raise ValueError("threads take their permissions from their parent channel")
        key = (0, target.id) if isinstance(target, Guild | Role) else (1, target.id)
        self.overwrites[key] = Overwrite(key[1], key[0], int(allow), int(deny))

        if self.guild is not None:
            self.guild.standin._dispatch_world("CHANNEL_UPDATE", self.to_payload())

    def to_payload(self) -> Payload:
        if self.is_dm:
            assert self.recipient is not None
            return {
                "id": str(self.id),
                "type": int(self.type),
                "last_message_id": _opt_str(self.last_message_id),
                "recipients": [self.recipient.to_payload()],
                "flags": 0,
            }

        assert self.guild is not None
        payload: Payload = {
            "id": str(self.id),
            "type": int(self.type),
            "guild_id": str(self.guild.id),
            "name": self.name,
            "position": self.position,
            "parent_id": _opt_str(self.parent.id if self.parent else None),
            "nsfw": self.nsfw,
            "flags": 0,
            "rate_limit_per_user": 0,
            "last_message_id": _opt_str(self.last_message_id),
        }
        if self.is_thread:
            assert self.owner is not None
            payload.update(
                {
                    "owner_id": str(self.owner.id),
                    "message_count": self.message_count,
                    "total_message_sent": self.message_count,
                    "member_count": 1,
                    "applied_tags": [],
                    "thread_metadata": {
                        "archived": self.archived,
                        "auto_archive_duration": 1440,
                        "archive_timestamp": iso(self.created_at),
                        "locked": self.locked,
                        "create_timestamp": iso(self.created_at),
                        "invitable": self.type is ChannelType.PRIVATE_THREAD,
                    },
                }
            )
            return payload

        payload["permission_overwrites"] = [o.to_payload() for o in self.overwrites.values()]
        if self.type is not ChannelType.GUILD_CATEGORY:
            payload["topic"] = self.topic
            payload["default_auto_archive_duration"] = 1440
        if self.type is ChannelType.GUILD_FORUM:
            payload.update(
                {
                    "available_tags": [],
                    "default_reaction_emoji": None,
                    "default_thread_rate_limit_per_user": 0,
                    "default_sort_order": None,
                    "default_forum_layout": 0,
                }
            )
        return payload


def _opt_str(value: int | None) -> str | None:
    return None if value is None else str(value)


class Guild:
    """A guild (server). Build it before the bot connects; later changes are dispatched."""

    def __init__(
        self,
        standin: DiscordStandIn,
        *,
        guild_id: int,
        name: str,
        everyone_permissions: int,
        bot_permissions: int,
        filesize_limit: int,
        locale: str,
    ) -> None:
        self.standin = standin
        self.id = guild_id
        self.name = name
        self.filesize_limit = filesize_limit
        self.locale = locale
        self.created_at = standin.clock.time()
        self.roles: list[Role] = []
        self.members: dict[int, Member] = {}
        self.channels: list[Channel] = []
        self.threads: list[Channel] = []

        self.everyone = Role(guild_id, self, "@everyone", int(everyone_permissions))
        self.roles.append(self.everyone)

        owner_user = standin.add_user(f"{name} owner")
        self.owner_id = owner_user.id
        self.owner = self._join(owner_user, ADMIN, nick=None, roles=None, role_name="Admins")

        bot = standin.bot_user
        self.bot_role = Role(
            standin.snowflakes.next(), self, bot.name, int(bot_permissions), bot_id=bot.id
        )
        self.roles.append(self.bot_role)
        self.me = Member(self, bot, [self.bot_role], joined_at=standin.clock.time())
        self.members[bot.id] = self.me

    def __repr__(self) -> str:
        return f"<Guild id={self.id} name={self.name!r}>"

    # -- world building ---------------------------------------------------------------------

    def add_role(self, name: str, permissions: int = 0) -> Role:
        role = Role(self.standin.snowflakes.next(), self, name, int(permissions))
        role.position = len(self.roles)
        self.roles.append(role)
        self.standin._dispatch_world(
            "GUILD_ROLE_CREATE", {"guild_id": str(self.id), "role": role.to_payload()}
        )
        return role

    def add_member(
        self,
        user: User | str,
        permissions: int | None = None,
        *,
        roles: Iterable[Role] | None = None,
        nick: str | None = None,
    ) -> Member:
        """Add a member; ``permissions`` gives them a role with exactly those guild permissions.

        Use the presets in :mod:`.permissions` (``MEMBER``, ``MODERATOR``, ``ADMIN``). With
        neither ``permissions`` nor ``roles`` the member gets ``MEMBER``.
        """
        if isinstance(user, str):
            user = self.standin.add_user(user)
        if permissions is None and roles is None:
            permissions = MEMBER
        member = self._join(user, permissions, nick=nick, roles=roles, role_name=None)

        payload = member.to_payload()
        payload["guild_id"] = str(self.id)
        self.standin._dispatch_world("GUILD_MEMBER_ADD", payload)
        return member

    def _join(
        self,
        user: User,
        permissions: int | None,
        *,
        nick: str | None,
        roles: Iterable[Role] | None,
        role_name: str | None,
    ) -> Member:
        if user.id in self.members:
            raise ValueError(f"{user.name} is already a member of {self.name}")

        member_roles = list(roles or [])
        if permissions is not None:
            member_roles.append(self._role_for(int(permissions), role_name))
        member = Member(self, user, member_roles, nick, joined_at=self.standin.clock.time())
        self.members[user.id] = member
        return member

    def _role_for(self, permissions: int, name: str | None) -> Role:
        for role in self.roles[1:]:
            if role.permissions == permissions and role.bot_id is None:
                return role
        names = {MEMBER: "Members", MODERATOR: "Moderators", ADMIN: "Admins"}
        role = Role(
            self.standin.snowflakes.next(),
            self,
            name or names.get(permissions, f"perms-{permissions}"),
            permissions,
            position=len(self.roles),
        )
        self.roles.append(role)
        if self.id in self.standin.guilds:
            # Discord announces a role created in a guild the bot already knows; a bot that
            # missed it could not tell what a member holding it may do.
            self.standin._dispatch_world(
                "GUILD_ROLE_CREATE", {"guild_id": str(self.id), "role": role.to_payload()}
            )
        return role

    def set_bot_permissions(self, permissions: int) -> None:
        """Change the guild-level permissions of the bot's role."""
        self.bot_role.set_permissions(permissions)

    def add_category(self, name: str) -> Channel:
        return self._add_channel(ChannelType.GUILD_CATEGORY, name, nsfw=False, topic=None)

    def add_text_channel(
        self,
        name: str,
        *,
        nsfw: bool = False,
        topic: str | None = None,
        category: Channel | None = None,
    ) -> Channel:
        return self._add_channel(
            ChannelType.GUILD_TEXT, name, nsfw=nsfw, topic=topic, parent=category
        )

    def add_forum_channel(
        self, name: str, *, nsfw: bool = False, category: Channel | None = None
    ) -> Channel:
        return self._add_channel(
            ChannelType.GUILD_FORUM, name, nsfw=nsfw, topic=None, parent=category
        )

    def _add_channel(
        self,
        kind: ChannelType,
        name: str,
        *,
        nsfw: bool,
        topic: str | None,
        parent: Channel | None = None,
    ) -> Channel:
        channel = Channel(
            self.standin.snowflakes.next(),
            kind,
            name,
            guild=self,
            parent=parent,
            position=len(self.channels),
            nsfw=nsfw,
            topic=topic,
            created_at=self.standin.clock.time(),
        )
        self.channels.append(channel)
        self.standin.channels[channel.id] = channel
        self.standin._dispatch_world("CHANNEL_CREATE", channel.to_payload())
        return channel

    def add_thread(
        self,
        parent: Channel,
        name: str | None = None,
        *,
        private: bool = False,
        owner: Member | User | None = None,
        archived: bool = False,
    ) -> Channel:
        """Add a thread to a text channel, or a post to a forum channel."""
        if parent.guild is not self or parent.type not in (
            ChannelType.GUILD_TEXT,
            ChannelType.GUILD_ANNOUNCEMENT,
            ChannelType.GUILD_FORUM,
        ):
            raise ValueError("threads need a text or forum channel of this guild as parent")
        if private and parent.type is ChannelType.GUILD_FORUM:
            raise ValueError("forum posts cannot be private threads")

        owner_user = owner.user if isinstance(owner, Member) else (owner or self.owner.user)
        kind = ChannelType.PRIVATE_THREAD if private else ChannelType.PUBLIC_THREAD
        thread = Channel(
            self.standin.snowflakes.next(),
            kind,
            name or f"thread-{len(self.threads) + 1}",
            guild=self,
            parent=parent,
            owner=owner_user,
            archived=archived,
            created_at=self.standin.clock.time(),
        )
        self.threads.append(thread)
        self.standin.channels[thread.id] = thread

        payload = thread.to_payload()
        payload["newly_created"] = True
        self.standin._dispatch_world("THREAD_CREATE", payload)
        return thread

    # -- lookups -----------------------------------------------------------------------------

    def member(self, user: User | Member | int) -> Member:
        user_id = user if isinstance(user, int) else user.id
        return self.members[user_id]

    def channel(self, name: str) -> Channel:
        for channel in [*self.channels, *self.threads]:
            if channel.name == name:
                return channel
        raise KeyError(name)

    def to_payload(self, *, members: Iterable[Member] | None = None) -> Payload:
        """The GUILD_CREATE payload; ``members`` limits the members sent (no members intent)."""
        sent = list(self.members.values()) if members is None else list(members)
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "premium_progress_bar_enabled": False,
            "preferred_locale": self.locale,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "vanity_url_code": None,
            "application_id": None,
            "max_members": 500000,
            "max_video_channel_users": 25,
            "max_stage_video_channel_users": 50,
            "features": [],
            "roles": [role.to_payload() for role in self.roles],
            "emojis": [],
            "stickers": [],
            "joined_at": iso(self.me.joined_at),
            "large": False,
            "unavailable": False,
            "member_count": len(self.members),
            "members": [member.to_payload() for member in sent],
            "channels": [channel.to_payload() for channel in self.channels],
            "threads": [thread.to_payload() for thread in self.threads if not thread.archived],
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "incidents_data": None,
        }

    def partial_payload(self) -> Payload:
        """The short guild object Discord puts into interactions."""
        return {"id": str(self.id), "locale": self.locale, "features": []}


# -- attachments ------------------------------------------------------------------------------


@dataclass
class Attachment:
    """A file a simulated user attaches: bytes, or a path for large files (streamed by the CDN).

    ``content_type=None`` lets the stand-in guess from the file name, as Discord does;
    ``omit_content_type=True`` leaves it out of payloads (Discord sometimes does).
    ``spoiler=True`` prefixes the name with ``SPOILER_`` like Discord's client.
    """

    filename: str
    data: bytes | str | os.PathLike[str]
    content_type: str | None = None
    spoiler: bool = False
    description: str | None = None
    width: int | None = None
    height: int | None = None
    omit_content_type: bool = False


@dataclass(eq=False)
class StoredAttachment:
    """An attachment stored by the stand-in and served by its CDN."""

    id: int
    filename: str
    size: int
    content_type: str | None
    source: bytes | Path
    path: str
    ephemeral: bool = False
    description: str | None = None
    width: int | None = None
    height: int | None = None
    available: bool = True

    def read_bytes(self) -> bytes:
        """The stored bytes (reads the file for path-backed attachments)."""
        if isinstance(self.source, bytes):
            return self.source
        return self.source.read_bytes()

    def is_spoiler(self) -> bool:
        return self.filename.startswith("SPOILER_")

    def to_payload(self, url: str) -> Payload:
        payload: Payload = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": url,
            "proxy_url": url.replace("/attachments/", "/media/attachments/", 1),
            "flags": 0,
        }
        if self.content_type is not None:
            payload["content_type"] = self.content_type
        if self.description is not None:
            payload["description"] = self.description
        if self.width is not None and self.height is not None:
            payload["width"] = self.width
            payload["height"] = self.height
        if self.ephemeral:
            payload["ephemeral"] = True
        return payload


def guess_content_type(filename: str) -> str | None:
    guessed, _ = mimetypes.guess_type(filename)
    return guessed


def sniff_dimensions(head: bytes) -> tuple[int, int] | None:
    """Width and height of a PNG, GIF or JPEG from its first bytes, as Discord reports them."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
        width, height = struct.unpack(">II", head[16:24])
        return width, height
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        width, height = struct.unpack("<HH", head[6:10])
        return width, height
    if head.startswith(b"\xff\xd8"):
        return _jpeg_dimensions(head)
    return None


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    index = 2
    while index + 9 < len(data):
        if data[index] != 0xFF:
            return None
        marker = data[index + 1]
        length = struct.unpack(">H", data[index + 2 : index + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            height, width = struct.unpack(">HH", data[index + 5 : index + 9])
            return width, height
        index += 2 + length
    return None


# -- messages ---------------------------------------------------------------------------------


@dataclass(eq=False)
class Message:
    """A message as the stand-in stores it: posted by a user, the bot or an interaction."""

    id: int
    channel: Channel
    author: User
    content: str = ""
    created_at: float = 0.0
    attachments: list[StoredAttachment] = field(default_factory=list)
    embeds: list[Payload] = field(default_factory=list)
    components: list[Payload] = field(default_factory=list)
    flags: int = 0
    type: MessageType = MessageType.DEFAULT
    mentions: list[User] = field(default_factory=list)
    mention_everyone: bool = False
    reference: Message | None = None
    interaction: InteractionHandle | None = None
    webhook_id: int | None = None
    tts: bool = False
    nonce: str | None = None
    edited_at: float | None = None
    deleted: bool = False
    history: list[str] = field(default_factory=list)
    reactions: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        state = " deleted" if self.deleted else ""
        return f"<Message id={self.id} author={self.author.name!r} content={self.content!r}{state}>"

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def thinking(self) -> bool:
        """Whether this is a deferred interaction's "is thinking..." placeholder."""
        return bool(self.flags & FLAG_LOADING)

    @property
    def edited(self) -> bool:
        return self.edited_at is not None

    @property
    def guild(self) -> Guild | None:
        return self.channel.guild

    def mentions_user(self, user: User) -> bool:
        return any(mentioned.id == user.id for mentioned in self.mentions)
