"""The command line, run as a real process against the Imgur stand-in."""

import asyncio
import logging
import os
import pty
import re
import signal
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.cli import _NoTraceback
from tests import samples
from tests.imgur_standin import ImgurStandIn

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    code: int
    out: str
    err: str


@pytest.fixture
def cli_env(imgur: ImgurStandIn, tmp_path: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "IMGUR_CLIENT_ID": imgur.client_id,
        "IMGUR_API_URL": imgur.url,
        "DATABASE_PATH": str(tmp_path / "ledger.sqlite3"),
    }


async def run(env: dict[str, str], *args: str, cwd: Path) -> Run:
    # cwd is a scratch folder, so a developer's own .env never leaks into the test.
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args,
        cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode())


def png_file(folder: Path, name: str = "photo.png", seed: int = 0) -> Path:
    path = folder / name
    path.write_bytes(samples.png(seed=seed))
    return path


async def test_upload_prints_one_link_per_file_and_records_it(
    cli_env: dict[str, str], imgur: ImgurStandIn, tmp_path: Path
) -> None:
    first, second = png_file(tmp_path, "a.png", 1), png_file(tmp_path, "b.png", 2)

    result = await run(cli_env, "upload", str(first), str(second), "--title", "Hi", cwd=tmp_path)

    assert result.code == 0, result.err
    links = result.out.split()
    assert len(links) == 2
    assert all(link.startswith("https://i.imgur.com/") for link in links)
    assert [image.title for image in imgur.images.values()] == ["Hi", "Hi"]
    history = await run(cli_env, "history", cwd=tmp_path)
    assert all(link in history.out for link in links)


async def test_the_same_file_twice_calls_imgur_once_and_delete_removes_it(
    cli_env: dict[str, str], imgur: ImgurStandIn, tmp_path: Path
) -> None:
    path = png_file(tmp_path)

    first = await run(cli_env, "upload", str(path), cwd=tmp_path)
    second = await run(cli_env, "upload", str(path), cwd=tmp_path)
    assert first.out == second.out
    assert imgur.upload_calls == 1

    deleted = await run(cli_env, "delete", first.out.strip(), cwd=tmp_path)
    assert deleted.code == 0, deleted.err
    assert [image.deleted for image in imgur.images.values()] == [True]
    again = await run(cli_env, "delete", first.out.strip(), cwd=tmp_path)
    assert again.code == 1
    assert again.err.startswith("error: No live upload")


async def test_history_of_a_fresh_ledger_says_there_is_nothing_yet(
    cli_env: dict[str, str], imgur: ImgurStandIn, tmp_path: Path
) -> None:
    result = await run(cli_env, "history", cwd=tmp_path)

    assert (result.code, result.out, result.err) == (0, "", "no uploads on record yet\n")


async def test_a_link_of_another_site_never_deletes_the_upload_its_id_names(
    cli_env: dict[str, str], imgur: ImgurStandIn, tmp_path: Path
) -> None:
    link = (await run(cli_env, "upload", str(png_file(tmp_path)), cwd=tmp_path)).out.strip()
    imgur_id = link.rsplit("/", 1)[1].split(".")[0]

    other = await run(cli_env, "delete", f"https://example.com/{imgur_id}.png", cwd=tmp_path)
    gallery = await run(cli_env, "delete", f"https://imgur.com/{imgur_id}", cwd=tmp_path)

    assert other.code == 1
    assert (
        other.err == "error: That link is not on Imgur; give the Imgur link or id of the upload.\n"
    )
    assert gallery.code == 0, gallery.err
    assert [image.deleted for image in imgur.images.values()] == [True]


async def test_a_file_that_is_not_media_fails_with_one_line(
    cli_env: dict[str, str], imgur: ImgurStandIn, tmp_path: Path
) -> None:
    fake = tmp_path / "invoice.png"
    fake.write_bytes(b"PK\x03\x04" + bytes(100))

    result = await run(cli_env, "upload", str(fake), cwd=tmp_path)

    assert result.code == 1
    assert result.err.count("\n") == 1
    assert "not an image or video" in result.err
    assert "Traceback" not in result.err
    assert imgur.upload_calls == 0


