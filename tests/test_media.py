import pytest

from bot import media
from bot.media import MediaKind, MediaLimits
from tests import samples


@pytest.mark.parametrize(
    ("data", "mime", "kind"),
    [
        (samples.png(), "image/png", MediaKind.IMAGE),
        (samples.png(animated=True), "image/png", MediaKind.ANIMATED),
        (samples.jpeg(), "image/jpeg", MediaKind.IMAGE),
        (samples.gif(), "image/gif", MediaKind.IMAGE),
        (samples.gif(animated=True), "image/gif", MediaKind.ANIMATED),
        (samples.mp4(), "video/mp4", MediaKind.VIDEO),
        (samples.webm(), "video/webm", MediaKind.VIDEO),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 " + bytes(32), "image/webp", MediaKind.IMAGE),
        (b"RIFF\x00\x00\x00\x00WEBPVP8X" + bytes([0, 0, 0, 0, 0x02]) + bytes(32), "image/webp",
         MediaKind.ANIMATED),
        (b"II*\x00" + bytes(32), "image/tiff", MediaKind.IMAGE),
        (b"BM" + bytes(12) + b"\x28\x00\x00\x00" + bytes(32), "image/bmp", MediaKind.IMAGE),
        (b"\x00\x00\x00\x14ftypqt  " + bytes(32), "video/quicktime", MediaKind.VIDEO),
    ],
)  # fmt: skip
def test_kind_comes_from_the_bytes(data: bytes, mime: str, kind: MediaKind) -> None:
    found = media.sniff(data)

    assert (found.mime, found.kind) == (mime, kind)


@pytest.mark.parametrize(
    "data",
    [
        b"PK\x03\x04" + bytes(60),  # a ZIP named .png
        b"\x7fELF\x02\x01\x01" + bytes(60),
        b"<!DOCTYPE html><html><body>hello</body></html>",
        b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
        b"%PDF-1.7\n" + bytes(60),
        b"\x00\x00\x00\x18ftypheic" + bytes(32),  # HEIC still
        b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x88matroska" + bytes(40),
        b"BM this is only text that starts with BM",
    ],
)
def test_anything_else_is_refused_with_a_reason(data: bytes) -> None:
    with pytest.raises(media.UnsupportedMedia, match="Imgur"):
        media.sniff(data)


def test_empty_and_tiny_inputs_get_their_own_errors() -> None:
    with pytest.raises(media.EmptyMedia):
        media.sniff(b"")
    with pytest.raises(media.TruncatedMedia):
        media.sniff(b"abc")


def test_limits_depend_on_the_kind() -> None:
    limits = MediaLimits(image=10, video=100)
    still = media.sniff(samples.png())
    animated = media.sniff(samples.gif(animated=True))

    media.check_size(50, limits, animated)
    media.check_size(100, limits)
    with pytest.raises(media.MediaTooLarge, match="images may be at most"):
        media.check_size(11, limits, still)
    with pytest.raises(media.MediaTooLarge):
        media.check_size(101, limits)


def test_a_cut_png_or_gif_is_noticed() -> None:
    png = samples.png()
    gif = samples.gif()

    media.check_ending(media.sniff(png), png[-16:])
    with pytest.raises(media.TruncatedMedia):
        media.check_ending(media.sniff(png), png[:-5][-16:])
    with pytest.raises(media.TruncatedMedia):
        media.check_ending(media.sniff(png), (png + b"PK\x03\x04zip")[-16:])
    with pytest.raises(media.TruncatedMedia):
        media.check_ending(media.sniff(gif), gif[:-1][-16:])


def test_a_webp_shorter_than_its_riff_header_says_is_noticed() -> None:
    payload = b"VP8 " + (10).to_bytes(4, "little") + bytes(10)
    webp = b"RIFF" + (4 + len(payload)).to_bytes(4, "little") + b"WEBP" + payload
    found = media.sniff(webp)

    media.check_length(found, webp, len(webp))
    media.check_length(found, webp, len(webp) + 2)  # padding after the end is not a cut
    with pytest.raises(media.TruncatedMedia, match="WebP"):
        media.check_length(found, webp, len(webp) - 1)


def test_labels_read_well() -> None:
    assert media.sniff(samples.png()).label == "PNG image"
    assert media.sniff(samples.gif(animated=True)).label == "animated GIF"
    assert media.sniff(samples.mp4()).label == "MP4 video"
