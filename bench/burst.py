"""A burst: 200 attachments of 1 MB from 10 guilds at once, through the queue.

``python -m bench.burst IMGUR_URL`` prints one JSON object. Each guild posts two messages of
ten attachments (one message per member); guild 1 posts first and guild 10 last, all within
the same moment, so under first-come-first-served guild 10 would wait behind the 180 uploads
of the other nine. The bytes are in memory (as an attachment read from Discord is) and reach
the pipeline as a ``StreamSource`` of 256 KB pieces, cut once before any clock starts: the
bare loop is handed its bytes ready too, so neither pays for the benchmark's own copying.
The settings are the defaults: 4 workers, a queue of 200, a 2 s member cooldown, a reserve of
100 credits.

In turn with each burst, the same 200 files are pushed by a bare aiohttp loop: 4 workers
posting multipart bodies from memory, with no hashing, no ledger and no queue. That is the
yardstick. Each way runs once to warm up and then five times (each pipeline run with a fresh
ledger); medians count.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from bench.files import MB, png_of
from bench.single import CLIENT_ID

GUILDS = 10
PER_GUILD = 20
PER_MESSAGE = 10
WORKERS = 4
RUNS = 5
PIECE = 256 * 1024  # the chunks a download hands over


def attachments() -> list[tuple[int, int, int, bytes]]:
    """(guild, member, message, bytes) in the order they are posted."""
    posted = []
    seed = 0
    for guild in range(1, GUILDS + 1):
        for n in range(PER_GUILD):
            message = guild * 100 + n // PER_MESSAGE
            member = guild * 1000 + n // PER_MESSAGE
            posted.append((guild, member, message, png_of(MB, seed)))
            seed += 1
    return posted


async def credits_used(url: str) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"{url}/3/credits", headers={"Authorization": f"Client-ID {CLIENT_ID}"}
        ) as answer,
    ):
        data = await answer.json()
    return int(data["data"]["UserLimit"]) - int(data["data"]["UserRemaining"])


def in_pieces(data: bytes) -> list[bytes]:
    return [data[start : start + PIECE] for start in range(0, len(data), PIECE)]


async def through_the_pipeline(
    url: str, posted: list[tuple[int, int, int, bytes]], pieces: list[list[bytes]]
) -> dict[str, Any]:
    from bot.ledger import Origin
    from bot.services import open_services
    from bot.settings import load_settings
    from bot.sources import StreamSource

    first_bytes_out: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-burst-") as folder:
        settings = load_settings(
            {
                "IMGUR_CLIENT_ID": CLIENT_ID,
                "IMGUR_API_URL": url,
                "DATABASE_PATH": str(Path(folder) / "ledger.sqlite3"),
                "UPLOAD_WORKERS": str(WORKERS),
            },
            env_file=None,
        )
        async with open_services(settings) as services:
            pipeline = services.pipeline
            spent_before = await credits_used(url)

            async def one(index: int, guild: int, member: int, message: int, data: bytes) -> None:
                async def chunks() -> AsyncIterator[bytes]:
                    for piece in pieces[index]:
                        yield piece

                def progress(stage: str, done: int, total: int | None) -> None:
                    if stage == "upload":
                        first_bytes_out.setdefault(index, time.perf_counter())

                origin = Origin(
                    door="discord",
                    guild_id=guild,
                    channel_id=guild * 10,
                    message_id=message,
                    attachment_id=index,
                    owner_id=member,
                    requester_id=member,
                    filename=f"a{index}.png",
                )
                source = StreamSource(chunks(), filename=f"a{index}.png", declared_size=len(data))
                await pipeline.rehost(source, origin, on_progress=progress)

            started = time.perf_counter()
            await asyncio.gather(
                *(one(i, g, m, msg, data) for i, (g, m, msg, data) in enumerate(posted))
            )
            total = time.perf_counter() - started
            calls = (await credits_used(url) - spent_before) // 10
            recorded = await services.ledger.count_uploads_since(0)

    last_guild = [i for i, (g, *_rest) in enumerate(posted) if g == GUILDS]
    first_of_last = min(first_bytes_out[i] for i in last_guild) - started
    order = sorted(first_bytes_out, key=first_bytes_out.__getitem__)
    position = min(order.index(i) for i in last_guild) + 1
    return {
        "total": total,
        "last_guild_first_wait": first_of_last,
        "last_guild_first_position": position,
        "imgur_calls": calls,
        "recorded": recorded,
    }


async def bare_loop(url: str, posted: list[tuple[int, int, int, bytes]]) -> float:
    """The same bytes, posted by 4 workers with plain aiohttp and nothing else."""
    queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
    for index, (*_where, data) in enumerate(posted):
        queue.put_nowait((index, data))

    async def worker(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            index, data = queue.get_nowait()
            form = aiohttp.FormData()
            form.add_field("type", "file")
            form.add_field("image", data, filename=f"a{index}.png", content_type="image/png")
            async with session.post(
                f"{url}/3/image",
                data=form,
                headers={"Authorization": f"Client-ID {CLIENT_ID}"},
            ) as answer:
                await answer.read()
                if answer.status != 200:
                    raise RuntimeError(f"bare upload answered HTTP {answer.status}")

    async with aiohttp.ClientSession() as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(WORKERS)))
        return time.perf_counter() - started


def count_ledger_round_trips() -> dict[str, float]:
    """Count the jobs the ledger hands to its SQLite thread, and time them there."""
    from bot.ledger import Ledger

    counted = {"round_trips": 0.0, "busy": 0.0}
    original = Ledger._submit

    def submit(self: Any, job: Any) -> Any:
        def timed() -> Any:
            started = time.perf_counter()
            try:
                return job()
            finally:
                counted["busy"] += time.perf_counter() - started

        counted["round_trips"] += 1
        return original(self, timed)

    Ledger._submit = submit  # type: ignore[method-assign]
    return counted


async def main_async(url: str) -> dict[str, Any]:
    """One burst each way to warm up, then ``RUNS`` each way in turn: the median pipeline run.

    The first burst through the pipeline also pays for growing the process's heap to hold
    the attachments waiting for their turn (tens of thousands of page faults) and for its
    first imports; a bot that has been running has paid that already. So each way has one
    burst that is not counted (the pipeline's is shown beside the figures), as the bare
    loop's warms up the stand-in and the connections.
    """
    posted = attachments()
    pieces = [in_pieces(data) for *_where, data in posted]
    await bare_loop(url, posted)
    first = await through_the_pipeline(url, posted, pieces)
    counted = count_ledger_round_trips()
    bares: list[float] = []
    runs: list[dict[str, Any]] = []
    for _ in range(RUNS):
        bares.append(await bare_loop(url, posted))
        before = dict(counted)
        run = await through_the_pipeline(url, posted, pieces)
        run["ledger_round_trips"] = int(counted["round_trips"] - before["round_trips"])
        run["ledger_busy"] = counted["busy"] - before["busy"]
        runs.append(run)

    result = sorted(runs, key=lambda run: float(run["total"]))[RUNS // 2]
    result["first_total"] = first["total"]
    result["bare"] = statistics.median(bares)
    result["totals"] = [run["total"] for run in runs]
    result["bares"] = bares
    result["runs"] = RUNS
    return result


def main() -> None:
    result = asyncio.run(main_async(sys.argv[1]))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
