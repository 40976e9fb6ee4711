"""Crash rounds: kill the bot in the middle of a burst of uploads, restart it, and count.

``python -m bench.crash [--rounds N]`` runs each round N times against a local Imgur
stand-in and prints a table: uploads Imgur accepted, how many of those are on record with
their deletehash, how many were deleted again, how many are *unconfirmed* (Imgur stored the
file but the process died before the answer, and with it the deletehash, arrived: the
ledger keeps the attempt as a failed row with the file's digest and size, but nobody can
delete that copy), and how many are lost (no trace at all; must be zero).

Rounds:

- ``cli-sigkill``: ``python -m bot upload`` with 20 files, every upload answered slowly, is
  sent SIGKILL while Imgur holds an upload it has not answered yet. The database is checked
  with ``PRAGMA integrity_check`` before anything touches it again; then the same command
  runs again, which reconciles and must name the interrupted file.
- ``cli-sigterm``: the same, but SIGTERM: the command finishes the upload in flight, records
  it, names the files it did not start, and exits. Nothing may be unconfirmed.
- ``http-sigkill``: ``python -m bot serve`` with 4 workers takes 16 concurrent uploads and is
  killed while several are unanswered; then it is started again (reconcile) and stopped.
- ``http-sigterm``: the same with SIGTERM: the endpoint stops taking requests and finishes
  the ones it has (up to its shutdown timeout) before it exits.

``tests/test_crash.py`` runs each round once; the figures in docs/RELIABILITY.md come from
this module run with ``--rounds 10``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from blake3 import blake3

from tests import samples
from tests.imgur_standin import ImageRecord, ImgurStandIn

ROOT = Path(__file__).resolve().parent.parent
INTERRUPTED = "interrupted by a restart"
HTTP_TOKEN = "crash-round-http-token-0123456789"
SLOW = 0.3  # seconds Imgur takes to answer each upload in a round
WITHIN = 60.0  # seconds any one step of a round may take


# --- accounting: Imgur's images against the ledger's rows -----------------------------------


@dataclass
class Accounting:
    """Every image Imgur holds, sorted by what the ledger knows of it."""

    accepted: int = 0  # images Imgur stored
    recorded: int = 0  # on record with this very deletehash
    deleted: int = 0  # not on record, but deleted from Imgur again
    unconfirmed: list[str] = field(default_factory=list)  # ids: a failed row holds the bytes
    lost: list[str] = field(default_factory=list)  # ids: no trace at all


def ledger_rows(path: Path) -> list[dict[str, Any]]:
    """Every upload row, read with plain sqlite3 (the way an operator would look)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "SELECT id, imgur_id, deletehash, state, digest, size, fail_reason, filename "
            "FROM uploads ORDER BY id"
        ).fetchall()
    return [dict(row) for row in rows]


