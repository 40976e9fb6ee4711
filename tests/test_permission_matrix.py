"""Who may do what: every command that changes or reveals something, for every kind of actor.

The table below is the specification. ``allowed``: the action happens. ``refused``: one
private sentence, and neither the ledger, Imgur nor any channel changed (autocomplete offers
nothing). ``unseen``: someone from another server (who manages that server) is answered about
their own server only: this server's records neither change nor show.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import discord
import pytest
from discord import app_commands

from bot.imgur import ImageReference
from bot.ledger import Ledger
from cogs.rehost_menu import MENU_NAME
from tests import samples
from tests.conftest import WebFiles
from tests.discord_mocks import (
    Conversation,
    DiscordEnv,
    discord_env,
    make_app_channel,
    make_channel,
    make_guild,
    make_member,
)

ALLOWED: Final = "allowed"
REFUSED: Final = "refused"
UNSEEN: Final = "unseen"

# "moderator" (mod) holds Manage Messages server-wide, from a role; "channel mod" holds it in the
# channel the command is used in only, from an overwrite: no power over the whole server.
ACTORS: Final = ("member", "owner", "moderator", "channel mod", "admin", "other guild")

# fmt: off
TABLE: Final = {
    #                                     member   owner    mod      chan mod admin    other guild
    "imgur-delete":                      (REFUSED, ALLOWED, ALLOWED, REFUSED, REFUSED, REFUSED),
    "imgur-delete (autocomplete)":       (REFUSED, ALLOWED, ALLOWED, REFUSED, REFUSED, REFUSED),
    "imgur-history":                     (REFUSED, REFUSED, ALLOWED, REFUSED, REFUSED, UNSEEN),
    "imgur-auto add":                    (REFUSED, REFUSED, REFUSED, REFUSED, ALLOWED, UNSEEN),
    "imgur-auto remove":                 (REFUSED, REFUSED, REFUSED, REFUSED, ALLOWED, UNSEEN),
    "imgur-auto list":                   (REFUSED, REFUSED, REFUSED, REFUSED, ALLOWED, UNSEEN),
    "imgur-settings show":               (REFUSED, REFUSED, REFUSED, REFUSED, ALLOWED, UNSEEN),
    "imgur-settings delete-with-source": (REFUSED, REFUSED, REFUSED, REFUSED, ALLOWED, UNSEEN),
    "imgur-settings allow-nsfw":         (REFUSED, REFUSED, REFUSED, REFUSED, ALLOWED, UNSEEN),
    # Bot-wide figures only (quota, counts): nothing of any one server, so everyone may ask.
    "imgur-status":                      (ALLOWED, ALLOWED, ALLOWED, ALLOWED, ALLOWED, ALLOWED),
    "imgur":                             (ALLOWED, ALLOWED, ALLOWED, ALLOWED, ALLOWED, ALLOWED),
    MENU_NAME:                           (ALLOWED, ALLOWED, ALLOWED, ALLOWED, ALLOWED, ALLOWED),
}
# fmt: on

CASES: Final = [
    pytest.param(command, actor, outcome, id=f"{command} | {actor} | {outcome}")
    for command, row in TABLE.items()
    for actor, outcome in zip(ACTORS, row, strict=True)
]


@dataclass
class Actor:
    user: Any
    channel: Any
    permissions: discord.Permissions | None = None  # in this channel only; else the member's


@dataclass
class Scene:
    """One server with an upload, a chosen channel and NSFW allowed; and another server."""

    env: DiscordEnv
    owner: Any
    imgur_id: str
    link: str
    art: Any  # a second channel of this server, not chosen for auto-rehost
    actors: dict[str, Actor]

    @property
    def guild_id(self) -> int:
        return int(self.env.guild.id)


@dataclass
class Answer:
    talk: Conversation
    choices: list[str] | None = None  # what autocomplete offered

    @property
    def text(self) -> str:
        return "\n".join(self.talk.texts + (self.choices or []))


@pytest.fixture
async def scene(tmp_path: Path, web_files: WebFiles) -> AsyncIterator[Scene]:
    async with discord_env(tmp_path, web_files) as env:
        owner = env.member
        interaction, talk = env.interaction(owner)
        await env.invoke("imgur", interaction, image=env.attachment(samples.png(seed=1)))
        imgur_id = ImageReference.parse(talk.last.text.split()[0]).imgur_id
        upload = await env.ledger.get_upload(imgur_id)
        assert upload is not None
        assert upload.link is not None
        await env.ledger.add_auto_channel(env.guild.id, env.channel.id, added_by=owner.id)
        await env.ledger.update_guild_settings(env.guild.id, allow_nsfw=True)

        elsewhere = make_channel(make_guild(), name="elsewhere")
        everything = discord.Permissions(manage_messages=True, manage_guild=True)
        actors = {
            "member": Actor(make_member(env.guild), env.channel),
            "owner": Actor(owner, env.channel),
            "moderator": Actor(env.moderator(), env.channel),
            # Manage Messages granted by this channel's overwrite, not by a role.
            "channel mod": Actor(make_member(env.guild), env.channel, env.moderator_permissions),
            "admin": Actor(env.manager(), env.channel),
            "other guild": Actor(make_member(elsewhere.guild, permissions=everything), elsewhere),
        }
        yield Scene(env, owner, imgur_id, upload.link, make_channel(env.guild, name="art"), actors)


# --- running each command -----------------------------------------------------------------

Run = Callable[[Scene, Actor], Awaitable[Answer]]


def slash(name: str, **options: Callable[[Scene, Actor], Any]) -> Run:
    """Run slash command ``name``; each option's value is computed from the scene and actor."""

    async def run(scene: Scene, actor: Actor) -> Answer:
        interaction, talk = scene.env.interaction(actor.user, actor.channel, actor.permissions)
        values = {key: make(scene, actor) for key, make in options.items()}
        await scene.env.invoke(name, interaction, **values)
        return Answer(talk)

    return run


