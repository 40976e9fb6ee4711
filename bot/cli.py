"""The command line: ``python -m bot [run | upload | delete | history | check | serve]``.

Exit status: 0 success, 1 the operation failed (one line on stderr says why), 2 bad usage or
settings. Expected failures never print a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bot.errors import NotFound, RehostError
from bot.imgur import ImageReference
from bot.ledger import Origin
from bot.logs import setup_logging
from bot.services import Services, open_services
from bot.settings import Settings, SettingsError, load_settings
from bot.sources import FileSource

log = logging.getLogger(__name__)

OK, FAILED, USAGE = 0, 1, 2
HOLD_BACK_LIMIT = 60.0  # seconds an upload may wait for Imgur's quota before we give up
MAX_HISTORY = 10_000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bot",
        description="Re-host images and videos on Imgur, from Discord or the command line.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("run", help="start the Discord bot (the default)")
    upload = commands.add_parser("upload", help="upload files and print one link per file")
    upload.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    upload.add_argument("--title", help="title shown on Imgur")
    delete = commands.add_parser("delete", help="delete an upload through its deletehash")
    delete.add_argument("target", metavar="LINK_OR_ID", type=_image_reference)
    history = commands.add_parser("history", help="list recent uploads")
    history.add_argument("--limit", type=_history_limit, default=20, metavar="N")
    commands.add_parser("check", help="validate the settings and show Imgur's quota")
    commands.add_parser("serve", help="run only the HTTP upload endpoint")
    return parser


def _image_reference(target: str) -> ImageReference:
    try:
        return ImageReference.parse(target)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _history_limit(raw: str) -> int:
    try:
        limit = int(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, not {raw[:20]!r}") from None
    if not 1 <= limit <= MAX_HISTORY:
        raise argparse.ArgumentTypeError(f"expected a number from 1 to {MAX_HISTORY}")
    return limit


class _NoTraceback(logging.Filter):
    """Keeps a one-shot command's log lines to their message: tracebacks are for DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "run"
    try:
        settings = load_settings()
        if command == "run":
            settings.require_discord_token()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE

    # One-shot commands keep stderr to the one line that matters, unless asked to debug.
    quiet = command not in {"run", "serve"} and settings.log_level != "DEBUG"
    setup_logging(
        "ERROR" if quiet else settings.log_level,
        [settings.discord_token, settings.imgur_client_id, settings.imgur_access_token,
         settings.http_token],
    )  # fmt: skip
    if quiet:
        for handler in logging.getLogger().handlers:
            if getattr(handler, "_rehost", False):  # ours, from setup_logging; no one else's
                handler.addFilter(_NoTraceback())
    try:
        return asyncio.run(_dispatch(command, args, settings))
    except KeyboardInterrupt:
        if quiet or command not in {"run", "serve"}:
            print("error: interrupted before it finished.", file=sys.stderr)
        return FAILED
    except RehostError as exc:
        print(f"error: {exc.user_message}", file=sys.stderr)
        return FAILED


async def _dispatch(command: str, args: argparse.Namespace, settings: Settings) -> int:
    if command == "run":
        from bot.discord_bot import run_bot

        return await run_bot(settings)
    if command == "serve":
        from bot.web import serve

        return await serve(settings)

    async with open_services(settings) as services:
        _warn_interrupted(services)
        if command == "upload":
            return await _upload(services, args.paths, args.title)
        if command == "delete":
            return await _delete(services, args.target)
        if command == "history":
            return await _history(services, args.limit)
        return await _check(services)


def _warn_interrupted(services: Services) -> None:
    """One line per upload a crash left unfinished, so nobody's file is dropped silently."""
    for upload, origin in services.pipeline.interrupted:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(upload.created_at))
        name = _shown(origin.filename or "a file")
        print(
            f"warning: the upload of {name} ({origin.door}, started {when}) was interrupted "
            "before Imgur answered; it has no link: upload it again",
            file=sys.stderr,
        )


