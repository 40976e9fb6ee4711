"""How much memory ``python -m bot serve`` uses while a large file streams through it.

Starts the Imgur stand-in (in this process) and the endpoint alone (``python -m bot serve``, a
child process), warms the endpoint up with a small upload, notes its resident size, then
uploads a video of ``--mb`` megabytes (150 by default) through ``POST /api/upload`` and reports
the child's peak resident size (``VmHWM``) against its resting size. Everything stays on
127.0.0.1. Linux only (it reads ``/proc``).

    .venv/bin/python -m bench.http_memory [--mb 150]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from tests import samples
from tests.imgur_standin import ImgurStandIn

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-http-memory-token"
MB = 1024 * 1024
CHUNK = 4 * MB


def write_video(path: Path, size: int) -> None:
    """An MP4-looking file of ``size`` bytes: an ``ftyp`` box, then one big ``mdat`` box."""
    ftyp = struct.pack(">I", 24) + b"ftypisom" + b"\x00\x00\x02\x00" + b"isomiso2"
    with path.open("wb") as handle:
        handle.write(ftyp + struct.pack(">I", size - len(ftyp)) + b"mdat")
        left = size - len(ftyp) - 8
        filler = os.urandom(CHUNK)  # incompressible, so nothing along the way can cheat
        while left > 0:
            handle.write(filler[: min(CHUNK, left)])
            left -= CHUNK


def memory(pid: int) -> dict[str, int]:
    """The process's VmRSS and VmHWM (peak) in bytes."""
    figures: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in {"VmRSS", "VmHWM"}:
            figures[name] = int(value.split()[0]) * 1024
    return figures


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current size (Linux 4.0+); False where the kernel refuses."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def upload(client: aiohttp.ClientSession, url: str, path: Path) -> dict[str, str]:
    with path.open("rb") as handle:
        form = aiohttp.FormData()
        form.add_field("file", handle, filename=path.name, content_type="video/mp4")
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with client.post(url, data=form, headers=headers) as response:
            body: dict[str, str] = await response.json()
            if response.status != 200:
                raise SystemExit(f"upload failed with {response.status}: {body}")
            return body


async def drain(stream: asyncio.StreamReader, ready: asyncio.Event, lines: list[str]) -> None:
    """Read the server's log, so its pipe never fills; note when it listens."""
    while line := (await stream.readline()).decode():
        lines.append(line)
        if "listening on" in line:
            ready.set()


async def main(size_mb: int) -> int:
    with tempfile.TemporaryDirectory(prefix="http-memory-") as scratch:
        folder = Path(scratch)
        video = folder / "big.mp4"
        await asyncio.to_thread(write_video, video, size_mb * MB)
        small = folder / "small.png"
        small.write_bytes(samples.png())

        async with ImgurStandIn(video_limit=max(200, size_mb + 1) * MB) as imgur:
            port = free_port()
            env = {
                "PATH": os.environ.get("PATH", ""),
                "PYTHONPATH": str(ROOT),
                "IMGUR_CLIENT_ID": imgur.client_id,
                "IMGUR_API_URL": imgur.url,
                "DATABASE_PATH": str(folder / "ledger.sqlite3"),
                "HTTP_PORT": str(port),
                "HTTP_TOKEN": TOKEN,
                "LOG_LEVEL": "INFO",
                "TMPDIR": str(folder),
            }
            server = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot", "serve",
                cwd=folder, env=env, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert server.stderr is not None
            ready, lines = asyncio.Event(), []
            reader = asyncio.create_task(drain(server.stderr, ready, lines))
            try:
                await asyncio.wait_for(ready.wait(), 60)
                url = f"http://127.0.0.1:{port}/api/upload"
                timeout = aiohttp.ClientTimeout(total=600)
                async with aiohttp.ClientSession(timeout=timeout) as client:
                    await upload(client, url, small)  # warm-up: imports, sessions, SQLite
                    resting = memory(server.pid)["VmRSS"]
                    exact_peak = reset_peak(server.pid)

                    started = time.perf_counter()
                    body = await upload(client, url, video)
                    elapsed = time.perf_counter() - started
                figures = memory(server.pid)
            finally:
                if server.returncode is None:
                    server.send_signal(signal.SIGTERM)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(server.wait(), 60)
                if server.returncode is None:
                    server.kill()
                    await server.wait()
                await reader

            received = imgur.images[body["id"]].bytes_received

    peak = figures["VmHWM"]
    print(f"file: {size_mb} MB video; Imgur stand-in received {received / MB:.1f} MB")
    print(f"upload through the endpoint: {elapsed:.1f} s ({size_mb / elapsed:.1f} MB/s)")
    print(f"server resting size after warm-up: {resting / MB:.1f} MB")
    label = "peak during the upload" if exact_peak else "peak since start (VmHWM not reset)"
    print(f"server {label}: {peak / MB:.1f} MB (+{(peak - resting) / MB:.1f} MB)")
    print(f"server size afterwards: {figures['VmRSS'] / MB:.1f} MB")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=150, help="size of the upload in MB")
    arguments = parser.parse_args()
    if not Path("/proc/self/status").exists():
        sys.exit("this benchmark reads /proc and runs on Linux only")
    sys.exit(asyncio.run(main(arguments.mb)))