async def autocomplete(scene: Scene, actor: Actor) -> Answer:
    interaction, talk = scene.env.interaction(actor.user, actor.channel, actor.permissions)
    # The extension is loaded as its own module copy, so the cog is no cogs.deletion.Deletion.
    cog: Any = scene.env.bot.get_cog("Deletion")
    choices = await cog.upload_choices(interaction, "")
    return Answer(talk, [choice.value for choice in choices])


async def menu(scene: Scene, actor: Actor) -> Answer:
    env = scene.env
    poster = make_member(actor.channel.guild, name="poster")
    message = env.message(env.attachment(samples.png(seed=7)), author=poster, channel=actor.channel)
    interaction, talk = env.interaction(actor.user, actor.channel, actor.permissions)
    await env.invoke(MENU_NAME, interaction, message)
    return Answer(talk)


def _channel_option(pick: Callable[[Scene], Any]) -> Callable[[Scene, Actor], Any]:
    # Someone from another server names this server's channel: Discord would not offer it,
    # but a hand-made request can carry any id.
    return lambda scene, _actor: make_app_channel(pick(scene))


RUNS: Final[dict[str, Run]] = {
    "imgur-delete": slash("imgur-delete", upload=lambda scene, _: scene.imgur_id),
    "imgur-delete (autocomplete)": autocomplete,
    "imgur-history": slash("imgur-history"),
    "imgur-auto add": slash("imgur-auto add", channel=_channel_option(lambda s: s.art)),
    "imgur-auto remove": slash(
        "imgur-auto remove", channel=_channel_option(lambda s: s.env.channel)
    ),
    "imgur-auto list": slash("imgur-auto list"),
    "imgur-settings show": slash("imgur-settings show"),
    "imgur-settings delete-with-source": slash(
        "imgur-settings delete-with-source", enabled=lambda *_: False
    ),
    "imgur-settings allow-nsfw": slash("imgur-settings allow-nsfw", enabled=lambda *_: False),
    "imgur-status": slash("imgur-status"),
    "imgur": slash("imgur", image=lambda s, _: s.env.attachment(samples.png(seed=5))),
    MENU_NAME: menu,
}


# --- what "allowed" means for each command --------------------------------------------------


def private(answer: Answer) -> bool:
    return bool(answer.talk.said) and all(s.ephemeral for s in answer.talk.said)