async def _upload(services: Services, paths: Sequence[Path], title: str | None) -> int:
    # SIGINT or SIGTERM lets the file in flight finish, so Imgur's answer (and with it the
    # deletehash) is recorded rather than lost with the process; a second signal stops at once.
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def stop() -> None:
        stopping.set()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    try:
        return await _upload_each(services, paths, title, stopping)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _upload_each(
    services: Services, paths: Sequence[Path], title: str | None, stopping: asyncio.Event
) -> int:
    status = OK
    for index, path in enumerate(paths):
        if stopping.is_set():
            for skipped in paths[index:]:
                print(f"error: {_shown(skipped)}: stopped before it was uploaded", file=sys.stderr)
            return FAILED
        origin = Origin(door="cli", filename=path.name, title=title)
        held_back = _held_back(services, origin)
        if held_back is not None:
            for skipped in paths[index:]:
                print(f"error: {_shown(skipped)}: {held_back}", file=sys.stderr)
            return FAILED
        progress = _progress_printer(path.name)
        try:
            rehost = await services.pipeline.rehost(FileSource(path), origin, on_progress=progress)
        except RehostError as exc:
            failure: str | None = exc.user_message
        else:
            failure = None
        finally:
            if progress is not None:
                progress.clear()
        if failure is not None:
            print(f"error: {_shown(path)}: {failure}", file=sys.stderr)
            status = FAILED
            continue
        print(rehost.upload.link, flush=True)
    return status


def _held_back(services: Services, origin: Origin) -> str | None:
    """Why an upload cannot start within a minute (Imgur's quota), or None.

    The bot queues such uploads until the quota refills; a command line should not hang for
    an hour without a word, so it says when to try again instead.
    """
    start = services.pipeline.scheduler.estimate(origin)
    if start is None or start - time.time() < HOLD_BACK_LIMIT:
        return None
    shown = time.localtime(start)
    today = time.localtime()[:3] == shown[:3]
    when = time.strftime("%H:%M" if today else "%Y-%m-%d %H:%M", shown)
    return f"not uploaded: Imgur's upload quota is spent until about {when}; try again then."


def _shown(path: Path | str) -> str:
    """A path fit for one line of a terminal: control and bidi characters escaped."""
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(path))


async def _delete(services: Services, target: ImageReference) -> int:
    upload = await services.ledger.get_upload(target.imgur_id)
    if upload is None or upload.state != "done":
        raise NotFound(f"No live upload {target.imgur_id!r} is on record here.")
    if not target.names(upload.link):
        raise NotFound("That link is not on Imgur; give the Imgur link or id of the upload.")
    await services.pipeline.delete_upload(upload, by=None, reason="deleted from the command line")
    print(f"deleted {upload.link}")
    return OK


async def _history(services: Services, limit: int) -> int:
    rehosts = await services.ledger.recent_rehosts(limit=limit)
    if not rehosts:
        print("no uploads on record yet", file=sys.stderr)
    for rehost in rehosts:
        upload = rehost.upload
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(rehost.created_at))
        state = "deleted" if rehost.deleted_at or upload.state == "deleted" else upload.state
        print(
            f"{when}  {upload.link or '-'}  {upload.kind:<8} {upload.size / 1e6:7.2f} MB  "
            f"{rehost.origin.door:<7} {state}{'  (reused)' if rehost.reused else ''}"
        )
    return OK


async def _check(services: Services) -> int:
    credits = await services.imgur.credits()
    reset = time.strftime("%H:%M", time.localtime(credits.user_reset))
    print("settings: ok")
    print(f"database: {services.settings.database_path} (schema {services.ledger.schema_version})")
    print(
        f"imgur: client id accepted; {credits.client_remaining}/{credits.client_limit} "
        f"application credits left today, {credits.user_remaining}/{credits.user_limit} "
        f"for this address until {reset}"
    )
    return OK


class _Progress:
    """Progress on stderr for files over 5 MB: one terminal line, rewritten, then cleared."""

    def __init__(self, name: str) -> None:
        self._name = _shown(name)
        self._last = 0.0
        self._shown = False

    def __call__(self, stage: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        finished = total is not None and done >= total
        if done < 5_000_000 or (now - self._last < 0.2 and not finished):
            return
        self._last = now
        self._shown = True
        share = f" {done * 100 // total:3d}%" if total else ""
        line = f"\r{stage} {self._name}:{share} {done / 1e6:.1f} MB\x1b[K"
        print(line, end="", file=sys.stderr, flush=True)

    def clear(self) -> None:
        """Wipe the progress line, so the link or the error does not land at its end."""
        if self._shown:
            print("\r\x1b[K", end="", file=sys.stderr, flush=True)
            self._shown = False


def _progress_printer(name: str) -> _Progress | None:
    """A progress line for ``name``, when stderr is a terminal."""
    return _Progress(name) if sys.stderr.isatty() else None
