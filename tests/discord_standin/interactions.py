"""Interactions: what the stand-in dispatches, and what became visible of the bot's answers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .world import Attachment, Channel, Member, Message, Role, User

if TYPE_CHECKING:
    from .server import DiscordStandIn

Payload = dict[str, Any]

#: Interaction types (what Discord sends).
PING, APPLICATION_COMMAND, MESSAGE_COMPONENT, AUTOCOMPLETE, MODAL_SUBMIT = 1, 2, 3, 4, 5

#: Interaction callback types (what the bot answers).
PONG = 1
CHANNEL_MESSAGE_WITH_SOURCE = 4
DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE = 5
DEFERRED_UPDATE_MESSAGE = 6
UPDATE_MESSAGE = 7
APPLICATION_COMMAND_AUTOCOMPLETE_RESULT = 8
MODAL = 9

#: Application command option types.
SUB_COMMAND, SUB_COMMAND_GROUP, STRING, INTEGER, BOOLEAN = 1, 2, 3, 4, 5
USER, CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = 6, 7, 8, 9, 10, 11


class StandInUsageError(Exception):
    """A test asked the stand-in for something Discord's client would not let a user do."""


@dataclass
class ApiErrorRecord:
    """An error the stand-in answered to one of the bot's requests."""

    status: int
    code: int
    message: str
    method: str
    route: str


@dataclass
class VisibleMessages:
    """What the channel sees of an interaction, and what only the invoking user sees."""

    channel: list[Message] = field(default_factory=list)
    invoker_only: list[Message] = field(default_factory=list)

    @property
    def all(self) -> list[Message]:
        return [*self.channel, *self.invoker_only]


class InteractionHandle:
    """One interaction the stand-in dispatched, and everything the bot did with it.

    ``original`` is the original response message (or the "thinking" placeholder of a
    deferral); ``followups`` lists the followup messages in order. After a deferral the first
    followup *is* the original message (Discord edits the placeholder), so it appears in both.
    """

    def __init__(
        self,
        standin: DiscordStandIn,
        *,
        interaction_id: int,
        token: str,
        type: int,
        name: str,
        user: User,
        member: Member | None,
        channel: Channel,
        payload: Payload,
        target_message: Message | None = None,
    ) -> None:
        self._standin = standin
        self.id = interaction_id
        self.token = token
        self.type = type
        self.name = name
        self.user = user
        self.member = member
        self.channel = channel
        self.payload = payload
        self.target_message = target_message
        self.dispatched_at: float = standin.clock.monotonic()
        self.callback_type: int | None = None
        self.callback_data: Payload | None = None
        self.original: Message | None = None
        self.followups: list[Message] = []
        self.errors: list[ApiErrorRecord] = []
        self.choices: list[Payload] | None = None
        self.modal: Payload | None = None

    def __repr__(self) -> str:
        return (
            f"<InteractionHandle id={self.id} name={self.name!r} "
            f"callback={self.callback_type} followups={len(self.followups)}>"
        )

    # -- state --------------------------------------------------------------------------------

    @property
    def acknowledged(self) -> bool:
        return self.callback_type is not None

    @property
    def deferred(self) -> bool:
        return self.callback_type in (DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE, DEFERRED_UPDATE_MESSAGE)

    @property
    def thinking(self) -> bool:
        """Whether the user still sees "<bot> is thinking..." (deferred, nothing sent yet)."""
        return self.original is not None and self.original.thinking and not self.original.deleted

    @property
    def ephemeral(self) -> bool | None:
        """Whether the original response is visible only to the invoker (None: no response)."""
        if self.original is None:
            return None
        return self.original.ephemeral

    @property
    def response_content(self) -> str | None:
        """The original response's current content (None before a message response)."""
        if self.original is None or self.original.deleted:
            return None
        return self.original.content

    @property
    def expired(self) -> bool:
        """Whether the 3 second window for the first response has passed."""
        elapsed = self._standin.clock.monotonic() - self.dispatched_at
        return elapsed > self._standin.interaction_deadline

    @property
    def failed_to_respond(self) -> bool:
        """What Discord shows as "The application did not respond"."""
        return not self.acknowledged and self.expired

    @property
    def done(self) -> bool:
        """Acknowledged and not thinking any more, or failed for good."""
        if self.errors and not self.acknowledged:
            return True
        return self.acknowledged and not self.thinking

    def visible_messages(self) -> VisibleMessages:
        """The messages still visible, split by who can see them."""
        seen: set[int] = set()
        visible = VisibleMessages()
        for message in [self.original, *self.followups]:
            if message is None or message.deleted or message.id in seen:
                continue
            seen.add(message.id)
            if message.ephemeral:
                visible.invoker_only.append(message)
            else:
                visible.channel.append(message)
        return visible

    def messages(self) -> list[Message]:
        """The original response and every followup, deleted ones included."""
        result: list[Message] = []
        for message in [self.original, *self.followups]:
            if message is not None and message not in result:
                result.append(message)
        return result

    def find_message(self, message_id: int) -> Message | None:
        for message in self.messages():
            if message.id == message_id:
                return message
        return None

    # -- waiting ------------------------------------------------------------------------------

    async def wait_until(
        self, predicate: Callable[[InteractionHandle], object], timeout: float = 10.0
    ) -> InteractionHandle:
        await self._standin.wait_until(lambda: predicate(self), timeout, f"{self!r}")
        return self

    async def wait_for_callback(self, timeout: float = 10.0) -> InteractionHandle:
        """Wait for the bot's first answer (accepted or rejected)."""
        return await self.wait_until(lambda h: h.acknowledged or h.errors, timeout)

    async def wait_done(self, timeout: float = 10.0) -> InteractionHandle:
        """Wait until the user sees an answer (not "thinking"), or the answer failed."""
        return await self.wait_until(lambda h: h.done, timeout)

    async def wait_for_followups(self, count: int = 1, timeout: float = 10.0) -> list[Message]:
        await self.wait_until(lambda h: len(h.followups) >= count, timeout)
        return self.followups

    async def wait_for_edit(self, timeout: float = 10.0) -> Message:
        """Wait until the original response was edited (or a deferral was filled in)."""
        await self.wait_until(
            lambda h: h.original is not None and h.original.edited and not h.original.thinking,
            timeout,
        )
        assert self.original is not None
        return self.original


