"""Media files for the benchmark, made on the spot: valid, and different from each other.

Large files are animated GIFs: Imgur (and the bot) take animated images up to 200 MB in the
``image`` field of ``POST /3/image``, which is what every approach measured here sends, so one
kind of file serves every size. The bulk is one GIF comment extension of random bytes.
"""

from __future__ import annotations

import os
from pathlib import Path

from tests import samples

MB = 1024 * 1024
_HEAD = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"  # screen, 2-colour table
    b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"  # loop forever: animated
    b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00"  # frame 1
)
_TAIL = b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b"  # frame 2, end
_SUB = 255  # bytes of data in one GIF sub-block


def write_animated_gif(path: Path, size: int) -> Path:
    """An animated GIF of exactly ``size`` bytes."""
    room = size - len(_HEAD) - len(_TAIL) - 3  # the comment's 21 FE ... 00
    if room < 0:
        raise ValueError("too small for an animated GIF")
    noise = os.urandom(MB)

    with path.open("wb") as out:
        out.write(_HEAD + b"\x21\xfe")
        offset = 0
        pending = bytearray()
        while room >= _SUB + 1:
            start = offset % (MB - _SUB)
            pending.append(_SUB)
            pending += noise[start : start + _SUB]
            offset += _SUB + 7
            room -= _SUB + 1
            if len(pending) >= MB:
                out.write(pending)
                pending.clear()
        if room >= 2:  # a last, shorter sub-block takes up the rest
            pending.append(room - 1)
            pending += noise[: room - 1]
            room = 0
        out.write(pending)
        out.write(b"\x00" + _TAIL + b"\x00" * room)  # at most one byte of padding

    if path.stat().st_size != size:
        raise AssertionError(f"made {path.stat().st_size} bytes, wanted {size}")
    return path


def png_of(size: int, seed: int) -> bytes:
    """A still PNG of about ``size`` bytes, different for every seed below 256."""
    return samples.big_png(size, seed=seed)