@pytest.mark.parametrize(
    ("fault", "shape", "message"),
    [
        ("reject", "errors", "Imgur refused"),
        ("invalid_client", "errors", "IMGUR_CLIENT_ID"),
        ("rate_limited", "errors", "quota"),
        ("rate_limited", "nested", "quota"),
        ("rate_limited", "html", "quota"),
        ("html", "errors", "Imgur is unavailable"),
        ("empty", "errors", "Imgur is unavailable"),
        ("invalid_json", "errors", "Imgur did not confirm the upload"),
        ("drop", "errors", "Imgur"),  # "unavailable", or "did not confirm" once sent whole
        ("over_capacity_403", "errors", "Imgur is unavailable"),
    ],
)
async def test_every_imgur_error_shape_ends_in_one_clear_line(
    cli_env: dict[str, str],
    imgur: ImgurStandIn,
    tmp_path: Path,
    fault: str,
    shape: str,
    message: str,
) -> None:
    imgur.rate_limit_shape = shape  # type: ignore[assignment]
    imgur.fail_next(fault, times=3)  # type: ignore[arg-type]

    result = await run(cli_env, "upload", str(png_file(tmp_path)), cwd=tmp_path)

    assert result.code == 1
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert imgur.client_id not in result.err + result.out


async def test_check_shows_the_quota(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = await run(cli_env, "check", cwd=tmp_path)

    assert result.code == 0, result.err
    assert "client id accepted" in result.out
    assert "12" in result.out


async def test_a_wrong_client_id_fails_the_check(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = await run({**cli_env, "IMGUR_CLIENT_ID": "wrong"}, "check", cwd=tmp_path)

    assert result.code == 1
    assert "IMGUR_CLIENT_ID" in result.err
    assert "wrong" not in result.err


async def test_missing_settings_exit_2_naming_them(tmp_path: Path) -> None:
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)}

    no_client = await run(env, "upload", "x.png", cwd=tmp_path)
    no_token = await run({**env, "IMGUR_CLIENT_ID": "abc"}, cwd=tmp_path)

    assert (no_client.code, no_token.code) == (2, 2)
    assert no_client.err.startswith("error: IMGUR_CLIENT_ID is not set")
    assert no_token.err.startswith("error: DISCORD_TOKEN is not set")
    assert len(no_token.err.strip().splitlines()) == 1


async def test_bad_usage_exits_2(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = await run(cli_env, "upload", cwd=tmp_path)

    assert result.code == 2
    assert "usage:" in result.err


@pytest.mark.parametrize(
    "args",
    [
        ("history", "--limit", "0"),
        ("history", "--limit", "-5"),
        ("history", "--limit", "99999999999999999999"),
        ("delete", ""),
        ("delete", "https://i.imgur.com/"),
        ("delete", "a" * 5000),
    ],
)
async def test_out_of_range_or_malformed_arguments_are_bad_usage(
    cli_env: dict[str, str], tmp_path: Path, args: tuple[str, ...]
) -> None:
    result = await run(cli_env, *args, cwd=tmp_path)

    assert result.code == 2
    assert "usage:" in result.err
    assert "Traceback" not in result.err
    assert "a" * 100 not in result.err


async def test_delete_takes_the_id_from_a_link_with_a_path_before_it(
    cli_env: dict[str, str], imgur: ImgurStandIn, tmp_path: Path
) -> None:
    result = await run(cli_env, "delete", "../../nosuch1.png", cwd=tmp_path)

    assert result.code == 1
    assert result.err == "error: No live upload 'nosuch1' is on record here.\n"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IMGUR_CLIENT_ID", "abc\ndef"),
        ("MAX_IMAGE_MB", "nan"),
        ("IMGUR_API_URL", "http://127.0.0.1:99999"),
        ("DATABASE_PATH", "."),
    ],
)
async def test_a_malformed_setting_exits_2_with_one_line_naming_it(
    cli_env: dict[str, str], imgur: ImgurStandIn, tmp_path: Path, name: str, value: str
) -> None:
    result = await run({**cli_env, name: value}, "upload", str(png_file(tmp_path)), cwd=tmp_path)

    assert result.code == 2
    assert result.err.startswith(f"error: {name} ")
    assert len(result.err.strip().splitlines()) == 1, result.err
    assert imgur.upload_calls == 0


async def test_a_ledger_that_cannot_be_opened_is_one_line_naming_the_setting(
    cli_env: dict[str, str], imgur: ImgurStandIn, tmp_path: Path
) -> None:
    unreachable = "/proc/no-such-process/ledger.sqlite3"

    result = await run({**cli_env, "DATABASE_PATH": unreachable}, "history", cwd=tmp_path)

    assert result.code == 1
    assert result.err.strip().splitlines() == [
        "error: The upload records could not be opened: the folder /proc/no-such-process "
        "cannot be created (No such file or directory); check DATABASE_PATH."
    ]


