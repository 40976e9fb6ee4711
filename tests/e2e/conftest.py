"""Fixtures for the end-to-end tests: the stand-ins in this process, the bot as a subprocess.

The expensive parts (the stand-ins and one bot process) live for a module; every test gets a
guild of its own, added while the bot is connected, so tests do not see each other's
channels, members or settings. Tests in these modules run in the module's event loop
(``pytestmark = pytest.mark.asyncio(loop_scope="module")``), the loop the stand-ins serve in.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from tests.discord_standin import DiscordStandIn
from tests.e2e.harness import (
    BotProcess,
    LinkedFiles,
    Server,
    leaks,
    new_server,
    running_bot,
    stand_ins,
)
from tests.imgur_standin import ImgurStandIn


@dataclass
class Stage:
    """What one module's tests share: the stand-ins, a file server and the running bot."""

    discord: DiscordStandIn
    imgur: ImgurStandIn
    files: LinkedFiles
    bot: BotProcess
    workdir: Path


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stage(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stage]:
    """The stand-ins and one ``python -m bot run`` for the module; stopped and checked after."""
    workdir = tmp_path_factory.mktemp("bot")
    async with (
        stand_ins() as (discord, imgur),
        LinkedFiles() as files,
        running_bot(discord, imgur, workdir) as bot,
    ):
        yield Stage(discord, imgur, files, bot, workdir)

    # From start-up to shutdown, no secret was shown on Discord or written to the log.
    found = leaks(discord, imgur, [bot.log])
    assert not found, "\n".join(found)


@pytest.fixture
def server(stage: Stage, request: pytest.FixtureRequest) -> Server:
    """A guild of the test's own, on the module's running bot."""
    name = re.sub(r"^test_", "", request.node.name).replace("_", " ")[:90]
    return new_server(stage.discord, name)
