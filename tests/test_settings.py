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
        ("MAX_IMAGE_MB", "50", "MAX_IMAGE_MB may not exceed Imgur's own limit of 20 MB"),
        ("IMGUR_API_URL", "ftp://x", "IMGUR_API_URL must start with http:// or https://"),
        ("DISCORD_GATEWAY_URL", "http://x", "DISCORD_GATEWAY_URL must start with ws://"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL must be DEBUG"),
        ("HTTP_PORT", "70000", "HTTP_PORT must be a port number"),
        ("HTTP_PORT", "8080", "HTTP_PORT and HTTP_TOKEN go together"),
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
