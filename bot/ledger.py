"""The ledger: every Imgur upload with its deletehash, every rehost, albums and guild settings.

This SQLite file is the only place a deletehash lives. Losing a row means an image on Imgur
that nobody can delete any more, so the rules here are strict:

- an upload is put on record (``pending``) *before* Imgur is called and completed after, in
  one transaction together with its first rehost;
- every write is committed (``synchronous = FULL``: on disk) before its caller hears back, and
  is shielded from the caller's cancellation, so a Discord interaction that times out cannot
  cut a record in half;
- one connection on one thread: each call is one function run there, a write inside its own
  savepoint of a ``BEGIN IMMEDIATE`` transaction, so a read never sees unfinished work, and a
  read sees every write handed over before it (a reply recorded, then looked up);
- every value is a bound parameter; the SQL text is only ever built from fixed fragments.

Writes that wait at the same moment share one transaction, and so one fsync (group commit):
each keeps its own savepoint, so one that fails is undone alone and gets its own error.

An *upload* is one image on Imgur (one deletehash). A *rehost* is one request (Discord, the
command line or HTTP) that produced an upload or reused a live upload of the same bytes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Generic, Literal, TypeVar, get_args

from bot.errors import NotFound, RehostError

log = logging.getLogger(__name__)

T = TypeVar("T")

Door = Literal["discord", "cli", "http"]
_Params = Sequence[Any] | Mapping[str, Any]

UPLOAD_KINDS: Final = frozenset({"image", "animated", "video"})
UPLOAD_STATES: Final = frozenset({"pending", "done", "deleted", "failed"})
_DIGEST: Final = re.compile(r"[0-9a-fA-F]{64}")

READ_FAILED: Final = "The upload records could not be read right now; please try again."
WRITE_FAILED: Final = "The change could not be saved to the upload records; please try again."
BEGIN_FAILED: Final = "The upload record could not be saved; nothing was published."


class LedgerError(RehostError):
    """The ledger could not be read or written; the message is safe to show."""


class RecordNotFound(LedgerError, NotFound):
    """The upload, rehost or album named is not in the ledger."""


class RecordStateError(LedgerError):
    """The record is not in a state that allows the change (e.g. reusing a deleted upload)."""


@dataclass(frozen=True)
class Origin:
    """Where a rehost came from."""

    door: Door
    guild_id: int | None = None
    channel_id: int | None = None
    message_id: int | None = None
    attachment_id: int | None = None
    owner_id: int | None = None
    requester_id: int | None = None
    filename: str | None = None
    title: str | None = None
    auto: bool = False


@dataclass(frozen=True)
class Upload:
    """One image on Imgur; ``deletehash`` stays out of ``repr``."""

    id: int
    imgur_id: str | None
    link: str | None
    deletehash: str | None = field(repr=False)
    kind: str
    mime: str
    size: int
    digest: str  # BLAKE3 of the bytes (SHA-256 for uploads recorded before schema 3)
    state: str
    created_at: float
    completed_at: float | None
    deleted_at: float | None
    deleted_by: int | None
    delete_reason: str | None


@dataclass(frozen=True)
class Rehost:
    """One request that produced or reused an upload."""

    id: int
    upload: Upload
    origin: Origin
    reused: bool
    created_at: float
    reply_channel_id: int | None
    reply_message_id: int | None
    deleted_at: float | None


@dataclass(frozen=True)
class Album:
    """An anonymous Imgur album; ``deletehash`` stays out of ``repr``."""

    id: int
    imgur_id: str
    link: str
    deletehash: str = field(repr=False)
    guild_id: int | None
    message_id: int | None
    created_at: float
    deleted_at: float | None


@dataclass(frozen=True)
class GuildSettings:
    """Per-guild switches; a guild without a row gets these defaults."""

    guild_id: int
    delete_with_source: bool = True
    allow_nsfw: bool = False


# --- schema ---------------------------------------------------------------------------------
#
# MIGRATIONS[n] takes a database from version n to n + 1; PRAGMA user_version holds the version.
# A step that has shipped is never edited: change the schema by appending a step.

_ORIGIN_COLUMNS = """
    door TEXT NOT NULL CHECK (door IN ('discord', 'cli', 'http')),
    guild_id INTEGER,
    channel_id INTEGER,
    message_id INTEGER,
    attachment_id INTEGER,
    owner_id INTEGER,
    requester_id INTEGER,
    filename TEXT,
    title TEXT,
    auto INTEGER NOT NULL DEFAULT 0 CHECK (auto IN (0, 1))"""

_V1_INITIAL: Final[tuple[str, ...]] = (
    # The origin columns on uploads are the request that caused the upload: a pending row
    # needs them for reconciliation, and the first rehost is copied from them on completion.
    # `duplicate` marks a second upload of the same bytes that raced the first to Imgur.
    """
    CREATE TABLE uploads (
        id INTEGER PRIMARY KEY,
        imgur_id TEXT,
        link TEXT,
        deletehash TEXT,
        kind TEXT NOT NULL CHECK (kind IN ('image', 'animated', 'video')),
        mime TEXT NOT NULL,
        size INTEGER NOT NULL CHECK (size >= 0),
        sha256 TEXT NOT NULL CHECK (length(sha256) = 64),
        state TEXT NOT NULL DEFAULT 'pending'
            CHECK (state IN ('pending', 'done', 'deleted', 'failed')),
        duplicate INTEGER NOT NULL DEFAULT 0 CHECK (duplicate IN (0, 1)),
        created_at REAL NOT NULL,
        completed_at REAL,
        deleted_at REAL,
        deleted_by INTEGER,
        delete_reason TEXT,
        fail_reason TEXT,"""
    + _ORIGIN_COLUMNS
    + """,
        CHECK (state NOT IN ('done', 'deleted')
               OR (imgur_id IS NOT NULL AND link IS NOT NULL AND deletehash IS NOT NULL))
    )
    """,
    """
    CREATE TABLE rehosts (
        id INTEGER PRIMARY KEY,
        upload_id INTEGER NOT NULL REFERENCES uploads (id),
        reused INTEGER NOT NULL CHECK (reused IN (0, 1)),
        created_at REAL NOT NULL,
        reply_channel_id INTEGER,
        reply_message_id INTEGER,
        deleted_at REAL,
        deleted_by INTEGER,
        delete_reason TEXT,"""
    + _ORIGIN_COLUMNS
    + """
    )
    """,
    """
    CREATE TABLE albums (
        id INTEGER PRIMARY KEY,
        imgur_id TEXT NOT NULL UNIQUE,
        link TEXT NOT NULL,
        deletehash TEXT NOT NULL,
        created_at REAL NOT NULL,
        deleted_at REAL,"""
    + _ORIGIN_COLUMNS
    + """
    )
    """,
    """
    CREATE TABLE album_uploads (
        album_id INTEGER NOT NULL REFERENCES albums (id),
        position INTEGER NOT NULL,
        upload_id INTEGER NOT NULL REFERENCES uploads (id),
        PRIMARY KEY (album_id, position)
    )
    """,
    """
    CREATE TABLE guild_settings (
        guild_id INTEGER PRIMARY KEY,
        delete_with_source INTEGER NOT NULL CHECK (delete_with_source IN (0, 1)),
        allow_nsfw INTEGER NOT NULL CHECK (allow_nsfw IN (0, 1)),
        updated_at REAL NOT NULL
    )
    """,
    """
    CREATE TABLE auto_channels (
        guild_id INTEGER NOT NULL,
        channel_id INTEGER NOT NULL,
        added_by INTEGER NOT NULL,
        added_at REAL NOT NULL,
        PRIMARY KEY (guild_id, channel_id)
    ) WITHOUT ROWID
    """,
)

_V2_INDEXES: Final[tuple[str, ...]] = (
    # Version 1 had no unique index, so two live uploads of the same bytes could exist: keep
    # the oldest as the one to reuse and mark the rest as duplicates before enforcing it.
    """
    UPDATE uploads SET duplicate = 1
    WHERE state = 'done' AND duplicate = 0
      AND id NOT IN (
          SELECT min(id) FROM uploads WHERE state = 'done' AND duplicate = 0 GROUP BY sha256
      )
    """,
    """
    CREATE UNIQUE INDEX uploads_live_sha256 ON uploads (sha256)
    WHERE state = 'done' AND duplicate = 0
    """,
    "CREATE UNIQUE INDEX uploads_imgur_id ON uploads (imgur_id)",
    "CREATE INDEX uploads_pending ON uploads (id) WHERE state = 'pending'",
    "CREATE INDEX uploads_created ON uploads (created_at)",
    "CREATE INDEX rehosts_message ON rehosts (message_id)",
    "CREATE INDEX rehosts_guild_time ON rehosts (guild_id, created_at)",
    "CREATE INDEX rehosts_created ON rehosts (created_at)",
    "CREATE INDEX rehosts_upload ON rehosts (upload_id)",
    "CREATE INDEX albums_message ON albums (message_id)",
    "CREATE INDEX album_uploads_upload ON album_uploads (upload_id)",
)

_V3_BLAKE3: Final[tuple[str, ...]] = (
    # Bytes are told apart by their BLAKE3 digest from here on: on the same CPU it hashes
    # about five times faster than SHA-256 (see Spool), and every byte is hashed. Rows
    # written before keep their SHA-256 digest, marked as such; a new post of those bytes
    # has another digest, so it uploads afresh once instead of reusing them.
    "ALTER TABLE uploads RENAME COLUMN sha256 TO digest",
    """
    ALTER TABLE uploads ADD COLUMN digest_algorithm TEXT NOT NULL DEFAULT 'sha256'
        CHECK (digest_algorithm IN ('sha256', 'blake3'))
    """,
    "DROP INDEX uploads_live_sha256",
    """
    CREATE UNIQUE INDEX uploads_live_digest ON uploads (digest)
    WHERE state = 'done' AND duplicate = 0
    """,
)

MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (_V1_INITIAL, _V2_INDEXES, _V3_BLAKE3)
SCHEMA_VERSION: Final = len(MIGRATIONS)

# --- row shapes -----------------------------------------------------------------------------

_UPLOAD_FIELDS = """
    u.id AS u_id, u.imgur_id AS u_imgur_id, u.link AS u_link, u.deletehash AS u_deletehash,
    u.kind AS u_kind, u.mime AS u_mime, u.size AS u_size, u.digest AS u_digest,
    u.state AS u_state, u.created_at AS u_created_at, u.completed_at AS u_completed_at,
    u.deleted_at AS u_deleted_at, u.deleted_by AS u_deleted_by,
    u.delete_reason AS u_delete_reason"""

_UPLOAD_ORIGIN_FIELDS = """
    u.door AS o_door, u.guild_id AS o_guild_id, u.channel_id AS o_channel_id,
    u.message_id AS o_message_id, u.attachment_id AS o_attachment_id,
    u.owner_id AS o_owner_id, u.requester_id AS o_requester_id, u.filename AS o_filename,
    u.title AS o_title, u.auto AS o_auto"""

_REHOST_FIELDS = """
    r.id AS r_id, r.reused AS r_reused, r.created_at AS r_created_at,
    r.reply_channel_id AS r_reply_channel_id, r.reply_message_id AS r_reply_message_id,
    r.deleted_at AS r_deleted_at,
    r.door AS o_door, r.guild_id AS o_guild_id, r.channel_id AS o_channel_id,
    r.message_id AS o_message_id, r.attachment_id AS o_attachment_id,
    r.owner_id AS o_owner_id, r.requester_id AS o_requester_id, r.filename AS o_filename,
    r.title AS o_title, r.auto AS o_auto"""

_SELECT_UPLOAD = "SELECT" + _UPLOAD_FIELDS + " FROM uploads AS u "
_SELECT_PENDING = (
    "SELECT" + _UPLOAD_FIELDS + "," + _UPLOAD_ORIGIN_FIELDS + " FROM uploads AS u "
    "WHERE u.state = 'pending' ORDER BY u.id"
)
_SELECT_REHOST = (
    "SELECT" + _REHOST_FIELDS + "," + _UPLOAD_FIELDS + " "
    "FROM rehosts AS r JOIN uploads AS u ON u.id = r.upload_id "
)
_SELECT_ALBUM = (
    "SELECT id, imgur_id, link, deletehash, guild_id, message_id, created_at, deleted_at "
    "FROM albums "
)

# Inserting a rehost: its own columns, then the origin's (the same names on every table).
_INSERT_REHOST = """
    INSERT INTO rehosts (
        upload_id, reused, created_at, door, guild_id, channel_id, message_id, attachment_id,
        owner_id, requester_id, filename, title, auto
    ) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

