"""Crash safety: the bot as a real process, killed in the middle of a burst of uploads.

The rounds themselves live in ``bench/crash.py`` (which also runs them many times for the
figures in docs/RELIABILITY.md); here each runs once and its promises are checked:

- the database passes ``PRAGMA integrity_check`` right after the kill;
- every image Imgur accepted is on record with its deletehash, or deleted from Imgur, or is
  *unconfirmed*: Imgur stored it but the process died before the answer carried the
  deletehash back. Such an image can only come from an upload that was pending at the kill,
  and the ledger keeps that attempt (closed as interrupted, with its digest and size);
- nothing is lost without a trace, nothing stays pending after the restart, and no work is
  dropped silently: the restart names each interrupted file, and a second run finishes them.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from blake3 import blake3

from bench import crash
from tests.imgur_standin import ImgurStandIn


@pytest.fixture
async def roomy_imgur() -> AsyncIterator[ImgurStandIn]:
    """An Imgur stand-in whose quota a burst cannot spend."""
    async with ImgurStandIn(user_limit=10**6, client_limit=10**7, post_limit=10**6) as standin:
        yield standin


def file_hashes(folder: Path) -> set[str]:
    return {blake3(path.read_bytes()).hexdigest() for path in folder.iterdir()}


def assert_promises_kept(result: crash.CrashResult) -> None:
    books = result.accounting
    assert result.integrity_after_kill == "ok"
    assert result.pending_after_restart == 0
    assert books.lost == [], f"images on Imgur with no trace in the ledger: {books.lost}"
    assert books.accepted == books.recorded + books.deleted + len(books.unconfirmed)
    # Only an upload that was pending when the process died can leave an unconfirmed copy.
    assert len(books.unconfirmed) <= result.pending_after_kill


async def test_sigkill_mid_burst_from_the_command_line(
    roomy_imgur: ImgurStandIn, tmp_path: Path
) -> None:
    result = await crash.cli_round(roomy_imgur, tmp_path, sig=signal.SIGKILL)

    assert result.exit_code == -signal.SIGKILL
    assert result.in_flight_at_kill >= 1, "the kill must land while Imgur holds an upload"
    assert result.pending_after_kill >= 1
    assert_promises_kept(result)
    # The restart said which uploads were interrupted, by name, and then finished them all.
    assert result.interrupted
    assert result.warned == result.interrupted
    rows = crash.ledger_rows(tmp_path / "ledger.sqlite3")
    done = {row["digest"] for row in rows if row["state"] == "done"}
    assert done == file_hashes(tmp_path / "files")
    assert all(row["deletehash"] for row in rows if row["state"] == "done")


async def test_sigterm_mid_burst_lets_the_upload_in_flight_finish(
    roomy_imgur: ImgurStandIn, tmp_path: Path
) -> None:
    result = await crash.cli_round(roomy_imgur, tmp_path, sig=signal.SIGTERM)

    assert result.exit_code == 1
    assert result.in_flight_at_kill >= 1
    assert_promises_kept(result)
    # A catchable signal closes the window: the answer in flight was awaited and recorded.
    assert result.pending_after_kill == 0
    assert result.accounting.unconfirmed == []
    assert result.interrupted == []
    # Each file got a line: a link for those done, a reason for those never started.
    links = result.stdout.split()
    skipped = [line for line in result.stderr.splitlines() if "stopped before it was" in line]
    assert links
    assert skipped
    assert len(links) + len(skipped) == result.files, result.stderr


async def test_sigkill_mid_burst_of_http_uploads(roomy_imgur: ImgurStandIn, tmp_path: Path) -> None:
    result = await crash.http_round(roomy_imgur, tmp_path)

    assert result.exit_code == -signal.SIGKILL
    assert result.in_flight_at_kill >= 2
    assert_promises_kept(result)
    # Every caller got an answer: a link, or a broken connection it can retry.
    assert len(result.answers) == result.files
    assert "ok" in result.answers
    assert any(answer != "ok" for answer in result.answers)
    # The restart closed what the kill left pending, as interrupted.
    assert len(result.interrupted) == result.pending_after_kill
    # Its log, at DEBUG, never shows a deletehash, the client id or the endpoint's token.
    for image in roomy_imgur.images.values():
        assert image.deletehash not in result.stderr
    assert roomy_imgur.client_id not in result.stderr
    assert crash.HTTP_TOKEN not in result.stderr


def test_accounting_tells_recorded_deleted_unconfirmed_and_lost_apart() -> None:
    # The yardstick itself must be able to fail: one image of each kind.
    def image(image_id: str, sha: str, *, deleted: bool = False) -> object:
        class Image:
            pass

        made = Image()
        made.id, made.sha256, made.size = image_id, sha, 10  # type: ignore[attr-defined]
        made.deletehash = f"dh{image_id}"  # type: ignore[attr-defined]
        made.deleted = deleted  # type: ignore[attr-defined]
        return made

    rows = [
        {"imgur_id": "a", "deletehash": "dha", "state": "done", "digest": "b1", "size": 10},
        {"imgur_id": None, "deletehash": None, "state": "failed", "digest": "b3", "size": 10},
    ]
    images = [image("a", "1"), image("b", "2", deleted=True), image("c", "3"), image("d", "4")]

    digests = {sha: f"b{sha}" for sha in "1234"}  # the stand-in's names -> the ledger's

    books = crash.account(images, rows, digests)  # type: ignore[arg-type]

    assert (books.accepted, books.recorded, books.deleted) == (4, 1, 1)
    assert books.unconfirmed == ["c"]
    assert books.lost == ["d"]


async def test_sigterm_mid_burst_of_http_uploads_finishes_them(
    roomy_imgur: ImgurStandIn, tmp_path: Path
) -> None:
    result = await crash.http_round(roomy_imgur, tmp_path, sig=signal.SIGTERM)

    assert result.exit_code == 0
    assert result.in_flight_at_kill >= 2
    assert_promises_kept(result)
    assert result.pending_after_kill == 0
    assert result.accounting.unconfirmed == []
    # Requests already taken were finished: every link handed out is on record.
    assert len(result.answers) == result.files
    assert result.answers.count("ok") == result.accounting.recorded
    assert result.answers.count("ok") >= result.accounting.accepted - result.in_flight_at_kill