def integrity(path: Path) -> str:
    """SQLite's own verdict on the file: "ok", or what is wrong."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        checks = db.execute("PRAGMA integrity_check").fetchall()
        dangling = db.execute("PRAGMA foreign_key_check").fetchall()
    verdict = "; ".join(str(row[0]) for row in checks)
    return verdict if not dangling else f"{verdict}; {len(dangling)} dangling references"


def digests_of(files: Iterable[bytes]) -> dict[str, str]:
    """The ledger's digest (BLAKE3) of each file, by the SHA-256 Imgur's stand-in keeps."""
    return {hashlib.sha256(data).hexdigest(): blake3(data).hexdigest() for data in files}


def account(
    images: Iterable[ImageRecord], rows: Sequence[dict[str, Any]], digests: Mapping[str, str]
) -> Accounting:
    """Match Imgur's images to ledger rows: by id and deletehash, else by bytes.

    ``digests`` translates the stand-in's names for bytes into the ledger's (``digests_of``).
    """
    by_id = {row["imgur_id"]: row for row in rows if row["imgur_id"] is not None}
    # Rows that never learnt their image: each can explain one image with the same bytes.
    unanswered = [row for row in rows if row["imgur_id"] is None and row["state"] == "failed"]

    result = Accounting()
    for image in images:
        result.accepted += 1
        row = by_id.get(image.id)
        if row is not None and row["deletehash"] == image.deletehash:
            result.recorded += 1
        elif image.deleted:
            result.deleted += 1
        else:
            match = next(
                (
                    r
                    for r in unanswered
                    if (r["digest"], r["size"]) == (digests.get(image.sha256), image.size)
                ),
                None,
            )
            if match is None:
                result.lost.append(image.id)
            else:
                unanswered.remove(match)
                result.unconfirmed.append(image.id)
    return result


# --- rounds --------------------------------------------------------------------------------


@dataclass
class CrashResult:
    """What one round saw."""

    round: str
    files: int
    in_flight_at_kill: int  # uploads Imgur had stored but not answered when the signal came
    exit_code: int | None  # of the process that got the signal
    integrity_after_kill: str
    pending_after_kill: int  # rows left pending by the kill
    pending_after_restart: int
    interrupted: list[str]  # file names the restart reported as interrupted
    warned: list[str]  # of those, the ones named on stderr (CLI)
    accounting: Accounting
    stderr: str = ""  # what the signalled process wrote (for HTTP: both processes)
    stdout: str = ""
    restart_stderr: str = ""  # what the second command line run wrote
    answers: list[str] = field(default_factory=list)  # what each HTTP caller was told


def environment(imgur: ImgurStandIn, database: Path, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "IMGUR_CLIENT_ID": imgur.client_id,
        "IMGUR_API_URL": imgur.url,
        "DATABASE_PATH": str(database),
        **extra,
    }


def write_files(folder: Path, count: int, seed: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"burst-{seed}-{index:02d}.png"
        path.write_bytes(samples.png(8, 8, seed=seed * 100 + index))
        paths.append(path)
    return paths


def unanswered(imgur: ImgurStandIn) -> int:
    """Uploads Imgur has stored whose answer has not been sent (the window)."""
    answered = sum(1 for r in imgur.uploads() if r.status is not None)
    return len(imgur.images) - answered


async def wait_until(predicate: Callable[[], bool], within: float = WITHIN) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the round did not reach the state it waits for")
        await asyncio.sleep(0.01)


async def run_cli(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), WITHIN)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def cli_round(
    imgur: ImgurStandIn, folder: Path, *, sig: signal.Signals, files: int = 20, kill_at: int = 4
) -> CrashResult:
    """``python -m bot upload`` of ``files`` files, signalled once ``kill_at`` are stored."""
    database = folder / "ledger.sqlite3"
    paths = write_files(folder / "files", files, seed=len(imgur.images) + 1)
    env = environment(imgur, database)
    imgur.fail_next("slow", times=files, path="/3/image", delay=SLOW)

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "upload", *map(str, paths), cwd=folder, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    reading = asyncio.ensure_future(process.communicate())
    try:
        await wait_until(lambda: len(imgur.images) >= kill_at and unanswered(imgur) > 0)
        in_flight = unanswered(imgur)
        process.send_signal(sig)
        out, err = await asyncio.wait_for(reading, WITHIN)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    imgur.clear_faults()

    verdict = integrity(database)
    pending = [r for r in ledger_rows(database) if r["state"] == "pending"]

    # The same command again: it reconciles at start, then uploads what is missing.
    _, _, again_err = await run_cli(env, folder, "upload", *map(str, paths))
    rows = ledger_rows(database)
    interrupted = [r["filename"] for r in rows if r["fail_reason"] == INTERRUPTED]
    warned = [name for name in interrupted if name and name in again_err]
    return CrashResult(
        round=f"cli-{sig.name.lower()}",
        files=files,
        in_flight_at_kill=in_flight,
        exit_code=process.returncode,
        integrity_after_kill=verdict,
        pending_after_kill=len(pending),
        pending_after_restart=sum(1 for r in rows if r["state"] == "pending"),
        interrupted=interrupted,
        warned=warned,
        accounting=account(imgur.images.values(), rows, digests_of(p.read_bytes() for p in paths)),
        stderr=err.decode(),
        stdout=out.decode(),
        restart_stderr=again_err,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Served:
    """A running ``python -m bot serve`` and everything it has written to stderr."""

    process: asyncio.subprocess.Process
    base: str
    early: bytes  # stderr up to the line saying it listens
    rest: asyncio.Future[bytes]  # the remainder, read all along so the pipe never fills

    async def stderr(self) -> str:
        return (self.early + await asyncio.wait_for(self.rest, WITHIN)).decode()


async def start_serve(env: dict[str, str], cwd: Path) -> Served:
    """``python -m bot serve``, once it says it listens."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "serve", cwd=cwd, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    early = b""
    deadline = time.monotonic() + WITHIN
    while time.monotonic() < deadline:
        line = await asyncio.wait_for(process.stderr.readline(), WITHIN)
        early += line
        if not line:
            break
        if b"HTTP upload endpoint listening" in line:
            base = f"http://127.0.0.1:{env['HTTP_PORT']}"
            return Served(process, base, early, asyncio.ensure_future(process.stderr.read()))
    process.kill()
    await process.wait()
    raise RuntimeError(f"python -m bot serve did not start: {early.decode()[-2000:]}")