# A new upload, pending until Imgur answers: its own columns, then the origin's.
_INSERT_PENDING = """
    INSERT INTO uploads (
        kind, mime, size, digest, digest_algorithm, state, created_at, door, guild_id,
        channel_id, message_id, attachment_id, owner_id, requester_id, filename, title, auto
    ) VALUES (?, ?, ?, ?, 'blake3', 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

# The upload offered for reuse: done, not deleted, not a duplicate.
_SELECT_LIVE = _SELECT_UPLOAD + "WHERE u.digest = ? AND u.state = 'done' AND u.duplicate = 0"

# The upload to complete, its origin, and whether a live upload of the same bytes exists.
_RIVAL_EXISTS = """
    EXISTS (
        SELECT 1 FROM uploads AS other
        WHERE other.digest = u.digest AND other.state = 'done' AND other.duplicate = 0
          AND other.id != u.id
    ) AS rival"""
_SELECT_TO_COMPLETE = (
    "SELECT" + _UPLOAD_FIELDS + "," + _UPLOAD_ORIGIN_FIELDS + "," + _RIVAL_EXISTS + " "
    "FROM uploads AS u WHERE u.id = ?"
)
_SELECT_FIRST_REHOST = (
    _SELECT_REHOST + "WHERE r.upload_id = ? AND r.reused = 0 ORDER BY r.id LIMIT 1"
)

# Lists of ids are bound as one JSON array (see _id_list) and unpacked in SQL with
# `IN (SELECT value FROM json_each(?))`, so the SQL text never grows with the number of ids.


def _upload_from(row: sqlite3.Row) -> Upload:
    return Upload(
        id=row["u_id"],
        imgur_id=row["u_imgur_id"],
        link=row["u_link"],
        deletehash=row["u_deletehash"],
        kind=row["u_kind"],
        mime=row["u_mime"],
        size=row["u_size"],
        digest=row["u_digest"],
        state=row["u_state"],
        created_at=row["u_created_at"],
        completed_at=row["u_completed_at"],
        deleted_at=row["u_deleted_at"],
        deleted_by=row["u_deleted_by"],
        delete_reason=row["u_delete_reason"],
    )


def _origin_from(row: sqlite3.Row) -> Origin:
    return Origin(
        door=row["o_door"],
        guild_id=row["o_guild_id"],
        channel_id=row["o_channel_id"],
        message_id=row["o_message_id"],
        attachment_id=row["o_attachment_id"],
        owner_id=row["o_owner_id"],
        requester_id=row["o_requester_id"],
        filename=row["o_filename"],
        title=row["o_title"],
        auto=bool(row["o_auto"]),
    )


def _rehost_from(row: sqlite3.Row) -> Rehost:
    return Rehost(
        id=row["r_id"],
        upload=_upload_from(row),
        origin=_origin_from(row),
        reused=bool(row["r_reused"]),
        created_at=row["r_created_at"],
        reply_channel_id=row["r_reply_channel_id"],
        reply_message_id=row["r_reply_message_id"],
        deleted_at=row["r_deleted_at"],
    )


def _new_rehost(
    rehost_id: int, upload: Upload, origin: Origin, *, reused: bool, created_at: float
) -> Rehost:
    """A rehost just inserted, built from the values written rather than read back."""
    return Rehost(
        id=rehost_id,
        upload=upload,
        origin=origin,
        reused=reused,
        created_at=created_at,
        reply_channel_id=None,
        reply_message_id=None,
        deleted_at=None,
    )


def _album_from(row: sqlite3.Row) -> Album:
    return Album(
        id=row["id"],
        imgur_id=row["imgur_id"],
        link=row["link"],
        deletehash=row["deletehash"],
        guild_id=row["guild_id"],
        message_id=row["message_id"],
        created_at=row["created_at"],
        deleted_at=row["deleted_at"],
    )


def _origin_values(origin: Origin) -> tuple[Any, ...]:
    if origin.door not in get_args(Door):
        raise ValueError(f"unknown door {origin.door!r}")
    return (
        origin.door,
        origin.guild_id,
        origin.channel_id,
        origin.message_id,
        origin.attachment_id,
        origin.owner_id,
        origin.requester_id,
        origin.filename,
        origin.title,
        int(origin.auto),
    )


def _id_list(ids: Sequence[int]) -> str:
    return json.dumps([int(i) for i in ids])


def _like_pattern(text: str) -> str:
    """``%text%`` for LIKE with ESCAPE '\\': the person's % and _ match only themselves."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _check_kind(kind: str) -> None:
    if kind not in UPLOAD_KINDS:
        raise ValueError(f"unknown upload kind {kind!r}")