@pytest.mark.parametrize("ledger", ["newer", "corrupt", "foreign"])
async def test_a_ledger_that_cannot_be_used_is_one_line_saying_why(
    cli_env: dict[str, str], imgur: ImgurStandIn, tmp_path: Path, ledger: str
) -> None:
    # Opening failures were also logged at ERROR: a second line, saying the same thing.
    path = tmp_path / "ledger.sqlite3"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE uploads (something_else TEXT)")
    if ledger == "newer":
        connection.execute("PRAGMA user_version = 99")
    connection.commit()
    connection.close()
    if ledger == "corrupt":
        data = path.read_bytes()
        path.write_bytes(data[:100] + b"\xff" * 200 + data[300:])

    result = await run(cli_env, "upload", str(png_file(tmp_path)), cwd=tmp_path)

    assert result.code == 1
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith("error: The upload records ")
    if ledger == "newer":
        assert "newer version of the bot" in lines[0]
    if ledger == "corrupt":
        # SQLite's own reason, whichever it is for this damage, then what the setting needs.
        assert re.search(r"\(.+\); DATABASE_PATH must name a SQLite database", lines[0])
    if ledger == "foreign":
        assert "(table uploads already exists)" in lines[0]
    assert imgur.upload_calls == 0


async def test_a_lock_file_the_bot_cannot_open_is_one_line_naming_it(
    cli_env: dict[str, str], imgur: ImgurStandIn, tmp_path: Path
) -> None:
    # A lock left by a run as root is the common case; as root, a folder in its place does.
    (tmp_path / "ledger.sqlite3.lock").mkdir()

    result = await run(cli_env, "history", cwd=tmp_path)

    assert result.code == 1
    assert result.err.strip().splitlines() == [
        f"error: The upload records' lock file {tmp_path}/ledger.sqlite3.lock cannot be opened "
        "(Is a directory); it must be a file the bot can write, beside DATABASE_PATH."
    ]


async def test_an_interrupted_command_says_so_in_one_line(
    cli_env: dict[str, str], imgur: ImgurStandIn, tmp_path: Path
) -> None:
    imgur.fail_next("slow", path="/3/credits", delay=30)
    # A job started in the background of a shell inherits SIGINT ignored; a terminal's is not.
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "check",
        cwd=tmp_path, env=cli_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    async with asyncio.timeout(30):
        while not imgur.requests:  # the stand-in tells waiters only once it has answered
            await asyncio.sleep(0.05)

    process.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(process.communicate(), timeout=20)

    assert process.returncode == 1
    assert err.decode() == "error: interrupted before it finished.\n"
    assert out == b""


def _drain(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the other end of the terminal is closed
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


@pytest.mark.parametrize("refused", [False, True])
async def test_progress_on_a_terminal_is_wiped_before_the_outcome(
    cli_env: dict[str, str], imgur: ImgurStandIn, tmp_path: Path, refused: bool
) -> None:
    # The progress line is redrawn with "\r" and no newline: unless wiped, the error line (or
    # the shell prompt) is written onto its end.
    if refused:
        imgur.fail_next("reject", path="/3/image")
    path = tmp_path / "big.png"
    path.write_bytes(samples.big_png(6_000_000, seed=7))
    terminal, stderr = pty.openpty()

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", "upload", str(path),
        cwd=tmp_path, env=cli_env, stdout=asyncio.subprocess.PIPE, stderr=stderr,
    )  # fmt: skip
    os.close(stderr)
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    shown = (await asyncio.to_thread(_drain, terminal)).decode()

    assert "upload big.png: 100% 6.0 MB" in shown
    if refused:
        assert process.returncode == 1
        assert re.search(r"MB\x1b\[K\r\x1b\[Kerror: .*big\.png: Imgur refused", shown), shown
    else:
        assert process.returncode == 0
        assert shown.endswith("\r\x1b[K"), repr(shown[-40:])
        assert out.decode().startswith("https://i.imgur.com/")


async def test_an_api_address_with_a_wrong_path_is_pointed_at(
    cli_env: dict[str, str], imgur: ImgurStandIn, tmp_path: Path
) -> None:
    env = {**cli_env, "IMGUR_API_URL": imgur.url + "/3"}  # every route becomes /3/3/...

    result = await run(env, "upload", str(png_file(tmp_path)), cwd=tmp_path)

    assert result.code == 1
    assert result.err.endswith("Imgur has no such API route (HTTP 404); check IMGUR_API_URL.\n")
    assert len(result.err.splitlines()) == 1


def test_a_one_shot_commands_log_lines_keep_their_message_and_drop_the_traceback() -> None:
    # The bot's log keeps tracebacks; a one-shot command's stderr is for the one line that matters.
    try:
        raise RuntimeError("the disk is full")
    except RuntimeError:
        record = logging.LogRecord(
            "bot.ledger",
            logging.ERROR,
            __file__,
            1,
            "ledger: %s failed",
            ("commit",),
            sys.exc_info(),
        )

    assert _NoTraceback().filter(record)
    line = logging.Formatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert line == "ERROR bot.ledger: ledger: commit failed"