async def deleted(scene: Scene, actor: Actor, answer: Answer) -> None:
    assert private(answer)
    assert answer.talk.last.text.startswith(f"Deleted `{scene.imgur_id}` from Imgur")
    assert scene.env.imgur.images[scene.imgur_id].deleted
    upload = await scene.env.ledger.get_upload(scene.imgur_id)
    assert upload is not None
    assert (upload.state, upload.deleted_by) == ("deleted", actor.user.id)


async def offered(scene: Scene, actor: Actor, answer: Answer) -> None:
    assert answer.choices == [scene.imgur_id]
    assert answer.talk.said == []


async def history_shown(scene: Scene, actor: Actor, answer: Answer) -> None:
    assert private(answer)
    assert f"<{scene.link}>" in answer.talk.last.text


async def channel_added(scene: Scene, actor: Actor, answer: Answer) -> None:
    assert private(answer)
    assert scene.art.id in await scene.env.ledger.auto_channels(scene.guild_id)


async def channel_removed(scene: Scene, actor: Actor, answer: Answer) -> None:
    assert private(answer)
    assert await scene.env.ledger.auto_channels(scene.guild_id) == []


async def channels_listed(scene: Scene, actor: Actor, answer: Answer) -> None:
    assert private(answer)
    assert f"<#{scene.env.channel.id}>" in answer.talk.last.text


async def settings_shown(scene: Scene, actor: Actor, answer: Answer) -> None:
    assert private(answer)
    assert "NSFW channels: **allowed**" in answer.talk.last.text


async def source_setting_changed(scene: Scene, actor: Actor, answer: Answer) -> None:
    assert private(answer)
    assert not (await scene.env.ledger.guild_settings(scene.guild_id)).delete_with_source


async def nsfw_setting_changed(scene: Scene, actor: Actor, answer: Answer) -> None:
    assert private(answer)
    assert not (await scene.env.ledger.guild_settings(scene.guild_id)).allow_nsfw


async def status_shown(scene: Scene, actor: Actor, answer: Answer) -> None:
    assert private(answer)
    assert "Uploads since midnight UTC: **1**" in answer.talk.last.text
    assert_reveals_nothing(scene, answer)


async def uploaded_publicly(scene: Scene, actor: Actor, answer: Answer) -> None:
    assert [(s.how, s.ephemeral) for s in answer.talk.said] == [("edit", False)]
    (rehost,) = await scene.env.ledger.recent_rehosts(owner_id=actor.user.id, limit=1)
    assert rehost.upload.imgur_id != scene.imgur_id
    assert rehost.origin.guild_id == actor.channel.guild.id
    assert rehost.upload.link is not None
    assert answer.talk.last.text.startswith(rehost.upload.link)


async def uploaded_privately(scene: Scene, actor: Actor, answer: Answer) -> None:
    assert private(answer)
    (rehost,) = await scene.env.ledger.recent_rehosts(guild_id=actor.channel.guild.id, limit=1)
    assert rehost.origin.requester_id == actor.user.id
    assert rehost.upload.link is not None
    assert rehost.upload.link in answer.talk.last.text


Check = Callable[[Scene, Actor, Answer], Awaitable[None]]

DONE: Final[dict[str, Check]] = {
    "imgur-delete": deleted,
    "imgur-delete (autocomplete)": offered,
    "imgur-history": history_shown,
    "imgur-auto add": channel_added,
    "imgur-auto remove": channel_removed,
    "imgur-auto list": channels_listed,
    "imgur-settings show": settings_shown,
    "imgur-settings delete-with-source": source_setting_changed,
    "imgur-settings allow-nsfw": nsfw_setting_changed,
    "imgur-status": status_shown,
    "imgur": uploaded_publicly,
    MENU_NAME: uploaded_privately,
}


# --- what "refused" and "unseen" mean -----------------------------------------------------


async def state_of(scene: Scene) -> tuple[Any, ...]:
    """Everything of this server a command could change: ledger, Imgur and channels."""
    env = scene.env
    rehosts = await env.ledger.recent_rehosts(limit=1000)
    return (
        [(r.id, r.upload.state, r.deleted_at, r.reply_message_id) for r in rehosts],
        await env.ledger.auto_channels(scene.guild_id),
        await env.ledger.guild_settings(scene.guild_id),
        sorted((image.id, image.deleted) for image in env.imgur.images.values()),
        sorted((album.id, album.deleted) for album in env.imgur.albums.values()),
        len(env.imgur.requests),
        [(p.id, p.channel_id, p.content, p.deleted) for p in env.channels.posted.values()],
    )