def _normal_digest(digest: str) -> str:
    if not _DIGEST.fullmatch(digest):
        raise ValueError("a digest must be 64 hexadecimal characters")
    return digest.lower()


# --- statements: plain functions run on the database thread ---------------------------------


def _fetchone(db: sqlite3.Connection, sql: str, params: _Params) -> sqlite3.Row | None:
    row: sqlite3.Row | None = db.execute(sql, params).fetchone()
    return row


def _fetchall(db: sqlite3.Connection, sql: str, params: _Params) -> list[sqlite3.Row]:
    return db.execute(sql, params).fetchall()


def _change(db: sqlite3.Connection, sql: str, params: _Params) -> int:
    """Run one INSERT/UPDATE/DELETE; the number of rows it touched."""
    return db.execute(sql, params).rowcount


def _insert(db: sqlite3.Connection, sql: str, params: _Params) -> int:
    row_id = db.execute(sql, params).lastrowid
    if row_id is None:  # pragma: no cover - sqlite always reports it after an INSERT
        raise sqlite3.DatabaseError("INSERT reported no row id")
    return row_id


def _rehost_by_id(db: sqlite3.Connection, rehost_id: int) -> Rehost | None:
    row = _fetchone(db, _SELECT_REHOST + "WHERE r.id = ?", (rehost_id,))
    return _rehost_from(row) if row is not None else None


def _count_existing(db: sqlite3.Connection, table: str, ids: Sequence[int]) -> int:
    sql = {
        "rehosts": "SELECT count(*) FROM rehosts WHERE id IN (SELECT value FROM json_each(?))",
        "uploads": "SELECT count(*) FROM uploads WHERE id IN (SELECT value FROM json_each(?))",
    }[table]
    row = _fetchone(db, sql, (_id_list(ids),))
    assert row is not None
    return int(row[0])


def _settings_in(db: sqlite3.Connection, guild_id: int) -> GuildSettings:
    row = _fetchone(
        db,
        "SELECT delete_with_source, allow_nsfw FROM guild_settings WHERE guild_id = ?",
        (guild_id,),
    )
    if row is None:
        return GuildSettings(guild_id=guild_id)
    return GuildSettings(
        guild_id=guild_id,
        delete_with_source=bool(row["delete_with_source"]),
        allow_nsfw=bool(row["allow_nsfw"]),
    )


# --- opening: on the database thread --------------------------------------------------------


def _open_database(path: Path, busy_timeout: float) -> tuple[sqlite3.Connection, int]:
    """Connect, set the connection up and migrate; the connection and its schema version."""
    # The error says all there is to say; it is reported once, by whoever opened the ledger.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        log.debug("cannot create the directory for the ledger at %s", path, exc_info=True)
        raise LedgerError(
            f"The upload records could not be opened: the folder {path.parent} cannot be "
            f"created ({exc.strerror or exc}); check DATABASE_PATH."
        ) from exc

    # isolation_level=None: no implicit transactions; every write opens its own.
    # timeout is SQLite's busy_timeout: how long a statement waits for another process's
    # lock before "database is locked". No trace callback is ever set: it would see each
    # statement with its values (deletehashes) filled in.
    try:
        db = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout)
    except sqlite3.Error as exc:
        log.debug("cannot open the ledger at %s", path, exc_info=True)
        raise LedgerError(
            f"The upload records could not be opened at {path} ({exc}); check DATABASE_PATH."
        ) from exc

    try:
        db.row_factory = sqlite3.Row
        version = _prepare(db, path)
    except BaseException:
        db.close()
        raise
    return db, version


