"""The one rehost pipeline: fetch, check, deduplicate, upload, record; and take down again.

Every door (slash command, message menu, auto-rehost, command line, HTTP endpoint) goes
through ``Pipeline``; none of them talks to Imgur or writes upload records by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

from bot import sources
from bot.errors import RehostError
from bot.imgur import ImgurAlbum, ImgurClient, ImgurError
from bot.ledger import Album, Ledger, LedgerError, Origin, Rehost, Upload
from bot.media import MediaKind, MediaLimits
from bot.scheduler import Scheduler
from bot.sources import Fetcher, ProgressCallback, Source, UrlSource

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted by a restart"
CUT_OFF = "cut off before Imgur answered"


@dataclass
class _SharedLock:
    """A lock kept only while someone holds or awaits it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class Pipeline:
    """Turns sources into recorded Imgur uploads, and recorded uploads back into nothing."""

    def __init__(
        self,
        *,
        imgur: ImgurClient,
        ledger: Ledger,
        fetcher: Fetcher,
        scheduler: Scheduler,
        limits: MediaLimits,
        discord_fetcher: Fetcher | None = None,
        spool_dir: Path | None = None,
        spool_executor: Executor | None = None,
    ) -> None:
        self.imgur = imgur
        self.ledger = ledger
        self.fetcher = fetcher
        # Set when Discord itself is on a private address (a proxy, a stand-in): attachments
        # it issued there are fetched from it; every other link keeps the address rules.
        self.discord_fetcher = discord_fetcher
        self.scheduler = scheduler
        self.limits = limits
        self._spool_dir = spool_dir
        self._spool_executor = spool_executor
        self._same_bytes: dict[str, _SharedLock] = {}
        # What the last reconcile() closed, so a door can tell whoever asked (see reconcile).
        self.interrupted: list[tuple[Upload, Origin]] = []

    def url_source(
        self,
        url: str,
        *,
        filename: str = "",
        declared_size: int | None = None,
        from_discord: bool = False,
    ) -> UrlSource:
        """A source for ``url``, fetched under the address rules.

        ``from_discord`` marks a link Discord issued (an attachment's), not one a person typed.
        """
        fetcher = self.fetcher
        if from_discord and self.discord_fetcher is not None and self.discord_fetcher.serves(url):
            fetcher = self.discord_fetcher
        return UrlSource(url, fetcher, filename, declared_size)

    async def rehost(
        self, source: Source, origin: Origin, *, on_progress: ProgressCallback | None = None
    ) -> Rehost:
        """Give ``source`` a permanent home on Imgur, or reuse the home its bytes already have.

        Raises:
            RehostError: one of its subclasses, each with a sentence for the person who asked.
        """
        started = time.monotonic()
        # One rule for every door's titles; a door may apply it earlier to refuse sooner.
        origin = dataclasses.replace(origin, title=sources.clean_title(origin.title))
        # A fair turn to fetch and hash: a burst does not download everything at once, and
        # the guild that posted last does not wait behind everyone else's downloads.
        async with self.scheduler.admit(origin):
            spooled = await sources.spool(
                source,
                self.limits,
                directory=self._spool_dir,
                on_progress=on_progress,
                executor=self._spool_executor,
            )
        try:
            async with self._one_at_a_time(spooled.digest):
                # One round trip: a live upload of these bytes is reused, or a new one is put
                # on record (pending) before it queues for Imgur, so a crash leaves a trace.
                claim = await self.ledger.reuse_or_begin_upload(
                    digest=spooled.digest,
                    size=spooled.size,
                    mime=spooled.mime,
                    kind=spooled.kind.value,
                    origin=origin,
                )
                if isinstance(claim, Rehost):
                    log.info(
                        "reused upload %s for %s (%d bytes, %.0f ms)",
                        claim.upload.imgur_id,
                        origin.door,
                        spooled.size,
                        (time.monotonic() - started) * 1000,
                    )
                    return claim
                rehost = await self._upload(spooled, claim, origin, on_progress)
        finally:
            await spooled.release()

        log.info(
            "rehosted %s %s for %s (%d bytes, %.0f ms)",
            spooled.kind.value,
            rehost.upload.imgur_id,
            origin.door,
            spooled.size,
            (time.monotonic() - started) * 1000,
        )
        return rehost

    async def _upload(
        self,
        spooled: sources.Spool,
        pending_id: int,
        origin: Origin,
        on_progress: ProgressCallback | None,
    ) -> Rehost:
        """Call Imgur for the upload on record as ``pending_id``, and complete the record."""

        def report(sent: int) -> None:
            if on_progress is not None:
                on_progress("upload", sent, spooled.size)

        # The turn covers the Imgur call alone: the two commits around it (an fsync each)
        # keep no other upload waiting.
        calling = False
        try:
            async with self.scheduler.slot(origin):
                calling = True
                image = await self.imgur.upload(
                    spooled,
                    video=spooled.kind is MediaKind.VIDEO,
                    title=origin.title,
                    on_progress=report,
                )
        except BaseException as exc:
            if isinstance(exc, RehostError):
                reason = exc.user_message
            elif calling and isinstance(exc, asyncio.CancelledError):
                # Like a kill: Imgur may have stored the file, and its deletehash never came.
                reason = CUT_OFF
                log.warning("upload %d was cut off before Imgur answered", pending_id)
            else:
                reason = type(exc).__name__
            with contextlib.suppress(LedgerError):
                await asyncio.shield(self.ledger.abandon_upload(pending_id, reason))
            raise

        try:
            return await asyncio.shield(
                self.ledger.complete_upload(
                    pending_id, imgur_id=image.id, link=image.link, deletehash=image.deletehash
                )
            )
        except LedgerError:
            # No public copy may exist without its deletehash on record: take it down again.
            log.error("could not record upload %s; deleting it from Imgur", image.id)
            try:
                await self.imgur.delete_image(image.deletehash)
            except ImgurError:
                log.exception("upload %s is on Imgur but not on record", image.id)
            raise

    @contextlib.asynccontextmanager
    async def _one_at_a_time(self, digest: str) -> AsyncIterator[None]:
        """Serialise work on the same bytes: one Imgur call for identical posts, one deletion."""
        entry = self._same_bytes.setdefault(digest, _SharedLock())
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._same_bytes[digest]

    async def delete_upload(self, upload: Upload, *, by: int | None, reason: str) -> None:
        """Delete ``upload`` from Imgur, then mark it and every rehost of it deleted.

        Raises:
            ImgurError: Imgur could not delete it; the record stays live so it can be retried.
        """
        async with self._one_at_a_time(upload.digest):
            await self._delete_upload(upload, by=by, reason=reason)

    async def _delete_upload(self, upload: Upload, *, by: int | None, reason: str) -> bool:
        """Delete an upload still live on record; False if someone else already had."""
        current = await self.ledger.get_upload(upload.imgur_id) if upload.imgur_id else None
        if current is None or current.state != "done":
            return False
        if current.deletehash is not None:
            gone = not await self.imgur.delete_image(current.deletehash)
            if gone:
                log.info("upload %s was already gone from Imgur", current.imgur_id)
        await self.ledger.mark_upload_deleted(current.id, by=by, reason=reason)
        log.info("deleted upload %s (%s)", current.imgur_id, reason)
        return True

    async def release(
        self, rehosts: Sequence[Rehost], *, by: int | None, reason: str
    ) -> list[Upload]:
        """Withdraw ``rehosts``; delete from Imgur each upload that nothing else still uses.

        Each upload is settled on its own and under the lock of its bytes, so overlapping
        take-downs (a deleted source message and a moderator, say) delete it from Imgur once
        and a new post of the same bytes never reuses an upload being deleted. Imgur goes
        first, then the record: a failure leaves that upload's rehosts live for a later
        attempt and does not stop the others.

        Returns the uploads this call deleted from Imgur.

        Raises:
            ImgurError: the first Imgur failure, after every other upload was settled.
        """
        withdrawn = {r.id for r in rehosts}
        deleted: list[Upload] = []
        failure: ImgurError | None = None

        for upload_id, upload in {r.upload.id: r.upload for r in rehosts}.items():
            mine = [r.id for r in rehosts if r.upload.id == upload_id]
            async with self._one_at_a_time(upload.digest):
                live = await self.ledger.rehosts_of(upload_id, live_only=True)
                if any(r.id not in withdrawn for r in live):
                    log.info("upload %s is still used by other rehosts; kept", upload.imgur_id)
                    await self.ledger.mark_rehosts_deleted(mine, by=by, reason=reason)
                    continue
                try:
                    if await self._delete_upload(upload, by=by, reason=reason):
                        deleted.append(upload)
                    else:
                        await self.ledger.mark_rehosts_deleted(mine, by=by, reason=reason)
                except ImgurError as exc:
                    log.warning("could not delete upload %s from Imgur: %s", upload.imgur_id, exc)
                    failure = failure or exc

        if failure is not None:
            raise failure
        return deleted

    async def create_album(
        self, rehosts: Sequence[Rehost], origin: Origin, *, title: str | None = None
    ) -> Album:
        """An anonymous Imgur album holding the uploads of ``rehosts``, on record."""
        deletehashes = [r.upload.deletehash for r in rehosts if r.upload.deletehash]
        album: ImgurAlbum = await self.imgur.create_album(deletehashes, title=title)
        try:
            return await self.ledger.record_album(
                imgur_id=album.id,
                link=album.link,
                deletehash=album.deletehash,
                upload_ids=[r.upload.id for r in rehosts],
                origin=origin,
            )
        except LedgerError:
            log.error("could not record album %s; deleting it from Imgur", album.id)
            with contextlib.suppress(ImgurError):
                await self.imgur.delete_album(album.deletehash)
            raise

    async def delete_album(self, album: Album) -> None:
        """Delete an album (not its images) from Imgur and mark it deleted."""
        await self.imgur.delete_album(album.deletehash)
        await self.ledger.mark_album_deleted(album.id)

    async def reconcile(self) -> list[tuple[Upload, Origin]]:
        """Settle uploads left pending by a crash; returns them so their askers can be told.

        Whether Imgur received such an upload is unknown and its deletehash was never seen,
        so the record is closed as interrupted; its digest and size stay on record. The list
        is also kept in ``interrupted`` for doors that open the services through
        ``open_services``, which runs this at start.
        """
        interrupted = await self.ledger.pending_uploads()
        for upload, _origin in interrupted:
            await self.ledger.abandon_upload(upload.id, INTERRUPTED)
        if interrupted:
            log.warning("closed %d uploads interrupted by a restart", len(interrupted))
        self.interrupted = interrupted
        return interrupted
