"""The failures a person can be told about.

    RehostError                  one sentence a user can act on (``str(error)``)
     ├── SettingsError           a setting is missing or malformed   (bot.settings)
     ├── MediaError              the bytes are not something we rehost (bot.media)
     │    ├── UnsupportedMedia
     │    ├── MediaTooLarge
     │    └── EmptyMedia / TruncatedMedia
     ├── SourceError             the source could not be read        (bot.sources)
     │    └── BlockedAddress
     ├── ImgurError              Imgur said no or could not be reached (bot.imgur)
     │    ├── ImgurRejected
     │    ├── ImgurAuthError
     │    ├── ImgurRateLimited
     │    ├── ImgurUnavailable
     │    └── ImgurNotFound
     ├── LedgerError             the record could not be read or written (bot.ledger)
     └── QueueFull / NotPermitted (bot.scheduler, cogs)

Every message is safe to show: no token, client id, deletehash or raw upstream body.
"""

from __future__ import annotations


class RehostError(Exception):
    """A failure whose message is one short sentence safe to show to the person who asked."""

    @property
    def user_message(self) -> str:
        return str(self)


class NotPermitted(RehostError):
    """The person asking may not do this."""


class NotFound(RehostError):
    """The upload or record named does not exist (or is not visible to the asker)."""
