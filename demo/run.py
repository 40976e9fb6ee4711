"""Watch the bot work without a Discord or Imgur account: ``make demo``.

Starts local stand-ins for Discord and Imgur on 127.0.0.1, runs the real bot against them
(``python -m bot run``, exactly as ``make run`` does), plays a short conversation and prints
what each side saw: what the people did, what the bot answered and who could see it, what it
asked of Discord and of Imgur, and what it logged. Then everything is stopped again.
"""

from __future__ import annotations

import asyncio
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.discord_standin import (
    MODERATOR,
    Attachment,
    DiscordStandIn,
    InteractionHandle,
    Message,
    RecordedRequest,
)
from tests.e2e.harness import (
    ANSWER_TIMEOUT,
    BotProcess,
    LinkedFiles,
    answered,
    copy_of,
    fresh_png,
    stand_ins,
    start_bot,
)
from tests.imgur_standin import ImgurStandIn
from tests.imgur_standin import RecordedRequest as ImgurRequest

WIDTH = 20  # the column where what was seen starts

# What the bot's REST calls mean, in words.
ROUTE_NAMES = {
    "POST /interactions/{interaction_id}/{interaction_token}/callback": "answer the interaction",
    "PATCH /webhooks/{application_id}/{interaction_token}/messages/{message_id}": (
        "edit its answer"
    ),
    "DELETE /webhooks/{application_id}/{interaction_token}/messages/{message_id}": (
        "take its answer down"
    ),
    "POST /webhooks/{application_id}/{interaction_token}": "send a follow-up",
    "POST /channels/{channel_id}/messages": "post a message",
    "PATCH /channels/{channel_id}/messages/{message_id}": "edit a message",
    "DELETE /channels/{channel_id}/messages/{message_id}": "delete a message",
    "GET /channels/{channel_id}/messages/{message_id}": "read a message",
}
CALLBACK_KINDS = {4: "a message", 5: '"thinking…"', 8: "choices"}
DELETEHASH = re.compile(r"^(/3/(?:image|album)/)[^/]+$")


