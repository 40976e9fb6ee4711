"""Small, real media files made on the fly, so tests ship no binaries."""

from __future__ import annotations

import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png(width: int = 4, height: int = 4, *, seed: int = 0, animated: bool = False) -> bytes:
    """A valid RGB PNG; different seeds give different bytes (and different hashes)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = bytes((seed + x) % 256 for x in range(width * 3))
    pixels = zlib.compress(b"".join(b"\x00" + row for _ in range(height)))
    chunks = [_chunk(b"IHDR", header)]
    if animated:
        chunks.append(_chunk(b"acTL", struct.pack(">II", 1, 0)))
    chunks += [_chunk(b"IDAT", pixels), _chunk(b"IEND", b"")]
    return b"\x89PNG\r\n\x1a\n" + b"".join(chunks)


def big_png(size: int, *, seed: int = 0) -> bytes:
    """A PNG of about ``size`` bytes: a real header, a large ancillary chunk, a real end."""
    small = png(seed=seed)
    filler = _chunk(b"teXt", b"c\x00" + bytes([seed % 256]) * max(0, size - len(small) - 14))
    return small[:33] + filler + small[33:]


def jpeg(*, seed: int = 0) -> bytes:
    """Enough of a JPEG for sniffing: SOI, a JFIF APP0 segment, a comment and EOI."""
    app0 = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    comment = b"\xff\xfe\x00\x06" + struct.pack(">I", seed)
    return b"\xff\xd8" + app0 + comment + b"\xff\xd9"


def gif(*, animated: bool = False, seed: int = 0) -> bytes:
    """A 1x1 GIF89a, with the looping extension when ``animated``."""
    screen = b"GIF89a\x01\x00\x01\x00\x80\x00\x00" + bytes([seed % 256, 0, 0]) + b"\xff\xff\xff"
    loop = b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00" if animated else b""
    frame = b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00"
    return screen + loop + frame * (2 if animated else 1) + b"\x3b"


def mp4(size: int = 2048, *, seed: int = 0) -> bytes:
    """An ISO media file with an ``ftyp`` box and an ``mdat`` box of filler."""
    ftyp = struct.pack(">I", 24) + b"ftypisom" + b"\x00\x00\x02\x00" + b"isomiso2"
    mdat_size = max(8, size - len(ftyp))
    return ftyp + struct.pack(">I", mdat_size) + b"mdat" + bytes([seed % 256]) * (mdat_size - 8)


def webm(*, seed: int = 0) -> bytes:
    """An EBML header declaring the ``webm`` doc type, then filler."""
    return b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm" + bytes([seed % 256]) * 64