async def post_file(session: aiohttp.ClientSession, base: str, path: Path) -> str:
    """One upload through the endpoint: "ok", or what the caller was told."""
    form = aiohttp.FormData()
    data = await asyncio.to_thread(path.read_bytes)
    form.add_field("file", data, filename=path.name, content_type="image/png")
    try:
        async with session.post(
            f"{base}/api/upload", data=form, headers={"Authorization": f"Bearer {HTTP_TOKEN}"}
        ) as response:
            return "ok" if response.status == 200 else f"HTTP {response.status}"
    except aiohttp.ClientError as exc:
        return type(exc).__name__  # the connection died with the process: the caller knows


async def http_round(
    imgur: ImgurStandIn,
    folder: Path,
    *,
    sig: signal.Signals = signal.SIGKILL,
    files: int = 16,
    kill_at: int = 9,
) -> CrashResult:
    """``python -m bot serve`` with concurrent uploads, signalled with several unanswered."""
    database = folder / "ledger.sqlite3"
    paths = write_files(folder / "files", files, seed=len(imgur.images) + 500)
    env = environment(
        imgur,
        database,
        HTTP_PORT=str(free_port()),
        HTTP_TOKEN=HTTP_TOKEN,
        UPLOAD_WORKERS="4",
        LOG_LEVEL="DEBUG",
    )
    imgur.fail_next("slow", times=files, path="/3/image", delay=SLOW)

    served = await start_serve(env, folder)
    process = served.process
    try:
        async with aiohttp.ClientSession() as session:
            posts = [asyncio.ensure_future(post_file(session, served.base, path)) for path in paths]
            await wait_until(
                lambda: (
                    len(imgur.images) >= kill_at
                    and unanswered(imgur) >= 2
                    and any(post.done() for post in posts)
                )
            )
            in_flight = unanswered(imgur)
            process.send_signal(sig)
            await asyncio.wait_for(process.wait(), WITHIN)
            answers = await asyncio.wait_for(asyncio.gather(*posts), WITHIN)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    stderr = await served.stderr()
    imgur.clear_faults()

    verdict = integrity(database)
    pending = [r for r in ledger_rows(database) if r["state"] == "pending"]

    restarted = await start_serve(env, folder)  # reconciles at start
    restarted.process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(restarted.process.wait(), WITHIN)
    stderr += await restarted.stderr()

    rows = ledger_rows(database)
    interrupted = [r["filename"] for r in rows if r["fail_reason"] == INTERRUPTED]
    return CrashResult(
        round=f"http-{sig.name.lower()}",
        files=files,
        in_flight_at_kill=in_flight,
        exit_code=process.returncode,
        integrity_after_kill=verdict,
        pending_after_kill=len(pending),
        pending_after_restart=sum(1 for r in rows if r["state"] == "pending"),
        interrupted=interrupted,
        warned=[],
        accounting=account(imgur.images.values(), rows, digests_of(p.read_bytes() for p in paths)),
        stderr=stderr,
        answers=answers,
    )


# --- the table -------------------------------------------------------------------------------


async def _main(rounds: int, folder: Path) -> None:
    totals: dict[str, list[CrashResult]] = {}
    async with ImgurStandIn(user_limit=10**7, client_limit=10**8, post_limit=10**7) as imgur:
        for number in range(rounds):
            for name in ("cli-sigkill", "cli-sigterm", "http-sigkill", "http-sigterm"):
                imgur.images.clear()
                imgur.requests.clear()
                where = folder / f"{name}-{number}"
                sig = signal.SIGKILL if name.endswith("sigkill") else signal.SIGTERM
                if name.startswith("http"):
                    result = await http_round(imgur, where, sig=sig)
                else:
                    result = await cli_round(imgur, where, sig=sig)
                totals.setdefault(name, []).append(result)

    print("| round | runs | accepted by Imgur | recorded | deleted | unconfirmed | lost |")
    print("|---|---|---|---|---|---|---|")
    for name, results in totals.items():
        sums = [
            sum(r.accounting.accepted for r in results),
            sum(r.accounting.recorded for r in results),
            sum(r.accounting.deleted for r in results),
            sum(len(r.accounting.unconfirmed) for r in results),
            sum(len(r.accounting.lost) for r in results),
        ]
        print(f"| {name} | {len(results)} | " + " | ".join(map(str, sums)) + " |")
    for name, results in totals.items():
        bad = [r for r in results if r.integrity_after_kill != "ok" or r.pending_after_restart]
        print(f"{name}: integrity ok and nothing pending after restart in "
              f"{len(results) - len(bad)} of {len(results)} runs")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.crash", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--folder", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.folder is None:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="crash-") as scratch:
            asyncio.run(_main(args.rounds, Path(scratch)))
    else:
        asyncio.run(_main(args.rounds, args.folder))


if __name__ == "__main__":
    main()
