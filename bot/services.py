"""The long-lived objects every door shares, created in one place and closed in one place."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

import aiohttp
from yarl import URL

from bot.imgur import ImgurClient
from bot.ledger import Ledger, LedgerError
from bot.media import MediaLimits
from bot.pipeline import Pipeline
from bot.quota import QuotaKeeper
from bot.scheduler import Scheduler
from bot.settings import Settings
from bot.sources import Fetcher, is_public_address

log = logging.getLogger(__name__)

LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True)
class Services:
    settings: Settings
    imgur: ImgurClient
    ledger: Ledger
    pipeline: Pipeline


@contextlib.asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    """Open the HTTP sessions, the Imgur client, the ledger and the pipeline; close them after.

    Imgur gets its own session: it is a trusted host (perhaps a local stand-in), while the
    fetch session only reaches public addresses unless ``ALLOW_PRIVATE_URLS`` is set.
    """
    async with contextlib.AsyncExitStack() as stack:
        imgur_session = await stack.enter_async_context(
            aiohttp.ClientSession(trust_env=False, headers={"User-Agent": "imgur-rehost-bot"})
        )
        fetch_session = await stack.enter_async_context(
            Fetcher.create_session(allow_private=settings.allow_private_urls)
        )
        discord_fetcher = None
        discord_hosts = _discord_hosts(settings)
        if discord_hosts and not settings.allow_private_urls:
            discord_session = await stack.enter_async_context(
                Fetcher.create_session(allow_private=True)
            )
            discord_fetcher = Fetcher(discord_session, allow_private=True, hosts=discord_hosts)
        ledger = await Ledger.open(settings.database_path)
        stack.push_async_callback(ledger.close)
        lease = LedgerLease(settings.database_path)
        stack.push_async_callback(lease.release)
        alone = await lease.acquire()

        imgur = ImgurClient(
            imgur_session,
            settings.imgur_client_id,
            api_url=settings.imgur_api_url,
            access_token=settings.imgur_access_token,
        )
        scheduler = Scheduler(
            workers=settings.upload_workers,
            queue_limit=settings.queue_limit,
            member_cooldown=settings.member_cooldown,
            quota=QuotaKeeper(imgur, reserve=settings.quota_reserve),
        )
        stack.push_async_callback(scheduler.close)
        # One thread hashes and writes every spool: it keeps up with any download, and a
        # single thread competes least with the event loop for the GIL (bench.burst).
        spool_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        stack.push_async_callback(asyncio.to_thread, spool_executor.shutdown)
        pipeline = Pipeline(
            imgur=imgur,
            ledger=ledger,
            fetcher=Fetcher(fetch_session, allow_private=settings.allow_private_urls),
            scheduler=scheduler,
            limits=MediaLimits(image=settings.max_image_bytes, video=settings.max_video_bytes),
            discord_fetcher=discord_fetcher,
            spool_executor=spool_executor,
        )
        if alone:
            await pipeline.reconcile()
        else:
            log.debug("the ledger is in use elsewhere; pending uploads there are not interrupted")
        await lease.share()
        yield Services(settings=settings, imgur=imgur, ledger=ledger, pipeline=pipeline)


def _discord_hosts(settings: Settings) -> frozenset[str]:
    """The hosts of DISCORD_API_URL and DISCORD_GATEWAY_URL, but public addresses.

    Discord's own attachment links point at its public CDN. When an operator points the bot
    at a Discord proxy or stand-in inside the network, the attachments it issues live there
    too, and must be fetched from there whatever ALLOW_PRIVATE_URLS says of people's links.
    A name is kept whatever it resolves to: the operator chose it as Discord.
    """
    hosts: set[str] = set()
    for url in (settings.discord_api_url, settings.discord_gateway_url):
        host = URL(url).host
        if host is None:
            continue
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            hosts.add(host)
            continue
        if address.is_loopback:
            hosts |= LOOPBACK_NAMES  # "localhost" and 127.0.0.1 name the same place
        elif not is_public_address(host):
            hosts.add(host)
    if "localhost" in hosts:
        hosts |= LOOPBACK_NAMES
    return frozenset(hosts)


class LedgerLease:
    """A lock beside the database, held for as long as this process uses the ledger.

    Rows left pending are interrupted uploads only if no other process has them in flight
    (the bot, while the command line runs), so the first process reconciles only while it
    holds the lock alone; then it shares it. The kernel drops the lock when a process dies.
    """

    def __init__(self, database: Path) -> None:
        self._path = database.with_name(database.name + ".lock")
        self._handle: IO[bytes] | None = None

    async def acquire(self) -> bool:
        """Take the lock; True when this process is alone with the ledger.

        Raises:
            LedgerError: the lock file cannot be opened (another user's, or not a file).
        """
        try:
            self._handle = await asyncio.to_thread(self._path.open, "ab")
        except OSError as exc:
            # Typically left by a run as another user (root), which this one may not open.
            raise LedgerError(
                f"The upload records' lock file {self._path} cannot be opened "
                f"({exc.strerror or exc}); it must be a file the bot can write, beside "
                "DATABASE_PATH."
            ) from exc
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            await asyncio.to_thread(fcntl.flock, self._handle, fcntl.LOCK_SH)
            return False
        return True

    async def share(self) -> None:
        """Let other processes in, after reconciling."""
        if self._handle is not None:
            await asyncio.to_thread(fcntl.flock, self._handle, fcntl.LOCK_SH)

    async def release(self) -> None:
        if self._handle is not None:
            await asyncio.to_thread(self._handle.close)
            self._handle = None