# -- building interaction data ---------------------------------------------------------------


class OptionBuilder:
    """Turn a test's ``{name: value}`` options into Discord's option list and resolved data."""

    def __init__(self, standin: DiscordStandIn, channel: Channel, invoker: Member | None) -> None:
        self._standin = standin
        self._channel = channel
        self._invoker = invoker
        self.resolved: Payload = {}

    def build(
        self,
        definitions: list[Payload],
        values: Mapping[str, Any],
        *,
        focused: str | None = None,
    ) -> list[Payload]:
        known = {definition["name"]: definition for definition in definitions}
        unknown = set(values) - set(known)
        if unknown:
            raise StandInUsageError(f"unknown options {sorted(unknown)}; known: {sorted(known)}")

        options: list[Payload] = []
        for definition in definitions:
            name = definition["name"]
            if name not in values:
                if definition.get("required") and focused is None:
                    raise StandInUsageError(f"required option {name!r} is missing")
                continue

            if name == focused:
                if not definition.get("autocomplete"):
                    raise StandInUsageError(f"option {name!r} has no autocomplete")
                option = {"name": name, "type": definition["type"], "value": str(values[name])}
                option["focused"] = True
            else:
                value = self._value(definition, values[name])
                option = {"name": name, "type": definition["type"], "value": value}
            options.append(option)
        return options

    def _value(self, definition: Payload, value: Any) -> Any:
        kind = definition["type"]
        name = definition["name"]
        if kind == STRING:
            if not isinstance(value, str):
                raise StandInUsageError(f"option {name!r} takes a string")
            self._check_length(definition, value)
            self._check_choice(definition, value)
            return value
        if kind in (INTEGER, NUMBER):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise StandInUsageError(f"option {name!r} takes a number")
            if kind == INTEGER and not isinstance(value, int):
                raise StandInUsageError(f"option {name!r} takes an integer")
            self._check_range(definition, value)
            self._check_choice(definition, value)
            return value
        if kind == BOOLEAN:
            if not isinstance(value, bool):
                raise StandInUsageError(f"option {name!r} takes a boolean")
            return value
        if kind == USER:
            return self._resolve_user(name, value)
        if kind == CHANNEL:
            return self._resolve_channel(definition, value)
        if kind == ROLE:
            if not isinstance(value, Role):
                raise StandInUsageError(f"option {name!r} takes a Role")
            self.resolved.setdefault("roles", {})[str(value.id)] = value.to_payload()
            return str(value.id)
        if kind == MENTIONABLE:
            if isinstance(value, Role):
                self.resolved.setdefault("roles", {})[str(value.id)] = value.to_payload()
                return str(value.id)
            return self._resolve_user(name, value)
        if kind == ATTACHMENT:
            if not isinstance(value, Attachment):
                raise StandInUsageError(f"option {name!r} takes an Attachment")
            stored = self._standin._store_attachment(value, ephemeral=True)
            payload = self._standin.attachment_payload(stored)
            self.resolved.setdefault("attachments", {})[str(stored.id)] = payload
            return str(stored.id)
        raise StandInUsageError(f"option {name!r} has unsupported type {kind}")

    def _resolve_user(self, name: str, value: Any) -> str:
        member: Member | None
        if isinstance(value, Member):
            user, member = value.user, value
        elif isinstance(value, User):
            user = value
            guild = self._channel.guild
            member = guild.members.get(user.id) if guild is not None else None
        else:
            raise StandInUsageError(f"option {name!r} takes a User or Member")

        self.resolved.setdefault("users", {})[str(user.id)] = user.to_payload()
        if member is not None:
            payload = member.to_payload(
                include_user=False, permissions=member.permissions_in(self._channel)
            )
            self.resolved.setdefault("members", {})[str(user.id)] = payload
        return str(user.id)

    def _resolve_channel(self, definition: Payload, value: Any) -> str:
        if not isinstance(value, Channel):
            raise StandInUsageError(f"option {definition['name']!r} takes a Channel")
        allowed = definition.get("channel_types")
        if allowed and int(value.type) not in allowed:
            raise StandInUsageError(f"channel type {value.type.name} is not allowed here")

        payload = value.to_payload()
        permissions = self._invoker.permissions_in(value) if self._invoker is not None else 0
        resolved: Payload = {
            key: payload[key]
            for key in ("id", "type", "name", "parent_id", "thread_metadata", "guild_id")
            if key in payload
        }
        resolved["permissions"] = str(permissions)
        self.resolved.setdefault("channels", {})[str(value.id)] = resolved
        return str(value.id)

    @staticmethod
    def _check_length(definition: Payload, value: str) -> None:
        low = definition.get("min_length")
        high = definition.get("max_length")
        if (low is not None and len(value) < low) or (high is not None and len(value) > high):
            raise StandInUsageError(f"option {definition['name']!r}: length out of range")

    @staticmethod
    def _check_range(definition: Payload, value: float) -> None:
        low = definition.get("min_value")
        high = definition.get("max_value")
        if (low is not None and value < low) or (high is not None and value > high):
            raise StandInUsageError(f"option {definition['name']!r}: value out of range")

    @staticmethod
    def _check_choice(definition: Payload, value: Any) -> None:
        choices = definition.get("choices")
        if choices and value not in [choice["value"] for choice in choices]:
            raise StandInUsageError(f"option {definition['name']!r}: {value!r} is not a choice")