def _prepare(db: sqlite3.Connection, path: Path) -> int:
    try:
        db.execute("PRAGMA journal_mode = WAL")
        # FULL, not NORMAL: in WAL mode NORMAL skips the fsync at each commit, so a power
        # loss can undo the last commits. This file is the only copy of each deletehash; the
        # cost of the fsync is shared by the writes that commit together (see the module doc).
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA foreign_keys = ON")
        row = _fetchone(db, "PRAGMA user_version", ())
    except sqlite3.Error as exc:
        log.debug("cannot prepare the ledger at %s", path, exc_info=True)
        # SQLite's reason tells a damaged file ("file is not a database") from a folder or
        # file the bot may not write to ("unable to open database file", "readonly").
        raise LedgerError(
            f"The upload records could not be opened at {path} ({exc}); DATABASE_PATH must "
            "name a SQLite database in a folder the bot can write to."
        ) from exc
    try:
        _fetchone(db, "SELECT json_array_length(json_array(1))", ())
    except sqlite3.Error as exc:
        raise LedgerError(
            "The upload records cannot be kept: this Python's SQLite lacks JSON support "
            "(built in from SQLite 3.38 on); use a Python with a newer SQLite."
        ) from exc

    assert row is not None
    version = int(row[0])
    if version > SCHEMA_VERSION:
        log.debug(
            "ledger at %s has schema version %d, newer than %d", path, version, SCHEMA_VERSION
        )
        raise LedgerError(
            f"The upload records were written by a newer version of the bot (schema "
            f"{version}, this version knows up to {SCHEMA_VERSION}); upgrade the bot."
        )

    for target in range(version + 1, SCHEMA_VERSION + 1):
        _migrate(db, path, target)
    return SCHEMA_VERSION


def _migrate(db: sqlite3.Connection, path: Path, target: int) -> None:
    """Apply MIGRATIONS[target - 1] and set user_version to target, all or nothing."""
    try:
        db.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[target - 1]:
                db.execute(statement)
            # PRAGMA takes no bound parameters; target is our own int, never outside input.
            db.execute("PRAGMA user_version = %d" % target)  # noqa: UP031
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    except sqlite3.Error as exc:
        log.debug("ledger at %s failed to migrate to version %d", path, target, exc_info=True)
        # SQLite's own words ("table uploads already exists", "database or disk is full") are
        # what an operator can act on; statements bind their values, so no value is in them.
        raise LedgerError(
            f"The upload records could not be upgraded to schema version {target} ({exc}); "
            "the file was left as it was."
        ) from exc
    log.info("ledger at %s migrated to schema version %d", path, target)


def _close_abandoned(
    executor: ThreadPoolExecutor, opening: asyncio.Future[tuple[sqlite3.Connection, int]]
) -> None:
    """Close what an opening left behind: its thread, and its connection if it got one."""
    if not opening.cancelled() and opening.exception() is None:
        executor.submit(opening.result()[0].close)
    executor.shutdown(wait=False)


# --- writes waiting for the database thread -------------------------------------------------


@dataclass
class _Write(Generic[T]):
    """One write: its transaction body, what to call it in logs, and who waits for it.

    The database thread settles it once, straight onto the caller's event loop: one call
    back per write, where a concurrent future chained to an asyncio one took four.
    """

    what: str
    work: Callable[[sqlite3.Connection], T]
    failure: str
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]
    settled: bool = False  # touched on the database thread only

    def succeed(self, result: T) -> None:
        self._settle(result, None)

    def fail(self, exc: BaseException) -> None:
        if isinstance(exc, sqlite3.Error | OverflowError):
            log.error("ledger: %s failed; nothing was changed", self.what, exc_info=exc)
            error = LedgerError(self.failure)
            error.__cause__ = exc
            exc = error
        self._settle(None, exc)

    def _settle(self, result: T | None, exc: BaseException | None) -> None:
        self.settled = True
        try:
            self.loop.call_soon_threadsafe(_deliver, self.future, result, exc)
        except RuntimeError:
            log.debug("ledger: %s finished after its event loop closed", self.what)


def _deliver(future: asyncio.Future[T], result: T | None, exc: BaseException | None) -> None:
    """On the event loop: hand a write's outcome to its caller, unless it stopped waiting."""
    if future.cancelled():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)  # type: ignore[arg-type]