_SENTENCE_END: Final = re.compile(r"[.!?](?:\s|$)")


def assert_one_private_sentence(answer: Answer) -> None:
    (said,) = answer.talk.said
    assert said.ephemeral
    assert "\n" not in said.text
    assert said.text[-1:] in {".", "!", "?"}
    assert len(_SENTENCE_END.findall(said.text)) == 1, said.text


def assert_reveals_nothing(scene: Scene, answer: Answer, *, echoed: str = "") -> None:
    """Nothing of this server's uploads or chosen channels in what the actor was told.

    ``echoed`` is what the actor typed, which an answer may repeat.
    """
    text = answer.text.replace(echoed, "") if echoed else answer.text
    for secret in (scene.imgur_id, scene.link, f"<@{scene.owner.id}>"):
        assert secret not in text
    assert f"auto-rehost is on in <#{scene.env.channel.id}>" not in text.lower()
    assert f"• <#{scene.env.channel.id}>" not in text
    assert "NSFW channels: **allowed**" not in text  # this server's setting
    for deletehash in scene.env.deletehashes():
        assert deletehash not in text


# --- the matrix -----------------------------------------------------------------------------


@pytest.mark.parametrize(("command", "actor", "outcome"), CASES)
async def test_permission_matrix(scene: Scene, command: str, actor: str, outcome: str) -> None:
    who = scene.actors[actor]
    before = await state_of(scene)

    answer = await RUNS[command](scene, who)

    if outcome == ALLOWED:
        await DONE[command](scene, who, answer)
        return
    assert await state_of(scene) == before
    # A refused deletion repeats the id that was typed, and nothing more.
    echoed = f"`{scene.imgur_id}`" if command == "imgur-delete" else ""
    assert_reveals_nothing(scene, answer, echoed=echoed)
    if outcome == REFUSED:
        if answer.choices is not None:
            assert answer.choices == []
            assert answer.talk.said == []
        else:
            assert_one_private_sentence(answer)
    else:
        assert private(answer)


def test_the_matrix_covers_every_command_of_the_bot(scene: Scene) -> None:
    tree = scene.env.bot.tree
    slash_commands = {
        c.qualified_name for c in tree.walk_commands() if isinstance(c, app_commands.Command)
    }
    menus = {c.name for c in tree.get_commands(type=discord.AppCommandType.message)}
    assert slash_commands | menus | {"imgur-delete (autocomplete)"} == set(TABLE)


def test_the_matrix_has_every_actor_for_every_command() -> None:
    assert len(CASES) == len(TABLE) * len(ACTORS) == 72


# --- on time ------------------------------------------------------------------------------

LEDGER_CALLS: Final = sorted(
    name
    for name, member in vars(Ledger).items()
    if inspect.iscoroutinefunction(member) and not name.startswith("_")
)


@pytest.mark.parametrize("command", [c for c in TABLE if c != "imgur-delete (autocomplete)"])
async def test_every_command_answers_before_it_consults_the_ledger(
    scene: Scene, command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The ledger waits its turn on a busy database; Discord drops an interaction that is not
    # answered (or deferred) within 3 seconds. Autocomplete cannot defer and is left out.
    actor = next(a for a, o in zip(ACTORS, TABLE[command], strict=True) if o == ALLOWED)
    interactions: list[Any] = []
    make_interaction = scene.env.interaction

    def recorded(*args: Any, **kwargs: Any) -> tuple[Any, Conversation]:
        interaction, talk = make_interaction(*args, **kwargs)
        interactions.append(interaction)
        return interaction, talk

    early: list[str] = []

    def checked(name: str) -> Callable[..., Awaitable[Any]]:
        original = getattr(scene.env.ledger, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            if not all(i.response.is_done() for i in interactions):
                early.append(name)
            return await original(*args, **kwargs)

        return call

    monkeypatch.setattr(scene.env, "interaction", recorded)
    for name in LEDGER_CALLS:
        monkeypatch.setattr(scene.env.ledger, name, checked(name))

    answer = await RUNS[command](scene, scene.actors[actor])

    assert interactions
    assert early == []
    await DONE[command](scene, scene.actors[actor], answer)
