"""Settings read from the environment and an optional ``.env`` file."""

from __future__ import annotations

import io
import ipaddress
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from bot.errors import RehostError

MB = 1024 * 1024
IMGUR_STILL_LIMIT = 20 * MB
IMGUR_VIDEO_LIMIT = 200 * MB
# More uploads at once than this only buys 429s from Imgur; a longer queue only waits longer
# than anyone would; a reserve over an application's daily credits would stop auto-rehost for
# good; an hour between a member's uploads is already more than Imgur's hourly window asks.
UPPER_BOUNDS: Final = {
    "UPLOAD_WORKERS": 32,
    "QUEUE_LIMIT": 100_000,
    "QUOTA_RESERVE": 12_500,
    "MEMBER_COOLDOWN_SECONDS": 3600,
}
# What Imgur itself takes; a larger limit would only let files through for Imgur to refuse.
SIZE_CEILINGS: Final = {"MAX_IMAGE_MB": IMGUR_STILL_LIMIT, "MAX_VIDEO_MB": IMGUR_VIDEO_LIMIT}


class SettingsError(RehostError):
    """A setting is missing or malformed; the message names it and says how to fix it."""


@dataclass(frozen=True)
class Settings:
    """Everything the bot is configured with; secrets are left out of ``repr``."""

    imgur_client_id: str = field(repr=False)
    discord_token: str | None = field(default=None, repr=False)
    imgur_access_token: str | None = field(default=None, repr=False)
    database_path: Path = Path("data/rehost.sqlite3")
    imgur_api_url: str = "https://api.imgur.com"
    discord_api_url: str = "https://discord.com/api/v10"
    discord_gateway_url: str = "wss://gateway.discord.gg/"
    log_level: str = "INFO"
    allow_private_urls: bool = False
    max_image_bytes: int = IMGUR_STILL_LIMIT
    max_video_bytes: int = IMGUR_VIDEO_LIMIT
    upload_workers: int = 4
    queue_limit: int = 200
    member_cooldown: float = 2.0
    quota_reserve: int = 100
    http_host: str = "127.0.0.1"
    http_port: int | None = None
    http_token: str | None = field(default=None, repr=False)

    def require_discord_token(self) -> str:
        """The bot token, or a SettingsError saying how to provide it."""
        if not self.discord_token:
            raise SettingsError(
                "DISCORD_TOKEN is not set: put the bot token from the Discord Developer "
                "Portal in .env (see .env.example)."
            )
        return self.discord_token


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")


def _host(name: str, raw: str) -> str:
    """An address to listen on: an IP address or a host name."""
    value = raw.strip()
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOST_NAME.fullmatch(value):
            raise SettingsError(
                f"{name} must be an IP address or a host name (such as 127.0.0.1), not {raw!r}."
            ) from None
    return value


def _visible_ascii(text: str) -> bool:
    """No space, control or non-ASCII character: what may travel in a header or a URL."""
    return all("!" <= char <= "~" for char in text)


def _secret(name: str, raw: str) -> str:
    """A client id or token: it travels in an HTTP header, so visible ASCII only.

    A stray newline or space (a paste gone wrong) would otherwise surface as aiohttp's
    header-injection error, with a traceback, on the first request. The value is never echoed.
    """
    if not _visible_ascii(raw):
        raise SettingsError(
            f"{name} holds spaces, control or non-ASCII characters; "
            "paste the value again, on one line, without quotes around it."
        )
    return raw