def split_command_path(command: Payload, path: list[str]) -> tuple[list[Payload], list[str]]:
    """Follow subcommand groups and subcommands; return the leaf's option definitions."""
    definitions: list[Payload] = command.get("options") or []
    walked: list[str] = []
    for part in path:
        match = next(
            (
                d
                for d in definitions
                if d["name"] == part and d["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP)
            ),
            None,
        )
        if match is None:
            raise StandInUsageError(f"/{command['name']} has no subcommand {part!r}")
        walked.append(part)
        definitions = match.get("options") or []

    if any(d["type"] in (SUB_COMMAND, SUB_COMMAND_GROUP) for d in definitions):
        names = [d["name"] for d in definitions]
        raise StandInUsageError(f"/{command['name']} needs a subcommand, one of {names}")
    return definitions, walked


def nest_options(command: Payload, walked: list[str], leaf: list[Payload]) -> list[Payload]:
    """Wrap the leaf options in the subcommand (group) structure Discord sends."""
    options = leaf
    definitions: list[Payload] = command.get("options") or []
    kinds: list[int] = []
    for part in walked:
        match = next(d for d in definitions if d["name"] == part)
        kinds.append(match["type"])
        definitions = match.get("options") or []

    for part, kind in reversed(list(zip(walked, kinds, strict=True))):
        options = [{"name": part, "type": kind, "options": options}]
    return options
