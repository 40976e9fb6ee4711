"""Logging set-up, with secrets scrubbed from every line whatever the level."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

# Interaction and webhook tokens travel in URL paths that discord.py logs at DEBUG.
_TOKEN_IN_PATH = re.compile(r"(/(?:webhooks|interactions)/\d+/)[A-Za-z0-9_.\-]{20,}")
# discord.py logs whole gateway payloads at DEBUG; each interaction carries its token.
_SECRET_FIELD = re.compile(
    r"""(["'](?:token|access_token|refresh_token|deletehash)["']\s*:\s*["'])[^"']+"""
)
REDACTED = "[redacted]"


class RedactingFilter(logging.Filter):
    """Replaces known secrets, interaction tokens and secret fields with ``[redacted]``."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        text = _TOKEN_IN_PATH.sub(rf"\1{REDACTED}", text)
        return _SECRET_FIELD.sub(rf"\1{REDACTED}", text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        # Another handler may have formatted (and cached) the traceback already: redact the
        # cached text too, or a token in an exception message would pass through.
        if record.exc_info and record.exc_text is None:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def setup_logging(level: str, secrets: Iterable[str | None] = ()) -> None:
    """One stderr handler on the root logger, redacting ``secrets``; safe to call again."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_rehost", False):
            root.removeHandler(handler)

    handler = logging.StreamHandler()
    handler._rehost = True  # type: ignore[attr-defined]
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    )
    handler.addFilter(RedactingFilter(secrets))
    root.addHandler(handler)
    root.setLevel(level)