class TimedRequests(list[ImgurRequest]):
    """Imgur's request record, noting when each arrived so it interleaves with Discord's."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: dict[int, float] = {}

    def append(self, record: ImgurRequest) -> None:
        self.arrived[id(record)] = time.monotonic()
        super().append(record)


def out(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def row(label: str, text: str) -> None:
    out(f"   {label:<{WIDTH}}{text}")


class Demo:
    """The conversation: each step says who did what, then what every side saw."""

    def __init__(
        self, discord: DiscordStandIn, imgur: ImgurStandIn, files: LinkedFiles, workdir: Path
    ) -> None:
        self.discord = discord
        self.imgur = imgur
        self.imgur_requests = TimedRequests()
        imgur.requests = self.imgur_requests
        self.files = files
        self.workdir = workdir
        self.bot: BotProcess | None = None
        self.names: dict[int, str] = {}
        self.step = 0
        self.seen: list[tuple[str, str]] = []

        self.guild = discord.add_guild("Demo Server")
        self.art = self.guild.add_text_channel("art")
        self.owner = self.guild.owner
        self.alice = self.guild.add_member("alice")
        self.bob = self.guild.add_member("bob")
        self.mia = self.guild.add_member("mia", permissions=MODERATOR)
        self.names.update({self.art.id: "#art", self.owner.id: "the owner"})
        self.names.update({m.id: m.name for m in (self.alice, self.bob, self.mia)})

    # --- narrating ------------------------------------------------------------------------

    def readable(self, text: str) -> str:
        """Mentions as Discord shows them (``#art``, ``@alice``), on one line."""

        def mention(match: re.Match[str]) -> str:
            name = self.names.get(int(match[2]))
            if name is None:
                return match[0]
            return name if match[1] == "#" else f"@{name}"

        text = re.sub(r"<(#|@!?)(\d+)>", mention, text)
        return " / ".join(line for line in text.splitlines() if line.strip())

    async def act(self, what: str, event: str, action: Callable[[], Awaitable[None]]) -> None:
        """One step: do it, wait for what follows, then print everything it caused."""
        assert self.bot is not None
        self.step += 1
        discord_seen, imgur_seen = len(self.discord.requests), len(self.imgur.requests)
        log_seen = len(self.bot.log_lines())
        self.seen = []
        out(f"\n{self.step}. {what}")
        row("Discord → bot", event)

        await action()

        # Both sides' requests in the order they arrived.
        calls: list[tuple[float, RecordedRequest | ImgurRequest]] = [
            (record.at, record) for record in self.discord.requests[discord_seen:]
        ]
        calls += [(self.imgur_requests.arrived[id(r)], r) for r in self.imgur_requests[imgur_seen:]]
        for _, record in sorted(calls, key=lambda call: call[0]):
            if isinstance(record, RecordedRequest):
                self.discord_call(record)
            else:
                self.imgur_call(record)
        for label, text in self.seen:
            row(label, text)
        for line in self.bot.log_lines()[log_seen:]:
            # "2026-01-01 12:00:00 INFO    bot.pipeline: rehosted ..." -> "bot.pipeline: ..."
            parts = line.split(maxsplit=3)
            if len(parts) == 4 and parts[2] != "DEBUG" and parts[3].startswith(("bot.", "cogs.")):
                row("bot's log", self.readable(parts[3]))

    def imgur_call(self, record: ImgurRequest) -> None:
        path = record.path
        if record.method == "DELETE":
            # A deletehash is a secret: it never appears in a message or a log.
            path = DELETEHASH.sub(r"\1<deletehash>", path)
        detail = f" {record.filename}, {record.bytes_received} bytes" if record.filename else ""
        status = record.status if record.status is not None else "no answer"
        row("bot → Imgur", f"{record.method} {path}{detail} → {status}")

    def discord_call(self, record: RecordedRequest) -> None:
        if record.kind == "cdn":
            name = record.path.rsplit("/", 1)[-1]
            row("bot → CDN", f"download {name} → {record.status}")
            return
        words = ROUTE_NAMES.get(record.route or "")
        if words is None:
            return
        if record.route and record.route.endswith("/callback") and record.json:
            kind = CALLBACK_KINDS.get(record.json.get("type"), "an answer")
            flags = (record.json.get("data") or {}).get("flags") or 0
            words += f" with {kind}" + (", private" if flags & 64 else ", public")
        channel_id = record.params.get("channel_id")
        if channel_id:
            words += f" in {self.names.get(int(channel_id), 'a channel')}"
        row("bot → Discord", f"{words} → {record.status}")

    def show_answer(self, handle: InteractionHandle) -> None:
        visible = handle.visible_messages()
        invoker = self.names.get(handle.user.id, handle.user.name)
        for message in visible.channel:
            self.seen.append(("everyone sees", f'"{self.readable(message.content)}"'))
        for message in visible.invoker_only:
            self.seen.append((f"only {invoker} sees", f'"{self.readable(message.content)}"'))

    def show_message(self, message: Message, how: str) -> None:
        if message.deleted:
            self.seen.append(("everyone sees", f"the bot's {how} is gone"))
        else:
            self.seen.append(("everyone sees", f'{how}: "{self.readable(message.content)}"'))

    # --- the conversation -------------------------------------------------------------------

    async def run(self) -> int:
        out("The Imgur rehost bot, live against local stand-ins for Discord and Imgur.")
        out("Nothing leaves this machine: both services are simulated on 127.0.0.1.\n")
        row("Discord", f"{self.discord.base_url}  server 'Demo Server', channel #art")
        row("people", "alice and bob (members), mia (moderator), the owner")
        row("Imgur", self.imgur.url)

        started = time.monotonic()
        self.bot = await start_bot(
            self.discord, self.imgur, self.workdir, extra_env={"LOG_LEVEL": "INFO"}
        )
        try:
            commands = sorted(c["name"] for c in self.discord.commands)
            row("bot", f"python -m bot run: ready in {time.monotonic() - started:.1f} s")
            row("bot synced", ", ".join(f"/{c}" if " " not in c else f"'{c}'" for c in commands))
            await self.conversation()
        except (AssertionError, TimeoutError) as exc:
            out(f"\nThe demo went wrong: {exc}\nThe end of the bot's log:\n{self.bot.tail(20)}")
            await self.bot.kill()
            return 1
        except BaseException:
            await self.bot.kill()
            raise
        return await self.stop()

    async def conversation(self) -> None:
        drawing = fresh_png()
        state: dict[str, object] = {}

        async def switch_on() -> None:
            handle = await self.discord.invoke_slash(
                "imgur-auto add", self.owner, self.art, {"channel": self.art}
            )
            self.show_answer(await answered(handle))

        async def post_drawing() -> None:
            message = await self.discord.post_message(
                self.art,
                self.alice,
                "my new drawing",
                attachments=[Attachment("drawing.png", drawing)],
            )
            reply = await self.discord.wait_for_bot_message(
                self.art, lambda m: m.reference is message, ANSWER_TIMEOUT
            )
            state["reply"] = reply
            self.show_message(reply, "the bot replies")

        async def bob_uses_imgur() -> None:
            url = self.files.add("sunset.png", fresh_png())
            handle = await self.discord.invoke_slash(
                "imgur", self.bob, self.art, {"url": url, "title": "Sunset"}
            )
            self.show_answer(await answered(handle))

        async def bob_tries_to_delete() -> None:
            handle = await self.discord.invoke_slash(
                "imgur-delete", self.bob, self.art, {"upload": image_id()}
            )
            self.show_answer(await answered(handle))

        async def mia_deletes() -> None:
            handle = await self.discord.invoke_slash(
                "imgur-delete", self.mia, self.art, {"upload": image_id()}
            )
            self.show_answer(await answered(handle))
            reply = state["reply"]
            assert isinstance(reply, Message)
            await self.discord.wait_until(lambda: reply.deleted, ANSWER_TIMEOUT, "the reply")
            self.show_message(reply, "reply")

        def image_id() -> str:
            found = copy_of(self.imgur, drawing)
            assert found is not None
            return found.id

        command = "INTERACTION_CREATE (a slash command)"
        await self.act("The owner runs /imgur-auto add channel:#art", command, switch_on)
        await self.act(
            'alice posts in #art: "my new drawing" with drawing.png',
            "MESSAGE_CREATE (with the attachment's signed CDN link)",
            post_drawing,
        )
        await self.act(
            "bob runs /imgur url:<a link to sunset.png> title:Sunset", command, bob_uses_imgur
        )
        await self.act(
            f"bob runs /imgur-delete upload:{image_id()} (alice's drawing)",
            command,
            bob_tries_to_delete,
        )
        await self.act(
            f"mia, a moderator, runs /imgur-delete upload:{image_id()}", command, mia_deletes
        )

    async def stop(self) -> int:
        assert self.bot is not None
        out("\nStopping the bot with SIGTERM, as a service manager would")
        status = await self.bot.stop()
        row(
            "bot",
            f"exit status {status}; "
            + ("stopped cleanly" if "stopped cleanly" in self.bot.log else "see its log"),
        )
        live = [i for i in self.imgur.images.values() if not i.deleted]
        row("Imgur holds", f"{len(self.imgur.images)} uploads, {len(live)} still online")
        row(
            "Discord saw",
            f"{len([r for r in self.discord.requests if r.kind == 'rest'])} API calls from the bot",
        )
        return status


async def main() -> int:
    with tempfile.TemporaryDirectory(prefix="rehost-demo-") as workdir:
        async with stand_ins() as (discord, imgur), LinkedFiles() as files:
            return await Demo(discord, imgur, files, Path(workdir)).run()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