def _boolean(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be true or false, not {raw!r}.")


def _whole_number(name: str, raw: str, *, least: int, too_small: str) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, not {raw!r}.") from None
    if value < least:
        raise SettingsError(f"{name} must {too_small}, not {raw!r}.")
    most = UPPER_BOUNDS.get(name)
    if most is not None and value > most:
        raise SettingsError(f"{name} may be at most {most}, not {raw!r}.")
    return value


def _positive_int(name: str, raw: str) -> int:
    return _whole_number(name, raw, least=1, too_small="be greater than zero")


def _non_negative_int(name: str, raw: str) -> int:
    return _whole_number(name, raw, least=0, too_small="not be negative")


def _seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, not {raw!r}.") from None
    if not math.isfinite(value):
        raise SettingsError(f"{name} must be a finite number of seconds, not {raw!r}.")
    if value < 0:
        raise SettingsError(f"{name} must not be negative, not {raw!r}.")
    most = UPPER_BOUNDS.get(name)
    if most is not None and value > most:
        raise SettingsError(f"{name} may be at most {most}, not {raw!r}.")
    return value


def _megabytes(name: str, raw: str) -> int:
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a size in megabytes, not {raw!r}.") from None
    if not math.isfinite(value):
        raise SettingsError(f"{name} must be a finite size in megabytes, not {raw!r}.")
    # Compared before int(): a finite value such as 1e308 overflows to infinity in bytes.
    ceiling = SIZE_CEILINGS[name]
    if value * MB > ceiling:
        raise SettingsError(f"{name} may not exceed Imgur's own limit of {ceiling // MB} MB.")
    if int(value * MB) <= 0:
        raise SettingsError(f"{name} must be greater than zero, not {raw!r}.")
    return int(value * MB)


def _url(name: str, raw: str) -> str:
    gateway = name == "DISCORD_GATEWAY_URL"
    # REST routes are joined onto the base, so its trailing slash goes; a gateway address is
    # connected to as it is, and a proxy may serve exactly ``/gateway/``.
    value = raw.strip() if gateway else raw.strip().rstrip("/")
    schemes = ("ws://", "wss://") if gateway else ("http://", "https://")
    if not value.startswith(schemes):
        raise SettingsError(f"{name} must start with {' or '.join(schemes)}, not {raw!r}.")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError:
        parts = None
    if parts is None or not parts.hostname or not _visible_ascii(value):
        raise SettingsError(f"{name} must be an address such as {schemes[-1]}host, not {raw!r}.")
    return value


def _log_level(name: str, raw: str) -> str:
    value = raw.strip().upper()
    if value not in logging.getLevelNamesMapping():
        raise SettingsError(f"{name} must be DEBUG, INFO, WARNING or ERROR, not {raw!r}.")
    return value


SQLITE_HEADER = b"SQLite format 3\x00"


def _database_path(name: str, raw: str) -> Path:
    """The ledger's file: absent (it is created), or a SQLite database; never a folder."""
    if not raw.isprintable():
        raise SettingsError(f"{name} holds control characters: {raw!r}.")
    path = Path(raw)
    try:
        if path.is_dir():
            raise SettingsError(
                f"{name} is a folder ({raw!r}); name a file in it, such as {raw}/rehost.sqlite3."
            )
        parent = next((p for p in path.absolute().parents if p.exists()), None)
        if parent is not None and not parent.is_dir():
            raise SettingsError(f"{name} lies under {str(parent)!r}, which is not a folder.")
        if path.exists() and not path.is_file():
            # A device such as /dev/null opens fine and then fails to migrate, misleadingly.
            raise SettingsError(
                f"{name} names {raw!r}, which is not a regular file; "
                "point it at the ledger or at a new file."
            )
        if path.is_file() and path.stat().st_size > 0:
            with path.open("rb") as file:
                header = file.read(len(SQLITE_HEADER))
            if header != SQLITE_HEADER:
                raise SettingsError(
                    f"{name} names {raw!r}, which is not a SQLite database; "
                    "point it at the ledger or at a new file."
                )
    except OSError as exc:
        raise SettingsError(f"{name} cannot be used ({raw!r}): {exc.strerror}.") from exc
    return path


def _port(name: str, raw: str) -> int:
    value = _positive_int(name, raw)
    if value > 65535:
        raise SettingsError(f"{name} must be a port number up to 65535, not {raw!r}.")
    return value


# Environment name -> (Settings field, parser). Every entry is documented in .env.example.
_FIELDS: dict[str, tuple[str, Callable[[str, str], object]]] = {
    "DISCORD_TOKEN": ("discord_token", _secret),
    "IMGUR_CLIENT_ID": ("imgur_client_id", _secret),
    "IMGUR_ACCESS_TOKEN": ("imgur_access_token", _secret),
    "DATABASE_PATH": ("database_path", _database_path),
    "IMGUR_API_URL": ("imgur_api_url", _url),
    "DISCORD_API_URL": ("discord_api_url", _url),
    "DISCORD_GATEWAY_URL": ("discord_gateway_url", _url),
    "LOG_LEVEL": ("log_level", _log_level),
    "ALLOW_PRIVATE_URLS": ("allow_private_urls", _boolean),
    "MAX_IMAGE_MB": ("max_image_bytes", _megabytes),
    "MAX_VIDEO_MB": ("max_video_bytes", _megabytes),
    "UPLOAD_WORKERS": ("upload_workers", _positive_int),
    "QUEUE_LIMIT": ("queue_limit", _positive_int),
    "MEMBER_COOLDOWN_SECONDS": ("member_cooldown", _seconds),
    "QUOTA_RESERVE": ("quota_reserve", _non_negative_int),
    "HTTP_HOST": ("http_host", _host),
    "HTTP_PORT": ("http_port", _port),
    "HTTP_TOKEN": ("http_token", _secret),
}


def _read_env_file(env_file: Path) -> dict[str, str]:
    """The settings in ``env_file``; a line python-dotenv cannot parse is an error, by number.

    python-dotenv skips such a line with a warning of its own, so a client id set on it (an
    unclosed quote, say) would be reported as not set at all.
    """
    try:
        text = env_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SettingsError(
            f"{env_file} cannot be read as UTF-8 text; save it as plain UTF-8 (see .env.example)."
        ) from exc
    except OSError as exc:
        raise SettingsError(f"{env_file} cannot be read ({exc.strerror}).") from exc

    broken = [binding.original.line for binding in parse_stream(io.StringIO(text)) if binding.error]
    if broken:
        # The line itself is not quoted back: it may hold a token.
        raise SettingsError(
            f"{env_file} line {broken[0]} cannot be parsed; write it as NAME=value, with any "
            "quotes closed (see .env.example)."
        )
    found = dotenv_values(stream=io.StringIO(text))
    return {k: v for k, v in found.items() if v is not None}


def load_settings(
    environ: Mapping[str, str] | None = None, *, env_file: Path | None = Path(".env")
) -> Settings:
    """Read settings from ``environ`` (default: the process environment) over ``env_file``.

    Raises:
        SettingsError: naming the first missing or malformed setting.
    """
    values: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        values.update(_read_env_file(env_file))
    values.update(os.environ if environ is None else environ)

    parsed: dict[str, object] = {}
    for name, (attribute, parse) in _FIELDS.items():
        raw = values.get(name, "").strip()
        if raw:
            parsed[attribute] = parse(name, raw)

    if "imgur_client_id" not in parsed:
        raise SettingsError(
            "IMGUR_CLIENT_ID is not set: register an application at "
            "https://api.imgur.com/oauth2/addclient and put its client id in .env "
            "(see .env.example)."
        )
    if ("http_port" in parsed) != ("http_token" in parsed):
        raise SettingsError("HTTP_PORT and HTTP_TOKEN go together: set both, or neither.")

    return Settings(**parsed)  # type: ignore[arg-type]
