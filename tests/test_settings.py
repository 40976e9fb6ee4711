import os
import sqlite3
from pathlib import Path

import pytest

from bot.settings import MB, SettingsError, load_settings

BASE = {"IMGUR_CLIENT_ID": "abc123client"}


def load(**env: str) -> object:
    return load_settings({**BASE, **env}, env_file=None)


def test_defaults_need_only_the_imgur_client_id() -> None:
    settings = load_settings(BASE, env_file=None)

    assert settings.imgur_client_id == "abc123client"
    assert settings.discord_token is None
    assert settings.database_path == Path("data/rehost.sqlite3")
    assert settings.imgur_api_url == "https://api.imgur.com"
    assert settings.allow_private_urls is False
    assert settings.max_image_bytes == 20 * MB


def test_missing_client_id_names_the_setting_and_the_fix() -> None:
    with pytest.raises(SettingsError, match=r"IMGUR_CLIENT_ID is not set.*\.env"):
        load_settings({}, env_file=None)


def test_missing_discord_token_is_reported_only_when_the_bot_runs() -> None:
    settings = load_settings(BASE, env_file=None)

    with pytest.raises(SettingsError, match="DISCORD_TOKEN is not set"):
        settings.require_discord_token()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("ALLOW_PRIVATE_URLS", "maybe", "ALLOW_PRIVATE_URLS must be true or false"),
        ("UPLOAD_WORKERS", "many", "UPLOAD_WORKERS must be a whole number"),
        ("UPLOAD_WORKERS", "0", "UPLOAD_WORKERS must be greater than zero"),
        ("UPLOAD_WORKERS", "1000", "UPLOAD_WORKERS may be at most 32"),
        ("QUEUE_LIMIT", "10000000", "QUEUE_LIMIT may be at most 100000"),
        ("QUOTA_RESERVE", "99999999999999999999", "QUOTA_RESERVE may be at most 12500"),
        ("MEMBER_COOLDOWN_SECONDS", "1e300", "MEMBER_COOLDOWN_SECONDS may be at most 3600"),
        ("MAX_IMAGE_MB", "50", "MAX_IMAGE_MB may not exceed Imgur's own limit of 20 MB"),
        ("IMGUR_API_URL", "ftp://x", "IMGUR_API_URL must start with http:// or https://"),
        ("DISCORD_GATEWAY_URL", "http://x", "DISCORD_GATEWAY_URL must start with ws://"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL must be DEBUG"),
        ("HTTP_PORT", "70000", "HTTP_PORT must be a port number"),
        ("HTTP_PORT", "8080", "HTTP_PORT and HTTP_TOKEN go together"),
        ("HTTP_HOST", "http://0.0.0.0", "HTTP_HOST must be an IP address or a host name"),
        ("HTTP_HOST", "bad host", "HTTP_HOST must be an IP address or a host name"),
        # Values that would crash or mislead later, refused here instead.
        ("MAX_IMAGE_MB", "nan", "MAX_IMAGE_MB must be a finite size"),
        ("MAX_IMAGE_MB", "inf", "MAX_IMAGE_MB must be a finite size"),
        ("MAX_VIDEO_MB", "1e400", "MAX_VIDEO_MB must be a finite size"),
        ("MAX_IMAGE_MB", "1e308", "MAX_IMAGE_MB may not exceed Imgur's own limit"),
        ("MAX_VIDEO_MB", "9" * 300, "MAX_VIDEO_MB may not exceed Imgur's own limit"),
        ("MAX_IMAGE_MB", "1e-9", "MAX_IMAGE_MB must be greater than zero"),
        ("MEMBER_COOLDOWN_SECONDS", "nan", "MEMBER_COOLDOWN_SECONDS must be a finite number"),
        ("MEMBER_COOLDOWN_SECONDS", "inf", "MEMBER_COOLDOWN_SECONDS must be a finite number"),
        ("QUOTA_RESERVE", "-1", "QUOTA_RESERVE must not be negative"),
        ("QUOTA_RESERVE", "lots", "QUOTA_RESERVE must be a whole number"),
        ("IMGUR_API_URL", "http://127.0.0.1:99999", "IMGUR_API_URL must be an address"),
        ("IMGUR_API_URL", "http://[::1", "IMGUR_API_URL must be an address"),
        ("IMGUR_API_URL", "http://", "IMGUR_API_URL must start with http"),
        ("IMGUR_API_URL", "https://:443", "IMGUR_API_URL must be an address"),
        ("DISCORD_API_URL", "https://disc ord.com", "DISCORD_API_URL must be an address"),
    ],
)
def test_malformed_setting_is_named(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load(**{name: value})


def test_values_are_parsed() -> None:
    settings = load_settings(
        {
            **BASE,
            "ALLOW_PRIVATE_URLS": "yes",
            "MAX_VIDEO_MB": "50",
            "IMGUR_API_URL": "http://127.0.0.1:9/",
            "LOG_LEVEL": "debug",
            "QUOTA_RESERVE": "0",
        },
        env_file=None,
    )

    assert settings.allow_private_urls is True
    assert settings.max_video_bytes == 50 * MB
    assert settings.imgur_api_url == "http://127.0.0.1:9"
    assert settings.log_level == "DEBUG"
    assert settings.quota_reserve == 0


def test_a_gateway_address_is_kept_as_given_while_rest_bases_lose_their_slash() -> None:
    settings = load_settings(
        {
            **BASE,
            "DISCORD_API_URL": "http://127.0.0.1:9/api/v10/",
            "DISCORD_GATEWAY_URL": "ws://127.0.0.1:9/gateway/",
        },
        env_file=None,
    )

    assert settings.discord_api_url == "http://127.0.0.1:9/api/v10"
    assert settings.discord_gateway_url == "ws://127.0.0.1:9/gateway/"


def test_env_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("IMGUR_CLIENT_ID=from-file\nLOG_LEVEL=WARNING\n")

    settings = load_settings({"LOG_LEVEL": "ERROR"}, env_file=env_file)

    assert settings.imgur_client_id == "from-file"
    assert settings.log_level == "ERROR"


def test_secrets_stay_out_of_repr() -> None:
    settings = load_settings(
        {**BASE, "DISCORD_TOKEN": "discord-secret", "HTTP_PORT": "1", "HTTP_TOKEN": "web-secret"},
        env_file=None,
    )

    text = repr(settings)
    assert "abc123client" not in text
    assert "discord-secret" not in text
    assert "web-secret" not in text


def test_a_reserve_of_zero_written_any_way_is_zero() -> None:
    assert load_settings({**BASE, "QUOTA_RESERVE": "00"}, env_file=None).quota_reserve == 0


@pytest.mark.parametrize("name", ["IMGUR_CLIENT_ID", "IMGUR_ACCESS_TOKEN", "DISCORD_TOKEN"])
@pytest.mark.parametrize("value", ["abc\ndef-secret", "abc def-secret", "abcdéf-secret"])
def test_a_secret_that_cannot_travel_in_a_header_is_refused_without_echoing_it(
    name: str, value: str
) -> None:
    # aiohttp refuses a header with a newline only when the first request goes out, with a
    # traceback; a setting is the place to say so, and the value itself is never repeated.
    with pytest.raises(SettingsError, match=name) as caught:
        load(**{name: value})

    assert "secret" not in str(caught.value)


def test_a_database_path_that_is_a_folder_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="DATABASE_PATH is a folder"):
        load(DATABASE_PATH=str(tmp_path))


