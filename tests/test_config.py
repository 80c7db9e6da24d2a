"""Settings: a TOML file, then command-line flags; every mistake is a ConfigError naming the key."""

from __future__ import annotations

import grp
import os
from pathlib import Path

import msgspec
import pytest

from ferryd.daemon.settings import Settings, load_settings
from ferryd.errors import ConfigError
from ferryd.oci.platform import parse_platform


@pytest.fixture
def config(tmp_path: Path) -> ConfigFile:
    return ConfigFile(tmp_path / "ferryd.toml")


class ConfigFile:
    """Writes a TOML file and loads it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self, text: str, overrides: dict[str, object] | None = None) -> Settings:
        self.path.write_text(text, encoding="utf-8")
        return load_settings(self.path, overrides)

    def error(self, text: str, overrides: dict[str, object] | None = None) -> str:
        with pytest.raises(ConfigError) as caught:
            self.load(text, overrides)
        return str(caught.value)


# Defaults


def test_without_a_file_every_setting_has_its_default() -> None:
    settings = load_settings(None)

    assert settings == Settings()
    assert settings.root_path == Path("/var/lib/ferryd")
    assert settings.socket_path == Path("/run/ferryd/ferryd.sock")
    assert settings.socket_mode == "0660"
    assert (settings.log_level, settings.log_format) == ("info", "json")
    assert settings.max_concurrent_downloads == 3
    assert settings.max_download_attempts == 5
    assert settings.retry_delay == 5.0
    assert settings.insecure_registries == ["127.0.0.0/8", "::1/128"]
    assert (settings.connect_timeout, settings.read_timeout) == (10.0, 30.0)
    assert settings.default_platform == settings.proxy == settings.credentials_file == ""


def test_an_empty_file_gives_the_defaults(config: ConfigFile) -> None:
    assert config.load("") == Settings()
    assert config.load("# only a comment\n") == Settings()


def test_defaults_are_not_shared_between_settings() -> None:
    first = load_settings(None)
    first.insecure_registries.append("example.com")
    assert load_settings(None).insecure_registries == ["127.0.0.0/8", "::1/128"]


def test_values_from_the_file_are_used(config: ConfigFile) -> None:
    settings = config.load(
        """
        root = "/srv/ferryd"
        socket = "/run/f.sock"
        socket_mode = "660"
        log_level = "debug"
        log_format = "console"
        max_concurrent_downloads = 8
        max_download_attempts = 1
        retry_delay = 0
        insecure_registries = ["registry.local:5000", "10.0.0.0/8"]
        default_platform = "linux/arm64/v8"
        connect_timeout = 2.5
        read_timeout = 3600
        """
    )
    assert settings.root_path == Path("/srv/ferryd")
    assert settings.socket_mode == "660"
    assert (settings.log_level, settings.log_format) == ("debug", "console")
    assert settings.max_concurrent_downloads == 8
    assert settings.retry_delay == 0.0
    assert settings.insecure_registries == ["registry.local:5000", "10.0.0.0/8"]
    assert parse_platform(settings.default_platform) == parse_platform("linux/arm64")
    assert settings.connect_timeout == 2.5
    assert settings.read_timeout == 3600.0


def test_an_empty_insecure_list_verifies_loopback_too(config: ConfigFile) -> None:
    assert config.load("insecure_registries = []").insecure_registries == []


# Mistakes in the file


def test_an_unknown_key_is_refused_naming_it(config: ConfigFile) -> None:
    message = config.error('colour = "blue"')
    assert message == f"config file {config.path}: unknown key `colour`"


def test_a_misspelt_key_gets_a_suggestion(config: ConfigFile) -> None:
    message = config.error("max_concurrent_download = 2")
    assert message == (
        f"config file {config.path}: unknown key `max_concurrent_download` "
        "(did you mean `max_concurrent_downloads`?)"
    )


def test_a_table_is_an_unknown_key(config: ConfigFile) -> None:
    assert "unknown key `registry`" in config.error('[registry]\nmirror = "x"')


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('max_concurrent_downloads = "3"', "max_concurrent_downloads: Expected `int`, got `str`"),
        ("max_concurrent_downloads = 2.5", "max_concurrent_downloads: Expected `int`, got `float`"),
        ("max_concurrent_downloads = true", "max_concurrent_downloads: Expected `int`, got `bool`"),
        ("root = 5", "root: Expected `str`, got `int`"),
        ("socket_mode = 660", "socket_mode: Expected `str`, got `int`"),
        ('connect_timeout = "30s"', "connect_timeout: Expected `float`, got `str`"),
        ('insecure_registries = "example.com"', "insecure_registries: Expected `array`, got `str`"),
        ("insecure_registries = [1]", "insecure_registries[0]: Expected `str`, got `int`"),
        ('insecure_registries = ["a", 2]', "insecure_registries[1]: Expected `str`, got `int`"),
        ("[root]\npath = 1", "root: Expected `str`, got `table`"),
        ("log_level = 1", "log_level: Expected `str`, got `int`"),
    ],
)
def test_a_wrong_type_is_refused_naming_key_and_expected_type(
    config: ConfigFile, text: str, message: str
) -> None:
    assert config.error(text) == f"config file {config.path}: {message}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_concurrent_downloads = 0", "max_concurrent_downloads: Expected `int` >= 1, got 0"),
        ("max_concurrent_downloads = -3", "max_concurrent_downloads: Expected `int` >= 1, got -3"),
        ("max_concurrent_downloads = 65", "max_concurrent_downloads: Expected `int` <= 64, got 65"),
        ("max_download_attempts = 0", "max_download_attempts: Expected `int` >= 1, got 0"),
        ("retry_delay = -1", "retry_delay: Expected `float` >= 0.0, got -1"),
        ("retry_delay = nan", "retry_delay: Expected `float` >= 0.0, got nan"),
        ("read_timeout = inf", "read_timeout: Expected `float` <= 3600.0, got inf"),
        ("connect_timeout = 0", "connect_timeout: Expected `float` > 0.0, got 0"),
        ("read_timeout = 0.0", "read_timeout: Expected `float` > 0.0, got 0.0"),
        ('root = ""', 'root: Expected `str` of length >= 1, got ""'),
        ('socket = ""', 'socket: Expected `str` of length >= 1, got ""'),
        (
            'socket_mode = "999"',
            'socket_mode: expected an octal file mode such as "0660", got "999"',
        ),
        (
            'socket_mode = "0o660"',
            'socket_mode: expected an octal file mode such as "0660", got "0o660"',
        ),
        (
            'socket_mode = "rw-rw----"',
            'socket_mode: expected an octal file mode such as "0660", got "rw-rw----"',
        ),
        (
            'socket_mode = "0660\\n"',
            'socket_mode: expected an octal file mode such as "0660", got "0660\\n"',
        ),
        (
            'socket_mode = "06600"',
            'socket_mode: expected an octal file mode such as "0660", got "06600"',
        ),
        (
            'log_level = "verbose"',
            'log_level: expected one of "debug", "info", "warning", "error", got "verbose"',
        ),
        (
            'log_level = "INFO"',
            'log_level: expected one of "debug", "info", "warning", "error", got "INFO"',
        ),
        ('log_format = "xml"', 'log_format: expected one of "json", "console", got "xml"'),
    ],
)
def test_an_impossible_value_is_refused_naming_key_and_value(
    config: ConfigFile, text: str, message: str
) -> None:
    assert config.error(text) == f"config file {config.path}: {message}"


@pytest.mark.parametrize("mode", ["0660", "660", "0600", "0777", "000"])
def test_socket_mode_takes_three_octal_digits(config: ConfigFile, mode: str) -> None:
    settings = config.load(f'socket_mode = "{mode}"')
    assert int(settings.socket_mode, 8) <= 0o777


@pytest.mark.parametrize("platform", ["linux/amd64/v8/x", "linux//arm64", "linux/arm 64", "/"])
def test_a_bad_default_platform_is_refused(config: ConfigFile, platform: str) -> None:
    message = config.error(f'default_platform = "{platform}"')
    assert message.startswith(f"config file {config.path}: default_platform: invalid platform")


@pytest.mark.parametrize("platform", ["linux/arm64", "linux/arm/v7", "linux/x86_64", "arm64"])
def test_a_good_default_platform_is_accepted(config: ConfigFile, platform: str) -> None:
    assert config.load(f'default_platform = "{platform}"').default_platform == platform


@pytest.mark.parametrize(
    "text",
    [
        "root = ",
        "root = /var/lib",
        "[unclosed",
        'root = "a"\nroot = "b"',
        "max_concurrent_downloads = 0660",
    ],
)
def test_invalid_toml_is_refused_with_its_position(config: ConfigFile, text: str) -> None:
    message = config.error(text)
    assert message.startswith(f"config file {config.path} is not valid TOML: ")
    assert "line" in message or "end of document" in message


def test_a_file_that_is_not_utf8_is_refused(config: ConfigFile) -> None:
    config.path.write_bytes(b'root = "/var/lib/\xff"\n')
    with pytest.raises(ConfigError, match="is not valid TOML: it is not UTF-8"):
        load_settings(config.path)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(caught.value) == f"cannot read config file {path}: No such file or directory"


def test_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"cannot read config file {tmp_path}: Is a directory"):
        load_settings(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_file_is_refused(config: ConfigFile) -> None:
    config.path.write_text("")
    config.path.chmod(0)
    with pytest.raises(ConfigError, match="Permission denied"):
        load_settings(config.path)


# Command-line flags


def test_flags_override_the_file(config: ConfigFile) -> None:
    settings = config.load(
        'root = "/from/file"\nlog_level = "error"\nlog_format = "console"',
        {"root": "/from/flag", "log_level": "debug"},
    )
    assert settings.root == "/from/flag"
    assert settings.log_level == "debug"
    assert settings.log_format == "console"


def test_flags_set_to_none_are_not_given(config: ConfigFile) -> None:
    settings = config.load(
        'root = "/from/file"',
        {"root": None, "socket": None, "insecure_registries": None, "log_level": None},
    )
    assert settings == msgspec.structs.replace(Settings(), root="/from/file")


def test_flags_without_a_file() -> None:
    settings = load_settings(None, {"socket": "/tmp/f.sock", "log_format": "console"})
    assert settings.socket_path == Path("/tmp/f.sock")
    assert settings.log_format == "console"


def test_insecure_registry_flags_add_to_the_files_list(config: ConfigFile) -> None:
    settings = config.load(
        'insecure_registries = ["a.local:5000"]',
        {"insecure_registries": ["b.local", "c.local:443"]},
    )
    assert settings.insecure_registries == ["a.local:5000", "b.local", "c.local:443"]


def test_insecure_registry_flags_add_to_the_defaults() -> None:
    settings = load_settings(None, {"insecure_registries": ["b.local"]})
    assert settings.insecure_registries == ["127.0.0.0/8", "::1/128", "b.local"]


def test_one_insecure_registry_flag_as_a_string() -> None:
    assert load_settings(None, {"insecure_registries": "b.local"}).insecure_registries[-1] == (
        "b.local"
    )


def test_insecure_registry_flags_do_not_hide_a_wrong_type_in_the_file(config: ConfigFile) -> None:
    message = config.error('insecure_registries = "a.local"', {"insecure_registries": ["b"]})
    assert message == (
        f"config file {config.path}: insecure_registries: Expected `array`, got `str`"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"log_level": "loud"},
            "command line: log_level: "
            'expected one of "debug", "info", "warning", "error", got "loud"',
        ),
        (
            {"max_concurrent_downloads": 0},
            "command line: max_concurrent_downloads: Expected `int` >= 1, got 0",
        ),
        ({"root": ""}, 'command line: root: Expected `str` of length >= 1, got ""'),
        (
            {"insecure_registries": [5]},
            "command line: insecure_registries[2]: Expected `str`, got `int`",
        ),
        ({"colour": "blue"}, "command line: unknown key `colour`"),
        (
            {"default_platform": "a/b/c/d"},
            "command line: default_platform: invalid platform 'a/b/c/d'",
        ),
    ],
)
def test_a_bad_flag_is_refused_naming_the_command_line(
    config: ConfigFile, overrides: dict[str, object], message: str
) -> None:
    assert config.error("", overrides).startswith(message)


def test_a_bad_flag_is_reported_even_without_a_file() -> None:
    with pytest.raises(ConfigError, match=r"^command line: log_format: "):
        load_settings(None, {"log_format": "yaml"})


def test_the_file_is_checked_before_the_flags(config: ConfigFile) -> None:
    # A flag cannot paper over a mistake in the file: the user must hear about it.
    message = config.error("max_concurrent_downloads = 0", {"max_concurrent_downloads": 2})
    assert message.startswith(f"config file {config.path}: max_concurrent_downloads")


def test_every_error_is_a_config_error_never_a_traceback(config: ConfigFile) -> None:
    for text in ["= 1", "a.b.c = 1", "root = [1, 2]", 'root = "x"\n[[root]]', "\x00"]:
        with pytest.raises(ConfigError):
            config.load(text)


# Mirrors, socket group, shutdown


def test_mirrors_are_read_per_registry(config: ConfigFile) -> None:
    settings = config.load(
        '[registry_mirrors]\n"docker.io" = ["https://a.example", "http://b.example:5000/v"]\n'
        '"reg.example:5000" = ["https://c.example"]\n'
    )

    assert settings.registry_mirrors == {
        "docker.io": ["https://a.example", "http://b.example:5000/v"],
        "reg.example:5000": ["https://c.example"],
    }


@pytest.mark.parametrize(
    "url",
    [
        "mirror.example",
        "ftp://mirror.example",
        "https://",
        "https://u:p@m.example",
        "http://[::1",
        "http://m.example:abc",
        "http://m.example:99999",
    ],
)
def test_a_mirror_that_is_not_an_http_url_is_refused(config: ConfigFile, url: str) -> None:
    message = config.error(f'[registry_mirrors]\n"docker.io" = ["{url}"]\n')

    assert 'registry_mirrors."docker.io"' in message
    assert url in message


def test_mirrors_must_be_a_list_of_urls(config: ConfigFile) -> None:
    message = config.error('[registry_mirrors]\n"docker.io" = "https://m.example"\n')

    assert "registry_mirrors" in message
    assert "array" in message


def test_socket_group_and_shutdown_timeout_are_read(config: ConfigFile) -> None:
    group = grp.getgrgid(os.getgid()).gr_name  # a group that exists: others are refused
    settings = config.load(f'socket_group = "{group}"\nshutdown_timeout = 2.5\n')

    assert (settings.socket_group, settings.shutdown_timeout) == (group, 2.5)


def test_a_negative_shutdown_timeout_is_refused(config: ConfigFile) -> None:
    message = config.error("shutdown_timeout = -1\n")

    assert "shutdown_timeout" in message
    assert "-1" in message


@pytest.mark.parametrize(
    ("key", "expected"),
    [("Docker.IO", "docker.io"), ("https://index.docker.io/v1/", "docker.io")],
)
def test_a_mirror_key_must_be_a_registry_name(config: ConfigFile, key: str, expected: str) -> None:
    message = config.error(f'[registry_mirrors]\n"{key}" = ["https://m.example"]\n')

    assert f'key "{key}" is not a registry name' in message
    assert f'write "{expected}"' in message


@pytest.mark.parametrize(
    "proxy", ["proxy.example:3128", "ftp://proxy.example", "http://h:99999", "http://[::1"]
)
def test_a_proxy_that_is_not_a_url_is_refused(config: ConfigFile, proxy: str) -> None:
    assert "proxy: expected a URL such as" in config.error(f'proxy = "{proxy}"\n')


def test_a_refused_proxy_is_shown_without_its_password(config: ConfigFile) -> None:
    message = config.error('proxy = "ftp://alice:hunter2@proxy.example"\n')

    assert "hunter2" not in message


# socket_mode as TOML writes numbers


def test_socket_mode_with_a_leading_zero_says_how_to_write_a_mode(config: ConfigFile) -> None:
    message = config.error('root = "/srv/ferryd"\nsocket_mode = 0660\n')

    assert message == (
        f"config file {config.path} is not valid TOML: line 2: socket_mode = 0660: a TOML "
        'integer cannot start with 0; write the mode as a string, socket_mode = "0660", or '
        "as an octal integer, socket_mode = 0o660"
    )


def test_socket_mode_with_a_leading_zero_and_a_comment_is_explained_too(
    config: ConfigFile,
) -> None:
    message = config.error("socket_mode = 0600  # owner only\n")

    assert message.endswith('socket_mode = "0600", or as an octal integer, socket_mode = 0o600')


def test_another_number_with_a_leading_zero_is_named(config: ConfigFile) -> None:
    message = config.error("max_concurrent_downloads = 03\n")

    assert message == (
        f"config file {config.path} is not valid TOML: line 1: max_concurrent_downloads = 03: "
        "a TOML number cannot start with 0"
    )


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("socket_mode = 0o660", "0660"),
        ("socket_mode = 0o600  # owner only", "0600"),
        ("socket_mode = 0o0640", "0640"),
        ("socket_mode = 0o7", "0007"),
        ('root = "/srv/ferryd"\n  socket_mode=0o660\n[access]\neveryone = ["read"]', "0660"),
    ],
)
def test_socket_mode_may_be_a_toml_octal_integer(config: ConfigFile, text: str, mode: str) -> None:
    settings = config.load(text)

    assert settings.socket_mode == mode
    assert int(settings.socket_mode, 8) == int(mode, 8)  # as the daemon reads it


def test_an_octal_socket_mode_is_the_same_setting_as_the_string(config: ConfigFile) -> None:
    # A reload from one spelling to the other changes nothing.
    assert config.load("socket_mode = 0o660") == config.load('socket_mode = "0660"')


def test_an_octal_socket_mode_above_0o777_is_refused(config: ConfigFile) -> None:
    assert config.error("socket_mode = 0o4770") == (
        f'config file {config.path}: socket_mode: expected an octal file mode such as "0660" '
        "or 0o660, got 0o4770"
    )


@pytest.mark.parametrize(
    "text",
    [
        "socket_mode = 432",  # 0o660 in decimal: not how anyone writes a mode
        "socket_mode = 0x1b0",
        "socket_mode = 0b110110000",
        "socket_mode = 432  # socket_mode = 0o660",
    ],
)
def test_a_socket_mode_integer_not_written_in_octal_is_refused(
    config: ConfigFile, text: str
) -> None:
    assert config.error(text) == (
        f"config file {config.path}: socket_mode: Expected `str`, got `int`"
    )


# insecure_registries, entry by entry

_NOT_A_REGISTRY = (
    'is not a network ("10.0.0.0/8"), an IP address or HOST[:PORT] (a valid host name or '
    "address, a port from 1 to 65535)"
)


@pytest.mark.parametrize(
    "entry",
    [
        "not a host!!",
        "registry.lan:0",
        "registry.lan:65536",
        "registry.lan:",
        "registry.lan:http",
        "registry.lan:5000:1",
        "-registry.lan",
        "registry..lan",
        "under_score.lan",
        "10.0.0.0/33",
        "[::1",
        "[fe80::zz]:5000",
        "[::1]5000",
        "ftp://registry.lan",
        "registry.lan/path",
        "a" * 64 + ".lan",
    ],
)
def test_an_insecure_registry_that_is_no_host_or_network_is_refused_by_name(
    config: ConfigFile, entry: str
) -> None:
    message = config.error(f'insecure_registries = ["ok.lan", "{entry}"]')

    assert message == (
        f'config file {config.path}: insecure_registries[1]: "{entry}" {_NOT_A_REGISTRY}'
    )


@pytest.mark.parametrize(
    "entry",
    [
        "10.0.0.0/8",
        "10.1.2.3",
        "fd00::/8",
        "::1",
        "registry.lan",
        "registry.lan:5000",
        "Registry.LAN:65535",
        "10.1.2.3:5000",
        "[::1]:5000",
        "localhost",
        "a-b.example.com:1",
        "http://other.lan/",
        "https://other.lan:5000",
        "a" * 63 + ".lan",
    ],
)
def test_insecure_registries_take_networks_addresses_and_hosts(
    config: ConfigFile, entry: str
) -> None:
    assert config.load(f'insecure_registries = ["{entry}"]').insecure_registries == [entry]


def test_an_empty_insecure_registry_is_refused(config: ConfigFile) -> None:
    assert config.error('insecure_registries = [" "]') == (
        f"config file {config.path}: insecure_registries[0]: insecure registry entry is empty"
    )


def test_a_bad_insecure_registry_flag_is_named_on_the_command_line() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"insecure_registries": ["registry.lan:5000", "bad host"]})

    # After the two default entries.
    assert (
        str(caught.value) == f'command line: insecure_registries[3]: "bad host" {_NOT_A_REGISTRY}'
    )