class Ledger:
    """The SQLite record of uploads, rehosts, albums and guild settings.

    Open with ``await Ledger.open(path)`` (or ``async with await Ledger.open(path)``) and close
    with ``await ledger.close()``. Every method raises :class:`LedgerError` (chained from the
    sqlite3 error) when the database cannot be read or written; methods that change one
    named record raise :class:`RecordNotFound` or :class:`RecordStateError` as documented.
    """

    def __init__(
        self,
        db: sqlite3.Connection,
        executor: ThreadPoolExecutor,
        path: Path,
        *,
        clock: Callable[[], float],
        schema_version: int,
    ) -> None:
        # The connection belongs to the executor's one thread: it is only touched there.
        self._db = db
        self._executor = executor
        self._path = path
        self._clock = clock
        self._schema_version = schema_version
        # Writes waiting for the database thread, and whether a drain of them is on its way
        # there; both shared with that thread under the lock.
        self._queue_lock = threading.Lock()
        self._queued: list[_Write[Any]] = []
        self._drain_due = False
        self._closed = False

    # --- opening and closing ----------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 5.0,
    ) -> Ledger:
        """Open (creating if needed) and migrate the ledger at ``path``.

        Raises:
            LedgerError: the file cannot be opened, is not a ledger, failed to migrate, or was
                written by a newer version of the bot.
        """
        path = Path(path)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")
        opening = asyncio.get_running_loop().run_in_executor(
            executor, _open_database, path, busy_timeout
        )
        try:
            db, version = await asyncio.shield(opening)
        except BaseException:
            # Failed, or cancelled while the thread carries on: close whatever it opens.
            opening.add_done_callback(partial(_close_abandoned, executor))
            raise

        log.info("ledger open at %s (schema version %d)", path, version)
        return cls(db, executor, path, clock=clock, schema_version=version)

    async def close(self) -> None:
        """Let writes in flight finish, then close the connection. Safe to call twice."""
        if self._closed:
            return
        self._closed = True

        # Everything handed to the thread before this runs before it: every write queued
        # has its drain there already, and its caller hears back before this returns.
        await asyncio.wrap_future(self._submit(self._db.close))
        self._executor.shutdown(wait=False)
        log.info("ledger at %s closed", self._path)

    async def __aenter__(self) -> Ledger:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def schema_version(self) -> int:
        return self._schema_version

    async def integrity_ok(self) -> bool:
        """True when SQLite's integrity check passes and no foreign key points nowhere."""

        def work(db: sqlite3.Connection) -> bool:
            checks = _fetchall(db, "PRAGMA integrity_check", ())
            dangling = _fetchall(db, "PRAGMA foreign_key_check", ())
            return [tuple(row) for row in checks] == [("ok",)] and not dangling

        return await self._read("integrity check", work)

    # --- running statements -----------------------------------------------------------------

    def _ensure_open(self) -> None:
        if self._closed:
            raise LedgerError("The upload records are closed; the bot is shutting down.")

    def _now(self) -> float:
        return float(self._clock())

    def _submit(self, job: Callable[[], T]) -> Future[T]:
        """Hand ``job`` to the database thread; every statement gets there this way."""
        return self._executor.submit(job)

    async def _read(self, what: str, work: Callable[[sqlite3.Connection], T]) -> T:
        self._ensure_open()
        try:
            return await asyncio.wrap_future(self._submit(partial(work, self._db)))
        except (sqlite3.Error, OverflowError) as exc:
            log.exception("ledger: %s failed", what)
            raise LedgerError(READ_FAILED) from exc

    async def _write(
        self,
        what: str,
        work: Callable[[sqlite3.Connection], T],
        *,
        failure: str = WRITE_FAILED,
    ) -> T:
        """Run ``work`` in a transaction that commits before this returns.

        Once queued, the write commits or rolls back whatever happens to the caller: a
        cancelled caller only stops waiting for it, and close() waits for it.
        """
        self._ensure_open()

        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        write = _Write(what, work, failure, loop, future)
        with self._queue_lock:
            self._queued.append(write)
            drain = not self._drain_due
            self._drain_due = True
        if drain:
            self._submit(self._drain)
        return await future

    def _drain(self) -> None:
        """On the database thread: commit every write queued so far, together."""
        with self._queue_lock:
            self._drain_due = False
            batch, self._queued = self._queued, []

        try:
            self._commit_together(batch)
        except BaseException as exc:  # pragma: no cover - a bug here must not hang callers
            log.exception("ledger: the write queue failed")
            self._rollback()
            for write in batch:
                if not write.settled:
                    write.fail(exc)

    def _commit_together(self, batch: list[_Write[Any]]) -> None:
        """Run each write in its own savepoint of one transaction; settle each caller once the
        transaction has committed (or each write's failure is known)."""
        if not batch:
            return
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            for write in batch:
                write.fail(exc)
            return

        # A write alone needs no savepoint: its failure rolls the transaction back.
        grouped = len(batch) > 1
        done: list[tuple[_Write[Any], Any]] = []
        for index, write in enumerate(batch):
            try:
                if grouped:
                    db.execute("SAVEPOINT write")
                result = write.work(db)
                if grouped:
                    db.execute("RELEASE write")
            except BaseException as exc:
                write.fail(exc)
                if grouped and self._undo_savepoint():
                    continue
                # Alone, or SQLite gave up the whole transaction (a full disk, an I/O error)
                # and the writes before this one went with it: run the others again.
                self._rollback()
                self._commit_together([w for w, _ in done] + batch[index + 1 :])
                return
            done.append((write, result))

        if not done:
            self._rollback()
            return
        try:
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            # Not retried: a commit that failed while writing may still surface on recovery.
            self._rollback()
            for write, _ in done:
                write.fail(exc)
            return
        for write, result in done:
            write.succeed(result)

    def _undo_savepoint(self) -> bool:
        """Roll back the failed write's savepoint; False when the transaction is gone."""
        if not self._db.in_transaction:
            return False
        try:
            self._db.execute("ROLLBACK TO write")
            self._db.execute("RELEASE write")
        except sqlite3.Error:
            log.exception("ledger: rolling back one write failed; retrying the others")
            self._rollback()
            return False
        return True

    def _rollback(self) -> None:
        if not self._db.in_transaction:
            return
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error:
            log.exception("ledger: rolling back failed")

    # --- the upload lifecycle ---------------------------------------------------------------

    async def begin_upload(
        self, *, digest: str, size: int, mime: str, kind: str, origin: Origin
    ) -> int:
        """Put an upload on record as pending before Imgur is called; its row id.

        Raises:
            LedgerError: not recorded; Imgur must not be called.
        """
        digest = _normal_digest(digest)
        _check_kind(kind)
        values = (kind, mime, size, digest, self._now(), *_origin_values(origin))

        def work(db: sqlite3.Connection) -> int:
            return _insert(db, _INSERT_PENDING, values)

        pending_id = await self._write("begin upload", work, failure=BEGIN_FAILED)
        log.debug("ledger: upload %d pending (%s, %d bytes, %s)", pending_id, kind, size, mime)
        return pending_id

    async def reuse_or_begin_upload(
        self, *, digest: str, size: int, mime: str, kind: str, origin: Origin
    ) -> Rehost | int:
        """Reuse the live upload of these bytes, or put a new one on record as pending.

        One transaction, one round trip: the lookup of :meth:`find_live_upload`, then a reuse
        rehost or the pending row of :meth:`begin_upload`, with nothing able to come in between.
        This is the only way a reuse is recorded.

        Returns:
            The rehost recorded as a reuse, or the row id of the pending upload for which
            Imgur is to be called.

        Raises:
            LedgerError: nothing recorded; Imgur must not be called.
        """
        digest = _normal_digest(digest)
        _check_kind(kind)
        now = self._now()
        where = _origin_values(origin)

        def work(db: sqlite3.Connection) -> Rehost | int:
            row = _fetchone(db, _SELECT_LIVE, (digest,))
            if row is None:
                return _insert(db, _INSERT_PENDING, (kind, mime, size, digest, now, *where))
            rehost_id = _insert(db, _INSERT_REHOST, (row["u_id"], 1, now, *where))
            return _new_rehost(rehost_id, _upload_from(row), origin, reused=True, created_at=now)

        claim = await self._write("reuse or begin upload", work, failure=BEGIN_FAILED)
        if isinstance(claim, Rehost):
            log.info("ledger: rehost %d reuses upload %d", claim.id, claim.upload.id)
        else:
            log.debug("ledger: upload %d pending (%s, %d bytes, %s)", claim, kind, size, mime)
        return claim

    async def complete_upload(
        self, pending_id: int, *, imgur_id: str, link: str, deletehash: str
    ) -> Rehost:
        """Record what Imgur answered and the upload's first rehost, in one transaction.

        A row that was abandoned as failed may still be completed: if Imgur answered after
        all, its deletehash must not be thrown away. Completing the same upload twice with the
        same ``imgur_id`` returns the first rehost again.

        If another upload of the same bytes completed first (two requests raced to Imgur), this
        one is kept as a live *duplicate*: recorded and deletable, but never offered for reuse.

        Raises:
            RecordNotFound: no upload with that id.
            RecordStateError: the upload was completed with another image, or deleted.
            LedgerError: not recorded; the caller still holds the only copy of the deletehash.
        """
        now = self._now()

        def work(db: sqlite3.Connection) -> tuple[Rehost, bool]:
            row = _fetchone(db, _SELECT_TO_COMPLETE, (pending_id,))
            if row is None:
                raise RecordNotFound("That upload is not in the ledger.")

            if row["u_state"] == "done" and row["u_imgur_id"] == imgur_id:
                first = _fetchone(db, _SELECT_FIRST_REHOST, (pending_id,))
                if first is not None:
                    return _rehost_from(first), False
            if row["u_state"] not in ("pending", "failed"):
                raise RecordStateError("That upload was already completed or deleted.")

            duplicate = bool(row["rival"])
            _change(
                db,
                """
                UPDATE uploads
                SET imgur_id = ?, link = ?, deletehash = ?, state = 'done', duplicate = ?,
                    completed_at = ?, fail_reason = NULL
                WHERE id = ?
                """,
                (imgur_id, link, deletehash, int(duplicate), now, pending_id),
            )
            # The first rehost is the request that caused the upload: its origin is the row's.
            origin = _origin_from(row)
            rehost_id = _insert(db, _INSERT_REHOST, (pending_id, 0, now, *_origin_values(origin)))

            upload = dataclasses.replace(
                _upload_from(row),
                imgur_id=imgur_id,
                link=link,
                deletehash=deletehash,
                state="done",
                completed_at=now,
            )
            return _new_rehost(rehost_id, upload, origin, reused=False, created_at=now), duplicate

        rehost, duplicate = await self._write(
            "complete upload",
            work,
            failure="The image was uploaded but could not be recorded.",
        )
        if duplicate:
            log.warning(
                "ledger: upload %d (%s) duplicates a live upload of the same bytes",
                pending_id,
                imgur_id,
            )
        log.info(
            "ledger: upload %d stored as %s (%d bytes), rehost %d",
            pending_id,
            imgur_id,
            rehost.upload.size,
            rehost.id,
        )
        return rehost

    async def abandon_upload(self, pending_id: int, reason: str) -> None:
        """Mark a pending upload failed: Imgur refused it or could not be reached.

        Abandoning a failed upload again changes nothing.

        Raises:
            RecordNotFound: no upload with that id.
            RecordStateError: the upload completed; a completed record is never abandoned.
        """

        def work(db: sqlite3.Connection) -> None:
            row = _fetchone(db, "SELECT state FROM uploads WHERE id = ?", (pending_id,))
            if row is None:
                raise RecordNotFound("That upload is not in the ledger.")
            if row["state"] == "failed":
                return
            if row["state"] != "pending":
                raise RecordStateError("That upload already completed and cannot be abandoned.")
            _change(
                db,
                "UPDATE uploads SET state = 'failed', fail_reason = ? WHERE id = ?",
                (reason, pending_id),
            )

        await self._write("abandon upload", work)
        log.info("ledger: upload %d abandoned: %s", pending_id, reason)

    async def pending_uploads(self) -> list[tuple[Upload, Origin]]:
        """Uploads begun but never completed or abandoned (oldest first), with their origin."""

        def work(db: sqlite3.Connection) -> list[tuple[Upload, Origin]]:
            rows = _fetchall(db, _SELECT_PENDING, ())
            return [(_upload_from(row), _origin_from(row)) for row in rows]

        return await self._read("list pending uploads", work)

    async def find_live_upload(self, digest: str) -> Upload | None:
        """The upload to reuse for these bytes: done, not deleted, not a duplicate."""
        digest = _normal_digest(digest)

        def work(db: sqlite3.Connection) -> Upload | None:
            row = _fetchone(db, _SELECT_LIVE, (digest,))
            return _upload_from(row) if row is not None else None

        return await self._read("find live upload", work)

    # --- reading ----------------------------------------------------------------------------

    async def get_upload(self, imgur_id: str) -> Upload | None:
        """The upload with this Imgur id, in whatever state."""

        def work(db: sqlite3.Connection) -> Upload | None:
            row = _fetchone(db, _SELECT_UPLOAD + "WHERE u.imgur_id = ?", (imgur_id,))
            return _upload_from(row) if row is not None else None

        return await self._read("get upload", work)

    async def get_rehost(self, rehost_id: int) -> Rehost | None:
        def work(db: sqlite3.Connection) -> Rehost | None:
            return _rehost_by_id(db, rehost_id)

        return await self._read("get rehost", work)

    async def rehosts_of(self, upload_id: int, *, live_only: bool = True) -> list[Rehost]:
        """The rehosts that point at one upload, oldest first."""
        sql = _SELECT_REHOST + "WHERE r.upload_id = ? "
        if live_only:
            sql += "AND r.deleted_at IS NULL "
        sql += "ORDER BY r.id"

        def work(db: sqlite3.Connection) -> list[Rehost]:
            return [_rehost_from(row) for row in _fetchall(db, sql, (upload_id,))]

        return await self._read("list rehosts of upload", work)

    async def rehosts_for_messages(self, message_ids: Sequence[int]) -> list[Rehost]:
        """Live rehosts whose source message is one of these, oldest first."""
        if not message_ids:
            return []
        # Only fixed fragments are joined here; the ids are one bound parameter.
        sql = _SELECT_REHOST + (  # noqa: S608
            "WHERE r.message_id IN (SELECT value FROM json_each(?)) "
            "AND r.deleted_at IS NULL ORDER BY r.id"
        )
        ids = _id_list(message_ids)

        def work(db: sqlite3.Connection) -> list[Rehost]:
            return [_rehost_from(row) for row in _fetchall(db, sql, (ids,))]

        return await self._read("find rehosts for messages", work)

    async def recent_rehosts(
        self,
        *,
        guild_id: int | None = None,
        owner_id: int | None = None,
        door: Door | None = None,
        limit: int = 25,
        live_only: bool = False,
    ) -> list[Rehost]:
        """Rehosts newest first, narrowed by whichever filters are given."""
        clauses: list[str] = []
        params: list[Any] = []
        if guild_id is not None:
            clauses.append("r.guild_id = ?")
            params.append(guild_id)
        if owner_id is not None:
            clauses.append("r.owner_id = ?")
            params.append(owner_id)
        if door is not None:
            clauses.append("r.door = ?")
            params.append(door)
        if live_only:
            clauses.append("r.deleted_at IS NULL")
        where = ("WHERE " + " AND ".join(clauses) + " ") if clauses else ""
        sql = _SELECT_REHOST + where + "ORDER BY r.created_at DESC, r.id DESC LIMIT ?"
        params.append(max(0, limit))

        def work(db: sqlite3.Connection) -> list[Rehost]:
            return [_rehost_from(row) for row in _fetchall(db, sql, params)]

        return await self._read("list recent rehosts", work)

    async def search_rehosts(
        self, guild_id: int, text: str, *, owner_id: int | None = None, limit: int = 25
    ) -> list[Rehost]:
        """Live rehosts in one guild whose Imgur id, link, filename or title contains ``text``.

        Matching is case-insensitive for ASCII; ``%`` and ``_`` in ``text`` match only
        themselves. Newest first.
        """
        sql = (
            _SELECT_REHOST
            + """
            WHERE r.guild_id = :guild_id AND r.deleted_at IS NULL AND u.state = 'done'
              AND (:owner_id IS NULL OR r.owner_id = :owner_id)
              AND (u.imgur_id LIKE :pattern ESCAPE '\\' OR u.link LIKE :pattern ESCAPE '\\'
                   OR r.filename LIKE :pattern ESCAPE '\\' OR r.title LIKE :pattern ESCAPE '\\')
            ORDER BY r.created_at DESC, r.id DESC
            LIMIT :limit
            """
        )
        params = {
            "guild_id": guild_id,
            "owner_id": owner_id,
            "pattern": _like_pattern(text),
            "limit": max(0, limit),
        }

        def work(db: sqlite3.Connection) -> list[Rehost]:
            return [_rehost_from(row) for row in _fetchall(db, sql, params)]

        return await self._read("search rehosts", work)

    async def count_uploads_since(self, since: float) -> int:
        """Uploads Imgur took (done or since deleted; not pending or failed, not reuses)."""

        def work(db: sqlite3.Connection) -> int:
            row = _fetchone(
                db,
                "SELECT count(*) FROM uploads "
                "WHERE created_at >= ? AND state IN ('done', 'deleted')",
                (since,),
            )
            assert row is not None
            return int(row[0])

        return await self._read("count uploads", work)

    async def count_rehosts_since(self, since: float, *, reused: bool | None = None) -> int:
        """Rehosts made since then; only reuses, only fresh uploads, or both."""

        def work(db: sqlite3.Connection) -> int:
            row = _fetchone(
                db,
                "SELECT count(*) FROM rehosts WHERE created_at >= ? AND (? IS NULL OR reused = ?)",
                (since, reused, reused),
            )
            assert row is not None
            return int(row[0])

        return await self._read("count rehosts", work)

    # --- deletion ---------------------------------------------------------------------------

    async def mark_upload_deleted(self, upload_id: int, *, by: int | None, reason: str) -> None:
        """Record that the image was deleted from Imgur: the upload and all its rehosts.

        Marking a deleted upload again keeps the first record. If this upload was the one
        offered for reuse, the oldest live duplicate of the same bytes takes its place.

        Raises:
            RecordNotFound: no upload with that id.
            RecordStateError: the upload never reached Imgur (pending or failed).
        """
        now = self._now()

        def work(db: sqlite3.Connection) -> int:
            row = _fetchone(db, "SELECT state, digest FROM uploads WHERE id = ?", (upload_id,))
            if row is None:
                raise RecordNotFound("That upload is not in the ledger.")
            if row["state"] == "deleted":
                return 0
            if row["state"] != "done":
                raise RecordStateError(
                    "That upload never reached Imgur; there is nothing to delete."
                )

            _change(
                db,
                """
                UPDATE uploads
                SET state = 'deleted', duplicate = 0, deleted_at = ?, deleted_by = ?,
                    delete_reason = ?
                WHERE id = ?
                """,
                (now, by, reason, upload_id),
            )
            rehosts = _change(
                db,
                """
                UPDATE rehosts SET deleted_at = ?, deleted_by = ?, delete_reason = ?
                WHERE upload_id = ? AND deleted_at IS NULL
                """,
                (now, by, reason, upload_id),
            )
            _change(
                db,
                """
                UPDATE uploads SET duplicate = 0
                WHERE id = (
                    SELECT id FROM uploads WHERE digest = ? AND state = 'done'
                    ORDER BY duplicate, id LIMIT 1
                ) AND NOT EXISTS (
                    SELECT 1 FROM uploads WHERE digest = ? AND state = 'done' AND duplicate = 0
                )
                """,
                (row["digest"], row["digest"]),
            )
            return rehosts

        rehosts = await self._write("mark upload deleted", work)
        log.info(
            "ledger: upload %d marked deleted (%d rehosts) by %s: %s",
            upload_id,
            rehosts,
            by,
            reason,
        )

    async def mark_rehosts_deleted(
        self, rehost_ids: Sequence[int], *, by: int | None, reason: str
    ) -> None:
        """Mark rehosts deleted (already deleted ones keep their first record).

        The upload itself is left alone: whether to delete it from Imgur once no live rehost
        points at it is the caller's decision (see :meth:`rehosts_of`).

        Raises:
            RecordNotFound: one of the ids is unknown; nothing was changed.
        """
        if not rehost_ids:
            return
        ids = _id_list(rehost_ids)
        now = self._now()

        def work(db: sqlite3.Connection) -> int:
            if _count_existing(db, "rehosts", rehost_ids) != len(set(rehost_ids)):
                raise RecordNotFound("One of those rehosts is not in the ledger.")
            return _change(
                db,
                "UPDATE rehosts SET deleted_at = ?, deleted_by = ?, delete_reason = ? "
                "WHERE id IN (SELECT value FROM json_each(?)) AND deleted_at IS NULL",
                (now, by, reason, ids),
            )

        changed = await self._write("mark rehosts deleted", work)
        log.info("ledger: %d rehosts marked deleted by %s: %s", changed, by, reason)

    async def set_reply(
        self, rehost_ids: Sequence[int], *, channel_id: int, message_id: int
    ) -> None:
        """Remember the bot's public message that carries these rehosts' links.

        Raises:
            RecordNotFound: one of the ids is unknown; nothing was changed.
        """
        if not rehost_ids:
            return
        ids = _id_list(rehost_ids)

        def work(db: sqlite3.Connection) -> None:
            if _count_existing(db, "rehosts", rehost_ids) != len(set(rehost_ids)):
                raise RecordNotFound("One of those rehosts is not in the ledger.")
            _change(
                db,
                "UPDATE rehosts SET reply_channel_id = ?, reply_message_id = ? "
                "WHERE id IN (SELECT value FROM json_each(?))",
                (channel_id, message_id, ids),
            )

        await self._write("set reply", work)
        log.debug("ledger: reply %d recorded for %d rehosts", message_id, len(rehost_ids))

    # --- albums -----------------------------------------------------------------------------

    async def record_album(
        self,
        *,
        imgur_id: str,
        link: str,
        deletehash: str,
        upload_ids: Sequence[int],
        origin: Origin,
    ) -> Album:
        """Record an anonymous album and the uploads in it, in order.

        Raises:
            RecordNotFound: one of the uploads is unknown; nothing was recorded.
        """
        values = _origin_values(origin)
        ids = _id_list(upload_ids)
        now = self._now()

        def work(db: sqlite3.Connection) -> Album:
            if _count_existing(db, "uploads", upload_ids) != len(set(upload_ids)):
                raise RecordNotFound("One of the album's uploads is not in the ledger.")

            album_id = _insert(
                db,
                """
                INSERT INTO albums (
                    imgur_id, link, deletehash, created_at, door, guild_id, channel_id,
                    message_id, attachment_id, owner_id, requester_id, filename, title, auto
                ) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                """,
                (imgur_id, link, deletehash, now, *values),
            )
            # json_each numbers an array's elements from 0: the album order.
            _change(
                db,
                "INSERT INTO album_uploads (album_id, position, upload_id) "
                "SELECT ?, key, value FROM json_each(?)",
                (album_id, ids),
            )
            return Album(
                id=album_id,
                imgur_id=imgur_id,
                link=link,
                deletehash=deletehash,
                guild_id=origin.guild_id,
                message_id=origin.message_id,
                created_at=now,
                deleted_at=None,
            )

        album = await self._write(
            "record album", work, failure="The album was created but could not be recorded."
        )
        log.info("ledger: album %d stored as %s (%d uploads)", album.id, imgur_id, len(upload_ids))
        return album

    async def albums_for_messages(self, message_ids: Sequence[int]) -> list[Album]:
        """Live albums made from one of these source messages, oldest first."""
        if not message_ids:
            return []
        # Only fixed fragments are joined here; the ids are one bound parameter.
        sql = _SELECT_ALBUM + (  # noqa: S608
            "WHERE message_id IN (SELECT value FROM json_each(?)) "
            "AND deleted_at IS NULL ORDER BY id"
        )
        ids = _id_list(message_ids)

        def work(db: sqlite3.Connection) -> list[Album]:
            return [_album_from(row) for row in _fetchall(db, sql, (ids,))]

        return await self._read("find albums for messages", work)

    async def album_uploads(self, album_id: int) -> list[Upload]:
        """The uploads in an album, in album order."""

        def work(db: sqlite3.Connection) -> list[Upload]:
            rows = _fetchall(
                db,
                _SELECT_UPLOAD
                + "JOIN album_uploads AS a ON a.upload_id = u.id "
                + "WHERE a.album_id = ? ORDER BY a.position",
                (album_id,),
            )
            return [_upload_from(row) for row in rows]

        return await self._read("list album uploads", work)

    async def mark_album_deleted(self, album_id: int) -> None:
        """Record that the album was deleted from Imgur (again: no change).

        Raises:
            RecordNotFound: no album with that id.
        """
        now = self._now()

        def work(db: sqlite3.Connection) -> None:
            row = _fetchone(db, "SELECT deleted_at FROM albums WHERE id = ?", (album_id,))
            if row is None:
                raise RecordNotFound("That album is not in the ledger.")
            if row["deleted_at"] is None:
                _change(db, "UPDATE albums SET deleted_at = ? WHERE id = ?", (now, album_id))

        await self._write("mark album deleted", work)
        log.info("ledger: album %d marked deleted", album_id)

    # --- guild settings ---------------------------------------------------------------------

    async def add_auto_channel(self, guild_id: int, channel_id: int, *, added_by: int) -> bool:
        """Turn on auto-rehost in a channel; False if it was already on."""
        now = self._now()

        def work(db: sqlite3.Connection) -> bool:
            changed = _change(
                db,
                """
                INSERT INTO auto_channels (guild_id, channel_id, added_by, added_at)
                VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING
                """,
                (guild_id, channel_id, added_by, now),
            )
            return changed == 1

        added = await self._write("add auto channel", work)
        if added:
            log.info("ledger: auto-rehost on in channel %d of guild %d", channel_id, guild_id)
        return added

    async def remove_auto_channel(self, guild_id: int, channel_id: int) -> bool:
        """Turn off auto-rehost in a channel; False if it was not on."""

        def work(db: sqlite3.Connection) -> bool:
            changed = _change(
                db,
                "DELETE FROM auto_channels WHERE guild_id = ? AND channel_id = ?",
                (guild_id, channel_id),
            )
            return changed == 1

        removed = await self._write("remove auto channel", work)
        if removed:
            log.info("ledger: auto-rehost off in channel %d of guild %d", channel_id, guild_id)
        return removed

    async def auto_channels(self, guild_id: int) -> list[int]:
        """The guild's auto-rehost channels, in the order they were added."""

        def work(db: sqlite3.Connection) -> list[int]:
            rows = _fetchall(
                db,
                "SELECT channel_id FROM auto_channels WHERE guild_id = ? "
                "ORDER BY added_at, channel_id",
                (guild_id,),
            )
            return [int(row[0]) for row in rows]

        return await self._read("list auto channels", work)

    async def is_auto_channel(self, guild_id: int, channel_id: int) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            row = _fetchone(
                db,
                "SELECT 1 FROM auto_channels WHERE guild_id = ? AND channel_id = ?",
                (guild_id, channel_id),
            )
            return row is not None

        return await self._read("check auto channel", work)

    async def guild_settings(self, guild_id: int) -> GuildSettings:
        """The guild's settings, or the defaults if it never changed any."""
        return await self._read("get guild settings", partial(_settings_in, guild_id=guild_id))

    async def update_guild_settings(
        self,
        guild_id: int,
        *,
        delete_with_source: bool | None = None,
        allow_nsfw: bool | None = None,
    ) -> GuildSettings:
        """Change the settings given (None leaves one as it is); the settings after."""
        now = self._now()

        def work(db: sqlite3.Connection) -> GuildSettings:
            current = _settings_in(db, guild_id)
            updated = GuildSettings(
                guild_id=guild_id,
                delete_with_source=(
                    current.delete_with_source if delete_with_source is None else delete_with_source
                ),
                allow_nsfw=current.allow_nsfw if allow_nsfw is None else allow_nsfw,
            )
            _change(
                db,
                """
                INSERT INTO guild_settings (guild_id, delete_with_source, allow_nsfw, updated_at)
                VALUES (?, ?, ?, ?)
                ON CONFLICT (guild_id) DO UPDATE SET
                    delete_with_source = excluded.delete_with_source,
                    allow_nsfw = excluded.allow_nsfw,
                    updated_at = excluded.updated_at
                """,
                (guild_id, int(updated.delete_with_source), int(updated.allow_nsfw), now),
            )
            return updated

        settings = await self._write("update guild settings", work)
        log.info("ledger: guild %d settings now %s", guild_id, settings)
        return settings
