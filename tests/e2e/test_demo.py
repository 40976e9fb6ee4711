"""``make demo`` keeps working: it plays its conversation and stops everything it started."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from tests.e2e.harness import REPO

DEMO_TIMEOUT = 60.0


async def test_the_demo_plays_the_conversation_and_stops_cleanly() -> None:
    demo = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "demo.run",
        cwd=REPO,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO)},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # the bot it starts is in its group: one kill stops both
    )
    try:
        stdout, stderr = await asyncio.wait_for(demo.communicate(), DEMO_TIMEOUT)
    finally:
        if demo.returncode is None:
            os.killpg(demo.pid, signal.SIGKILL)
            await demo.wait()
    transcript = stdout.decode()

    assert demo.returncode == 0, transcript + stderr.decode()
    assert not stderr
    assert "alice posts in #art" in transcript
    assert 'everyone sees       the bot replies: "https://i.imgur.com/' in transcript
    assert "only bob sees" in transcript
    assert 'only mia sees       "Deleted `' in transcript
    assert "DELETE /3/image/<deletehash> → 200" in transcript
    assert "the bot's reply is gone" in transcript
    assert "exit status 0; stopped cleanly" in transcript
