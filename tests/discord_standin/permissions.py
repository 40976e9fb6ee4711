"""Discord permission bits, common permission sets and Discord's resolution algorithm."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass


class Permission(enum.IntFlag):
    """Permission bits as documented by Discord (API v10)."""

    CREATE_INSTANT_INVITE = 1 << 0
    KICK_MEMBERS = 1 << 1
    BAN_MEMBERS = 1 << 2
    ADMINISTRATOR = 1 << 3
    MANAGE_CHANNELS = 1 << 4
    MANAGE_GUILD = 1 << 5
    ADD_REACTIONS = 1 << 6
    VIEW_AUDIT_LOG = 1 << 7
    PRIORITY_SPEAKER = 1 << 8
    STREAM = 1 << 9
    VIEW_CHANNEL = 1 << 10
    SEND_MESSAGES = 1 << 11
    SEND_TTS_MESSAGES = 1 << 12
    MANAGE_MESSAGES = 1 << 13
    EMBED_LINKS = 1 << 14
    ATTACH_FILES = 1 << 15
    READ_MESSAGE_HISTORY = 1 << 16
    MENTION_EVERYONE = 1 << 17
    USE_EXTERNAL_EMOJIS = 1 << 18
    VIEW_GUILD_INSIGHTS = 1 << 19
    CONNECT = 1 << 20
    SPEAK = 1 << 21
    MUTE_MEMBERS = 1 << 22
    DEAFEN_MEMBERS = 1 << 23
    MOVE_MEMBERS = 1 << 24
    USE_VAD = 1 << 25
    CHANGE_NICKNAME = 1 << 26
    MANAGE_NICKNAMES = 1 << 27
    MANAGE_ROLES = 1 << 28
    MANAGE_WEBHOOKS = 1 << 29
    MANAGE_GUILD_EXPRESSIONS = 1 << 30
    USE_APPLICATION_COMMANDS = 1 << 31
    REQUEST_TO_SPEAK = 1 << 32
    MANAGE_EVENTS = 1 << 33
    MANAGE_THREADS = 1 << 34
    CREATE_PUBLIC_THREADS = 1 << 35
    CREATE_PRIVATE_THREADS = 1 << 36
    USE_EXTERNAL_STICKERS = 1 << 37
    SEND_MESSAGES_IN_THREADS = 1 << 38
    USE_EMBEDDED_ACTIVITIES = 1 << 39
    MODERATE_MEMBERS = 1 << 40
    VIEW_CREATOR_MONETIZATION_ANALYTICS = 1 << 41
    USE_SOUNDBOARD = 1 << 42
    CREATE_GUILD_EXPRESSIONS = 1 << 43
    CREATE_EVENTS = 1 << 44
    USE_EXTERNAL_SOUNDS = 1 << 45
    SEND_VOICE_MESSAGES = 1 << 46
    SEND_POLLS = 1 << 49
    USE_EXTERNAL_APPS = 1 << 50
    PIN_MESSAGES = 1 << 51


ALL_PERMISSIONS = 0
for _bit in Permission:
    ALL_PERMISSIONS |= _bit.value

P = Permission

#: What a regular member of a typical server may do.
MEMBER = int(
    P.VIEW_CHANNEL
    | P.SEND_MESSAGES
    | P.SEND_MESSAGES_IN_THREADS
    | P.CREATE_PUBLIC_THREADS
    | P.READ_MESSAGE_HISTORY
    | P.ADD_REACTIONS
    | P.EMBED_LINKS
    | P.ATTACH_FILES
    | P.USE_EXTERNAL_EMOJIS
    | P.USE_APPLICATION_COMMANDS
    | P.CHANGE_NICKNAME
    | P.CONNECT
    | P.SPEAK
)

#: A member who may also delete other people's messages and moderate threads.
MODERATOR = MEMBER | int(P.MANAGE_MESSAGES | P.MANAGE_THREADS | P.MODERATE_MEMBERS | P.KICK_MEMBERS)

#: A server administrator.
ADMIN = MODERATOR | int(P.ADMINISTRATOR | P.MANAGE_GUILD | P.MANAGE_CHANNELS | P.MANAGE_ROLES)

#: What a freshly invited bot usually gets: read and write messages, files and embeds.
BOT_DEFAULT = int(
    P.VIEW_CHANNEL
    | P.SEND_MESSAGES
    | P.SEND_MESSAGES_IN_THREADS
    | P.READ_MESSAGE_HISTORY
    | P.ADD_REACTIONS
    | P.EMBED_LINKS
    | P.ATTACH_FILES
    | P.USE_EXTERNAL_EMOJIS
    | P.USE_APPLICATION_COMMANDS
)

#: Permissions Discord grants in a DM channel.
DM_PERMISSIONS = int(
    P.VIEW_CHANNEL
    | P.SEND_MESSAGES
    | P.READ_MESSAGE_HISTORY
    | P.ADD_REACTIONS
    | P.EMBED_LINKS
    | P.ATTACH_FILES
    | P.USE_EXTERNAL_EMOJIS
    | P.USE_APPLICATION_COMMANDS
)


@dataclass
class Overwrite:
    """A channel permission overwrite: ``kind`` 0 targets a role, 1 a member."""

    target_id: int
    kind: int
    allow: int = 0
    deny: int = 0

    def to_payload(self) -> dict[str, object]:
        return {
            "id": str(self.target_id),
            "type": self.kind,
            "allow": str(self.allow),
            "deny": str(self.deny),
        }


def base_permissions(*, is_owner: bool, everyone: int, role_permissions: Iterable[int]) -> int:
    """Guild-level permissions: @everyone plus every role; owners and admins get everything."""
    if is_owner:
        return ALL_PERMISSIONS

    value = everyone
    for permissions in role_permissions:
        value |= permissions

    if value & P.ADMINISTRATOR:
        return ALL_PERMISSIONS
    return value


def apply_overwrites(
    base: int,
    *,
    guild_id: int,
    member_id: int,
    role_ids: Iterable[int],
    overwrites: Iterable[Overwrite],
) -> int:
    """Apply channel overwrites in Discord's order: @everyone, roles combined, then the member."""
    if base & P.ADMINISTRATOR or base == ALL_PERMISSIONS:
        return ALL_PERMISSIONS

    by_target = {(o.kind, o.target_id): o for o in overwrites}
    value = base

    everyone = by_target.get((0, guild_id))
    if everyone is not None:
        value = (value & ~everyone.deny) | everyone.allow

    allow = deny = 0
    for role_id in role_ids:
        role_overwrite = by_target.get((0, role_id))
        if role_overwrite is not None:
            allow |= role_overwrite.allow
            deny |= role_overwrite.deny
    value = (value & ~deny) | allow

    member = by_target.get((1, member_id))
    if member is not None:
        value = (value & ~member.deny) | member.allow

    # Without VIEW_CHANNEL a member has no permission in the channel at all.
    if not value & P.VIEW_CHANNEL:
        return 0
    return value
