"""What a file really is, judged by its bytes, and whether Imgur will take it."""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from bot.errors import RehostError

# Enough to see an APNG's acTL chunk or a GIF's looping extension behind large colour tables
# or ICC profiles, which come before the first frame.
SNIFF_BYTES = 64 * 1024
# Enough of a file's end to find a ZIP end record behind the longest archive comment.
TAIL_BYTES = 22 + 65535
MB = 1024 * 1024
_ZIP_END = b"PK\x05\x06"


class MediaError(RehostError):
    """The bytes are not something the bot rehosts."""


class UnsupportedMedia(MediaError):
    """Not an image or video that Imgur accepts."""


class MediaTooLarge(MediaError):
    """Over the size limit for its kind."""


class EmptyMedia(MediaError):
    """No bytes at all."""


class TruncatedMedia(MediaError):
    """Fewer bytes than announced, or a file that stops before its end."""


class MediaKind(enum.StrEnum):
    IMAGE = "image"
    ANIMATED = "animated"
    VIDEO = "video"


@dataclass(frozen=True)
class MediaType:
    mime: str
    extension: str
    kind: MediaKind

    @property
    def label(self) -> str:
        """Short name for people: ``PNG image``, ``animated GIF``, ``MP4 video``."""
        name = self.extension.upper()
        if self.kind is MediaKind.ANIMATED:
            return f"animated {name}"
        return f"{name} {self.kind.value}"


@dataclass(frozen=True)
class MediaLimits:
    """Largest accepted size per kind, in bytes."""

    image: int = 20 * MB
    video: int = 200 * MB

    @property
    def ceiling(self) -> int:
        return max(self.image, self.video)

    def limit_for(self, kind: MediaKind) -> int:
        # Imgur allows animated images the video limit.
        return self.image if kind is MediaKind.IMAGE else self.video


def check_size(
    size: int, limits: MediaLimits, media_type: MediaType | None = None, *, so_far: bool = False
) -> None:
    """Refuse ``size`` bytes when over the limit of the kind (or of every kind, if unknown).

    ``so_far`` marks a count taken while reading: reading stops there, so the file's whole
    size is not known and is not stated.
    """
    limit = limits.ceiling if media_type is None else limits.limit_for(media_type.kind)
    if size > limit:
        what = "files" if media_type is None else f"{media_type.kind.value}s"
        found = f"over {limit / MB:.0f} MB" if so_far else f"{size / MB:.1f} MB"
        raise MediaTooLarge(f"The file is {found}; {what} may be at most {limit / MB:.0f} MB.")


def sniff(head: bytes) -> MediaType:
    """The type of a file from its first bytes (up to ``SNIFF_BYTES``).

    Raises:
        EmptyMedia: ``head`` is empty.
        UnsupportedMedia: the bytes are not an image or video Imgur takes.
    """
    if not head:
        raise EmptyMedia("The file is empty.")

    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        animated = _png_is_animated(head)
        return MediaType("image/png", "png", MediaKind.ANIMATED if animated else MediaKind.IMAGE)
    if head.startswith(b"\xff\xd8\xff"):
        return MediaType("image/jpeg", "jpg", MediaKind.IMAGE)
    if head.startswith((b"GIF87a", b"GIF89a")):
        animated = b"NETSCAPE2.0" in head or b"ANIMEXTS1.0" in head
        return MediaType("image/gif", "gif", MediaKind.ANIMATED if animated else MediaKind.IMAGE)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        animated = head[12:16] == b"VP8X" and len(head) > 20 and bool(head[20] & 0x02)
        kind = MediaKind.ANIMATED if animated else MediaKind.IMAGE
        return MediaType("image/webp", "webp", kind)
    if head.startswith(b"BM") and len(head) >= 26 and _bmp_header_is_sane(head):
        return MediaType("image/bmp", "bmp", MediaKind.IMAGE)
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return MediaType("image/tiff", "tiff", MediaKind.IMAGE)
    if head[4:8] == b"ftyp":
        return _iso_media(head)
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return _matroska(head)
    if len(head) < 12:
        raise TruncatedMedia("The file is too short to be an image or video.")
    raise UnsupportedMedia(
        "That is not an image or video Imgur accepts "
        "(PNG, JPEG, GIF, WebP, BMP, TIFF, MP4, MOV or WebM)."
    )


