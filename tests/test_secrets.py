"""Secrets stay secret and SQL stays parameterised.

- Every SQL text in ``bot/`` and ``cogs/`` is built only from literals and constants: checked
  statically on the syntax tree, and at run time by recording every statement the ledger
  sends while hostile text passes through it.
- Logging redacts tokens and client ids even at DEBUG, for our loggers and for discord.py's
  and aiohttp's.
- Everything the command line prints, at DEBUG too, is scanned for deletehashes, the client
  id and the access token.
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import os
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot import ledger as ledger_module
from bot.ledger import Ledger, Origin
from bot.logs import REDACTED, setup_logging
from bot.services import Services
from bot.sources import StreamSource
from tests import samples
from tests.imgur_standin import ImgurStandIn

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = [ROOT / "bot", ROOT / "cogs"]

# --- SQL: a static check on the syntax tree ------------------------------------------------

EXECUTE = {"execute", "executemany", "executescript"}
HELPERS = {"_fetchone", "_fetchall", "_change", "_insert"}  # (db, sql, params) in bot/ledger.py
# The one statement that cannot take a bound parameter, and why it is safe.
ALLOWED = {"'PRAGMA user_version = %d' % target"}  # target: our own schema number, an int
SQL_WORDS = ("SELECT ", "INSERT INTO", "UPDATE ", "DELETE FROM", "CREATE ", "DROP ", "PRAGMA ")


class SqlChecker:
    """Finds SQL text built from anything but literals and constants (f-strings, %, format,
    parameters, call results)."""

    def __init__(self, source: str, name: str) -> None:
        self.source = source
        self.name = name
        self.tree = ast.parse(source)
        self.parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(self.tree):
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node

    def problems(self) -> list[str]:
        found = []
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Call):
                sql = self._sql_argument(node)
                if sql is not None and not self._allowed(sql) and not self.ok(sql, set()):
                    found.append(f"{self.name}:{node.lineno}: {ast.unparse(sql)[:80]}")
            if isinstance(node, ast.JoinedStr):
                text = "".join(
                    v.value for v in node.values if isinstance(v, ast.Constant) and v.value
                )
                if any(word in text for word in SQL_WORDS):
                    found.append(f"{self.name}:{node.lineno}: SQL in an f-string")
        return found

    def _sql_argument(self, call: ast.Call) -> ast.expr | None:
        func = call.func
        if isinstance(func, ast.Attribute) and func.attr in EXECUTE and call.args:
            return call.args[0]
        if isinstance(func, ast.Name) and func.id in HELPERS and len(call.args) >= 2:
            return call.args[1]
        return None

    def _allowed(self, node: ast.expr) -> bool:
        return ast.unparse(node) in ALLOWED

    def ok(self, node: ast.AST, seen: set[tuple[str, int]]) -> bool:
        """Whether ``node`` can only ever be built from literals and constants."""
        if isinstance(node, ast.Constant):
            return isinstance(node.value, str | int)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self.ok(node.left, seen) and self.ok(node.right, seen)
        if isinstance(node, ast.IfExp):
            return self.ok(node.body, seen) and self.ok(node.orelse, seen)
        if isinstance(node, ast.Tuple | ast.List):
            return all(self.ok(element, seen) for element in node.elts)
        if isinstance(node, ast.Dict):
            return all(self.ok(value, seen) for value in node.values)
        if isinstance(node, ast.Subscript):
            return self.ok(node.value, seen)  # picking from constants gives a constant
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            joiner = node.func
            if joiner.attr == "join" and isinstance(joiner.value, ast.Constant):
                return all(self.ok(arg, seen) for arg in node.args)
            return False
        if isinstance(node, ast.Name):
            return self._name_ok(node, seen)
        return False  # f-strings, % and format(), attribute values, call results

    def _name_ok(self, name: ast.Name, seen: set[tuple[str, int]]) -> bool:
        scope: ast.AST | None = self.parents.get(name)
        while scope is not None and not isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
            scope = self.parents.get(scope)
        while True:
            key = (name.id, id(scope))
            if key in seen:
                return True  # a cycle such as `sql += ...` is judged by its other parts
            values, is_parameter = self._bindings(name.id, scope if scope else self.tree)
            if is_parameter:
                assert isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef)
                # The helpers pass their `sql` on; their callers are checked instead.
                return name.id == "sql" and scope.name in HELPERS
            if values:
                return all(self.ok(value, seen | {key}) for value in values)
            if scope is None:
                return name.id in {"__name__"}
            scope = self.parents.get(scope)
            while scope is not None and not isinstance(
                scope, ast.FunctionDef | ast.AsyncFunctionDef
            ):
                scope = self.parents.get(scope)

    def _bindings(self, name: str, scope: ast.AST) -> tuple[list[ast.AST], bool]:
        """What ``name`` is bound to directly in ``scope`` (not in nested functions)."""
        if isinstance(scope, ast.FunctionDef | ast.AsyncFunctionDef):
            arguments = scope.args
            every = arguments.posonlyargs + arguments.args + arguments.kwonlyargs
            if any(argument.arg == name for argument in every):
                return [], True
        values: list[ast.AST] = []
        for node in self._own_nodes(scope):
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == name for t in node.targets
            ):
                values.append(node.value)
            elif isinstance(node, ast.AugAssign | ast.AnnAssign) and (
                isinstance(node.target, ast.Name) and node.target.id == name
            ):
                if node.value is not None:
                    values.append(node.value)
            elif isinstance(node, ast.For) and (
                isinstance(node.target, ast.Name) and node.target.id == name
            ):
                values.append(node.iter)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                target = node.func.value
                grows = node.func.attr in {"append", "extend", "insert"}
                if grows and isinstance(target, ast.Name) and target.id == name:
                    values.extend(node.args[-1:])
        return values, False

    def _own_nodes(self, scope: ast.AST) -> Iterator[ast.AST]:
        stack = list(ast.iter_child_nodes(scope))
        while stack:
            node = stack.pop()
            yield node
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                stack.extend(ast.iter_child_nodes(node))


def python_files() -> list[Path]:
    return sorted(p for folder in SOURCE_DIRS if folder.exists() for p in folder.rglob("*.py"))


def test_sql_is_built_only_from_literals_and_constants() -> None:
    problems = []
    checked = 0
    for path in python_files():
        checker = SqlChecker(path.read_text(), str(path.relative_to(ROOT)))
        problems += checker.problems()
        checked += sum(
            1
            for node in ast.walk(checker.tree)
            if isinstance(node, ast.Call) and checker._sql_argument(node) is not None
        )

    assert problems == []
    assert checked > 40, "the check must actually see the ledger's statements"


@pytest.mark.parametrize(
    "snippet",
    [
        "def f(db, name):\n    db.execute(f\"SELECT * FROM t WHERE n = '{name}'\")",
        "def f(db, name):\n    db.execute(\"SELECT * FROM t WHERE n = '%s'\" % name)",
        "def f(db, name):\n    db.execute(\"SELECT * FROM t WHERE n = '{}'\".format(name))",
        'def f(db, name):\n    db.execute("SELECT * FROM t WHERE n = \'" + name + "\'")',
        "def f(db, name):\n    sql = 'SELECT 1 '\n    sql += name\n    db.execute(sql)",
        "async def f(db, name):\n    await _fetchone(db, 'SELECT ' + name, ())",
        "def f(db, where):\n    parts = ['a = ?']\n    parts.append(where)\n"
        "    db.execute('SELECT * FROM t WHERE ' + ' AND '.join(parts))",
        "def f(table):\n    return f'DELETE FROM {table}'",
    ],
)
def test_the_sql_check_catches_values_in_the_text(snippet: str) -> None:
    assert SqlChecker(snippet, "snippet").problems()


@pytest.mark.parametrize(
    "snippet",
    [
        "def f(db, name):\n    db.execute('SELECT * FROM t WHERE n = ?', (name,))",
        "BASE = 'SELECT * FROM t '\ndef f(db, a):\n    sql = BASE + 'WHERE a = ?'\n"
        "    if a:\n        sql += 'AND b IS NULL '\n    db.execute(sql, (a,))",
        "def f(db, a):\n    parts = []\n    if a:\n        parts.append('a = ?')\n"
        "    db.execute('SELECT 1 WHERE ' + ' AND '.join(parts), (a,))",
    ],
)
def test_the_sql_check_lets_bound_parameters_pass(snippet: str) -> None:
    assert SqlChecker(snippet, "snippet").problems() == []


# --- SQL: what the ledger actually sends -----------------------------------------------------

HOSTILE_TEXT = [
    "x'); DROP TABLE uploads; --",
    "' OR '1'='1",
    'robert"; DELETE FROM rehosts; --',
    "%' OR 1=1 --",
]


async def test_values_never_appear_in_the_statements_the_ledger_runs(
    services: Services, imgur: ImgurStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every statement that takes values goes through the ledger's helpers (the static check
    # above holds the rest to constant text); record what they are given.
    statements: list[str] = []

    def recording(real: Any) -> Any:
        def run(db: sqlite3.Connection, sql: str, params: Any) -> Any:
            statements.append(sql)
            return real(db, sql, params)

        return run

    for helper in HELPERS:
        monkeypatch.setattr(ledger_module, helper, recording(getattr(ledger_module, helper)))

    rehosts = []
    for seed, text in enumerate(HOSTILE_TEXT):
        # A member each, so the member cooldown does not slow the test down.
        origin = Origin(door="discord", guild_id=5, message_id=seed + 1, owner_id=9 + seed,
                        filename=text, title=text)  # fmt: skip
        source = StreamSource(_once(samples.png(seed=400 + seed)), text)
        rehosts.append(await services.pipeline.rehost(source, origin))
    found = await services.ledger.search_rehosts(5, HOSTILE_TEXT[3])
    await services.pipeline.create_album(rehosts[:2], rehosts[0].origin, title=HOSTILE_TEXT[0])
    await services.pipeline.release(rehosts[:1], by=9, reason=HOSTILE_TEXT[1])

    values = HOSTILE_TEXT + [
        value
        for rehost in rehosts
        for value in (rehost.upload.deletehash, rehost.upload.digest, rehost.upload.link)
        if value
    ]
    assert statements
    for sql in statements:
        for value in values:
            assert value not in sql
    assert [r.origin.title for r in found] == [HOSTILE_TEXT[3]]
    assert await services.ledger.integrity_ok()
    assert await services.ledger.count_uploads_since(0) == len(HOSTILE_TEXT)


async def _once(data: bytes) -> Any:
    yield data


# --- logs: redaction at DEBUG, whatever the logger ------------------------------------------

TOKEN = "MTA0NTk0NDU2Nzg5MDEyMzQ1Ng.GhXyZa.bot-token-secret-part-0123456789"
CLIENT_ID = "9f8e7d6c5b4a321"
ACCESS_TOKEN = "acc3ss-t0ken-abcdef0123456789"
HTTP_TOKEN = "http-endpoint-token-0123456789"
INTERACTION_TOKEN = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDEyMzQ1Njc4OnNlY3JldA"
SECRETS = [TOKEN, CLIENT_ID, ACCESS_TOKEN, HTTP_TOKEN, INTERACTION_TOKEN]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root logger back as it was after a test that calls ``setup_logging``."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


# Secrets the filter is not told about: found by the shape of what carries them.
UNKNOWN_INTERACTION_TOKEN = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDp0b2tlbg"
DELETEHASH = "Zq8sLm2Xv9Rt4Wp"


def debug_logging() -> None:
    # Called in the test body, once capsys has replaced sys.stderr.
    setup_logging("DEBUG", [TOKEN, CLIENT_ID, ACCESS_TOKEN, HTTP_TOKEN])


def test_tokens_are_redacted_at_debug_from_every_library(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    debug_logging()
    interaction = f"https://discord.com/api/v10/interactions/1234567890123/{INTERACTION_TOKEN}"
    webhook = f"https://discord.com/api/v10/webhooks/1234567890123/{INTERACTION_TOKEN}/messages"
    logging.getLogger("discord.http").debug(
        "POST %s with %s has returned %s", f"{interaction}/callback", {"type": 5}, 204
    )
    logging.getLogger("discord.http").debug("headers: {'Authorization': 'Bot %s'}", TOKEN)
    logging.getLogger("discord.gateway").debug(
        "Sending %s", {"op": 2, "d": {"token": TOKEN, "intents": 513}}
    )
    logging.getLogger("discord.webhook.async_").debug("Webhook %s has returned 200", webhook)
    logging.getLogger("discord.client").info("logging in using static token %s", TOKEN)
    logging.getLogger("aiohttp.client").debug(
        "request headers %r", {"Authorization": f"Client-ID {CLIENT_ID}"}
    )
    logging.getLogger("bot.imgur").debug("Bearer %s", ACCESS_TOKEN)
    logging.getLogger("bot.web").debug("Authorization: Bearer %s", HTTP_TOKEN)
    logging.getLogger("aiohttp.access").info('"GET /healthz?token=%s HTTP/1.1" 200', HTTP_TOKEN)
    try:
        raise RuntimeError(f"connection to gateway with token {TOKEN} failed")
    except RuntimeError:
        logging.getLogger("discord.client").exception("Attempting a reconnect")
    logging.getLogger("asyncio").debug(f"task with {CLIENT_ID} in its repr")  # noqa: G004
    logging.getLogger("discord.gateway").debug(
        "For Shard ID %s: WebSocket Event: %s",
        None,
        {"t": "INTERACTION_CREATE", "d": {"id": "1", "token": UNKNOWN_INTERACTION_TOKEN}},
    )
    logging.getLogger("bot.web").debug("answer %s", json.dumps({"deletehash": DELETEHASH}))

    err = capsys.readouterr().err
    assert err.count("\n") >= 13, "every record must still be written"
    assert REDACTED in err
    for secret in (*SECRETS, UNKNOWN_INTERACTION_TOKEN, DELETEHASH):
        assert secret not in err


async def test_the_ledger_never_logs_a_deletehash_at_debug(
    restore_logging: None, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    debug_logging()
    deletehash = "Dh5ecretDeletehash01"
    async with await Ledger.open(tmp_path / "ledger.sqlite3") as ledger:
        pending = await ledger.begin_upload(
            digest="ab" * 32, size=3, mime="image/png", kind="image", origin=Origin(door="cli")
        )
        await ledger.complete_upload(
            pending, imgur_id="AbC1234", link="https://i.imgur.com/AbC1234.png",
            deletehash=deletehash,
        )  # fmt: skip
        upload = await ledger.get_upload("AbC1234")
        assert upload is not None
        await ledger.mark_upload_deleted(upload.id, by=None, reason="test")

    err = capsys.readouterr().err
    assert "AbC1234" in err, "the ledger's own lines must show at DEBUG"
    assert deletehash not in err


# --- everything the command line prints --------------------------------------------------------


@pytest.fixture
async def token_imgur() -> Any:
    """An Imgur stand-in that takes an access token as well as the client id."""
    async with ImgurStandIn(client_id=CLIENT_ID, access_token=ACCESS_TOKEN) as standin:
        yield standin


async def run_cli(env: dict[str, str], cwd: Path, *args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bot", *args, cwd=cwd, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode() + err.decode()


@pytest.mark.parametrize(
    ("level", "with_token"),
    [("DEBUG", True), ("INFO", False)],
    ids=["debug-access-token", "info-client-id"],
)
async def test_command_line_output_never_shows_a_secret(
    token_imgur: ImgurStandIn, tmp_path: Path, level: str, with_token: bool
) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "IMGUR_CLIENT_ID": CLIENT_ID,
        "IMGUR_API_URL": token_imgur.url,
        "DATABASE_PATH": str(tmp_path / "ledger.sqlite3"),
        "LOG_LEVEL": level,
    }
    if with_token:
        env["IMGUR_ACCESS_TOKEN"] = ACCESS_TOKEN
    files = []
    for seed in range(3):
        path = tmp_path / f"f{seed}.png"
        path.write_bytes(samples.png(seed=500 + seed))
        files.append(str(path))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"PK\x03\x04" + bytes(64))
    token_imgur.fail_next("server_error", path="/3/image")

    printed = []
    code, text = await run_cli(env, tmp_path, "upload", *files, files[0], str(broken))
    printed.append(text)
    assert code == 1
    links = [line for line in text.splitlines() if line.startswith("https://i.imgur.com/")]
    assert len(links) == 4
    token_imgur.fail_next("invalid_client", path="/3/credits")
    for args in (["history"], ["check"], ["delete", links[0]]):
        printed.append((await run_cli(env, tmp_path, *args))[1])

    everything = "\n".join(printed)
    assert len(token_imgur.images) == 3
    if level == "DEBUG":
        assert "Imgur POST /3/image" in everything, "DEBUG must actually be on"
    for image in token_imgur.images.values():
        assert image.deletehash not in everything
    assert CLIENT_ID not in everything
    assert ACCESS_TOKEN not in everything
    assert "Client-ID " not in everything
    assert "Bearer " not in everything