def test_a_database_path_under_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")

    with pytest.raises(SettingsError, match=r"DATABASE_PATH lies under .*notes\.txt"):
        load(DATABASE_PATH=str(tmp_path / "notes.txt" / "ledger.sqlite3"))


def test_a_database_path_naming_some_other_file_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "passwords.txt"
    other.write_text("root:x:0:0\n")

    with pytest.raises(SettingsError, match="not a SQLite database"):
        load(DATABASE_PATH=str(other))


@pytest.mark.parametrize("special", ["/dev/null", "fifo"])
def test_a_database_path_naming_a_device_or_pipe_is_refused(tmp_path: Path, special: str) -> None:
    if special == "fifo":
        special = str(tmp_path / "ledger.fifo")
        os.mkfifo(special)

    with pytest.raises(SettingsError, match=r"DATABASE_PATH .* is not a regular file"):
        load(DATABASE_PATH=special)


def test_a_database_path_with_control_characters_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="DATABASE_PATH holds control characters"):
        load(DATABASE_PATH=str(tmp_path / "led\x00ger.sqlite3"))


def test_a_database_path_may_be_new_empty_or_a_ledger(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite3"
    empty.touch()
    ledger = tmp_path / "ledger.sqlite3"
    sqlite3.connect(ledger).execute("CREATE TABLE t (x)").connection.close()

    for path in (tmp_path / "new" / "ledger.sqlite3", empty, ledger):
        assert load(DATABASE_PATH=str(path)).database_path == path  # type: ignore[attr-defined]


@pytest.mark.parametrize("content", [b"\xff\xfeI\x00M\x00", b"IMGUR_CLIENT_ID=caf\xe9\n"])
def test_an_env_file_that_is_not_utf8_is_named_not_a_traceback(
    tmp_path: Path, content: bytes
) -> None:
    # A .env saved as UTF-16 or Latin-1 by an editor made python-dotenv raise UnicodeDecodeError.
    env_file = tmp_path / ".env"
    env_file.write_bytes(content)

    with pytest.raises(SettingsError, match=r"\.env cannot be read as UTF-8 text"):
        load_settings({}, env_file=env_file)


@pytest.mark.parametrize(
    "line",
    ['IMGUR_CLIENT_ID="file-client-id', "IMGUR_CLIENT_ID='file-client-id", "not a setting at all"],
)
def test_an_env_file_line_that_cannot_be_parsed_is_named_by_number(
    tmp_path: Path, line: str, caplog: pytest.LogCaptureFixture
) -> None:
    # python-dotenv skipped such a line with a warning of its own: a client id set on it was
    # then reported as "not set", and the line itself was never pointed at.
    env_file = tmp_path / ".env"
    env_file.write_text(f"# settings\nIMGUR_API_URL=https://api.imgur.com\n{line}\n")

    with pytest.raises(SettingsError, match=r"\.env line 3 cannot be parsed") as caught:
        load_settings({}, env_file=env_file)

    assert "file-client-id" not in str(caught.value)
    assert not caplog.records


def test_an_env_file_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_bytes(b"\xef\xbb\xbfIMGUR_CLIENT_ID=from-file\n")

    assert load_settings({}, env_file=env_file).imgur_client_id == "from-file"


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0", "::", "::1", "localhost", "bot.lan"])
def test_an_address_to_listen_on_is_accepted(host: str) -> None:
    assert load_settings({**BASE, "HTTP_HOST": host}, env_file=None).http_host == host
