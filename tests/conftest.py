"""Fixtures shared across the suite: local HTTP servers on 127.0.0.1, never the internet."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from bot.services import Services, open_services
from bot.settings import Settings, load_settings
from tests.imgur_standin import ImgurStandIn

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class WebFiles:
    """A small web server whose routes tests fill in; it records every path asked for."""

    app: web.Application
    base: str = ""
    hits: list[str] = field(default_factory=list)
    routes: dict[str, Handler] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"{self.base}{path}"

    def serve_bytes(self, path: str, data: bytes, content_type: str = "image/png") -> str:
        async def handler(request: web.Request) -> web.StreamResponse:
            return web.Response(body=data, content_type=content_type)

        self.routes[path] = handler
        return self.url(path)

    def serve(self, path: str, handler: Handler) -> str:
        self.routes[path] = handler
        return self.url(path)


@pytest.fixture
async def web_files() -> AsyncIterator[WebFiles]:
    app = web.Application()
    files = WebFiles(app)

    async def dispatch(request: web.Request) -> web.StreamResponse:
        files.hits.append(request.path)
        handler = files.routes.get(request.path)
        if handler is None:
            raise web.HTTPNotFound()
        return await handler(request)

    app.router.add_route("*", "/{tail:.*}", dispatch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    files.base = f"http://127.0.0.1:{port}"
    yield files
    await runner.cleanup()


@pytest.fixture
async def imgur() -> AsyncIterator[ImgurStandIn]:
    """A local Imgur that expects the client id ``test-client-id``."""
    async with ImgurStandIn() as standin:
        yield standin


@pytest.fixture
def settings(imgur: ImgurStandIn, tmp_path: Path) -> Settings:
    """Settings pointing at the Imgur stand-in, a ledger under ``tmp_path``, local URLs allowed."""
    return load_settings(
        {
            "IMGUR_CLIENT_ID": imgur.client_id,
            "IMGUR_API_URL": imgur.url,
            "DATABASE_PATH": str(tmp_path / "ledger.sqlite3"),
            "ALLOW_PRIVATE_URLS": "true",
        },
        env_file=None,
    )


@pytest.fixture
async def services(settings: Settings) -> AsyncIterator[Services]:
    """The real services (Imgur client, ledger, pipeline) wired as in production."""
    async with open_services(settings) as opened:
        yield opened
