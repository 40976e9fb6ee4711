"""One upload of one file by one approach, measured in this (fresh) process.

``python -m bench.single APPROACH FILE IMGUR_URL [--repeat]`` prints one JSON object:
wall time, extra peak memory, bytes sent, the largest event-loop stall. Approaches:

- ``socket``: the floor. A plain socket sends the multipart request with ``sendfile``; no
  hashing, no event loop, no record.
- ``pipeline``: the bot's own path (``open_services`` and ``Pipeline.rehost`` on a
  ``FileSource``): spool while hashing, look the hash up in the ledger, wait for a slot,
  stream the upload from the spool, record it.
- ``requests``: the common recipe, base64 in a urlencoded form posted with ``requests``,
  called from a coroutine the way a naive bot does.
- ``pyimgur``: ``pyimgur.Imgur.upload_image(path=...)`` (0.8.1), also called from a
  coroutine.

With ``--repeat`` (pipeline only), the same file is rehosted a second time, and the time and
the bytes sent for that are reported too (a repeat should be answered from the ledger).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.measure import PeakMemory, SentBytes, StallMeter

CLIENT_ID = "bench-client-id"


def bare_socket_upload(url: str, path: Path, counter: SentBytes) -> int:
    """Send the multipart upload with nothing but a socket and sendfile; the HTTP status."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    size = path.stat().st_size
    boundary = "floor" + str(time.perf_counter_ns())
    before = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="type"\r\n\r\nfile\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
        f'filename="{path.name}"\r\nContent-Type: image/gif\r\n\r\n'
    ).encode()
    after = f"\r\n--{boundary}--\r\n".encode()
    head = (
        f"POST /3/image HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Client-ID {CLIENT_ID}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(before) + size + len(after)}\r\nConnection: close\r\n\r\n"
    ).encode()

    with socket.create_connection((host, port)) as sock, path.open("rb") as file:
        sock.sendall(head + before)
        counter.add(sock.sendfile(file))
        sock.sendall(after)
        answer = bytearray()
        while chunk := sock.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


async def run_socket(url: str, path: Path, counter: SentBytes) -> dict[str, Any]:
    status = bare_socket_upload(url, path, counter)
    return {"ok": status == 200, "detail": f"HTTP {status}"}


async def run_requests(url: str, path: Path, counter: SentBytes) -> dict[str, Any]:
    import requests

    # Blocking on purpose: this is the recipe as bots use it, from a coroutine.
    data = path.read_bytes()  # noqa: ASYNC240
    answer = requests.post(  # noqa: ASYNC210
        f"{url}/3/image",
        headers={"Authorization": f"Client-ID {CLIENT_ID}"},
        data={"image": base64.b64encode(data), "type": "base64"},
        timeout=600,
    )
    return {"ok": answer.status_code == 200, "detail": f"HTTP {answer.status_code}"}


async def run_pyimgur(url: str, path: Path, counter: SentBytes) -> dict[str, Any]:
    import pyimgur

    client = pyimgur.Imgur(CLIENT_ID)
    client.base_url = url
    try:
        image = client.upload_image(path=str(path))
    except Exception as exc:  # report what PyImgur raised, whatever it is
        return {"ok": False, "detail": f"{type(exc).__name__}: {str(exc)[:80]}"}
    return {"ok": bool(image.id), "detail": "uploaded"}


async def pipeline_main(url: str, path: Path, counter: SentBytes, repeat: bool) -> dict[str, Any]:
    """The measured part runs between opening the services and closing them."""
    from bot.ledger import Origin
    from bot.services import open_services
    from bot.settings import load_settings
    from bot.sources import FileSource

    with tempfile.TemporaryDirectory(prefix="bench-ledger-") as folder:
        settings = load_settings(
            {
                "IMGUR_CLIENT_ID": CLIENT_ID,
                "IMGUR_API_URL": url,
                "DATABASE_PATH": str(Path(folder) / "ledger.sqlite3"),
            },
            env_file=None,
        )
        async with open_services(settings) as services:
            origin = Origin(door="cli", filename=path.name)

            async def once() -> dict[str, Any]:
                rehost = await services.pipeline.rehost(FileSource(path), origin)
                return {"ok": rehost.upload.link is not None, "reused": rehost.reused}

            result = await measured(once, counter)
            if repeat:
                sent = counter.total
                started = time.perf_counter()
                again = await services.pipeline.rehost(FileSource(path), origin)
                result["repeat_wall"] = time.perf_counter() - started
                result["repeat_sent"] = counter.total - sent
                result["repeat_reused"] = again.reused
    return result


async def measured(
    work: Callable[[], Awaitable[dict[str, Any]]], counter: SentBytes
) -> dict[str, Any]:
    sent = counter.total
    with PeakMemory() as memory:
        async with StallMeter() as stall:
            started = time.perf_counter()
            result = await work()
            wall = time.perf_counter() - started
    result.update(wall=wall, extra_peak=memory.extra, sent=counter.total - sent, stall=stall.worst)
    return result


APPROACHES = {"socket": run_socket, "requests": run_requests, "pyimgur": run_pyimgur}


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    counter = SentBytes().install()
    if args.approach == "pipeline":
        result = await pipeline_main(args.url, args.file, counter, args.repeat)
    else:
        approach = APPROACHES[args.approach]
        result = await measured(lambda: approach(args.url, args.file, counter), counter)
    result.update(approach=args.approach, size=args.file.stat().st_size)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("approach", choices=[*APPROACHES, "pipeline"])
    parser.add_argument("file", type=Path)
    parser.add_argument("url")
    parser.add_argument("--repeat", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