def check_ending(media_type: MediaType, tail: bytes) -> None:
    """Refuse a file whose last bytes show that it was cut short (or carries a payload).

    ``tail`` is up to ``TAIL_BYTES`` from the end of the file.
    """
    if _ends_with_zip(tail):
        # An image with an archive behind it is a polyglot (a "GIFAR"): readers that look
        # at the end see a ZIP (or JAR) and would open it.
        raise UnsupportedMedia(
            f"That {media_type.label} has a ZIP archive hidden after it; send the file alone."
        )
    if media_type.mime == "image/png" and not tail.endswith(b"IEND\xaeB`\x82"):
        raise TruncatedMedia("The PNG file is incomplete or has data after its end.")
    if media_type.mime == "image/gif" and not tail.rstrip(b"\x00").endswith(b"\x3b"):
        raise TruncatedMedia("The GIF file is incomplete.")


def check_length(media_type: MediaType, head: bytes, size: int) -> None:
    """Refuse a file of ``size`` bytes that is shorter than its own header says it is.

    A WebP states its length in its RIFF header; Imgur refuses one that stops short as corrupt,
    after the upload has been paid for.
    """
    if media_type.mime == "image/webp" and len(head) >= 8:
        (riff_size,) = struct.unpack("<I", head[4:8])
        if size < riff_size + 8:
            raise TruncatedMedia("The WebP file is incomplete.")


def _ends_with_zip(tail: bytes) -> bool:
    """Whether ``tail`` ends with a ZIP end-of-central-directory record (and its comment)."""
    position = tail.rfind(_ZIP_END)
    while position != -1:
        if position + 22 <= len(tail):
            (comment_length,) = struct.unpack("<H", tail[position + 20 : position + 22])
            if position + 22 + comment_length == len(tail):
                return True
        position = tail.rfind(_ZIP_END, 0, position)
    return False


def _png_is_animated(head: bytes) -> bool:
    # An APNG announces itself with an acTL chunk before the first IDAT chunk.
    offset = 8
    while offset + 8 <= len(head):
        length, chunk = struct.unpack(">I4s", head[offset : offset + 8])
        if chunk == b"acTL":
            return True
        if chunk == b"IDAT":
            return False
        offset += 12 + length
    return False


def _bmp_header_is_sane(head: bytes) -> bool:
    # "BM" alone is too common a prefix; the DIB header size must be one of the known ones.
    (dib_size,) = struct.unpack("<I", head[14:18])
    return dib_size in {12, 40, 52, 56, 64, 108, 124}


_QUICKTIME_BRANDS = {b"qt  "}
_MP4_BRANDS = {
    b"isom", b"iso2", b"iso4", b"iso5", b"iso6", b"mp41", b"mp42", b"avc1", b"dash",
    b"M4V ", b"M4VP", b"MSNV", b"3gp4", b"3gp5", b"3g2a", b"f4v ", b"mmp4",
}  # fmt: skip


def _iso_media(head: bytes) -> MediaType:
    brand = head[8:12]
    if brand in _QUICKTIME_BRANDS:
        return MediaType("video/quicktime", "mov", MediaKind.VIDEO)
    if brand in _MP4_BRANDS:
        return MediaType("video/mp4", "mp4", MediaKind.VIDEO)
    # HEIC/AVIF stills and audio-only M4A share the container but not Imgur's support.
    raise UnsupportedMedia(
        "That file's format is not one Imgur accepts; convert it to MP4, PNG or JPEG."
    )


def _matroska(head: bytes) -> MediaType:
    if b"webm" in head[:64]:
        return MediaType("video/webm", "webm", MediaKind.VIDEO)
    raise UnsupportedMedia("Matroska (MKV) video is not accepted by Imgur; convert it to MP4.")
