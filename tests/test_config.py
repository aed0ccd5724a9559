"""Gateway configuration: defaults, the TOML file, environment overrides, and the example
file that documents every key (checked here so the documentation cannot drift)."""

from __future__ import annotations

import tomllib
from pathlib import Path

import msgspec
import pytest

from pm.config import SECTIONS, Config, ConfigError, load_config

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


# -- defaults ------------------------------------------------------------------------------


def test_defaults_without_a_file_or_environment() -> None:
    config = load_config(environ={})
    assert config == Config()
    assert (config.http.host, config.http.port, config.http.max_body_bytes) == (
        "127.0.0.1",
        8080,
        1024 * 1024,
    )
    assert (config.broker.embedded, config.broker.port) == (True, 1883)
    assert (config.topics.request, config.topics.response) == (
        "/remote/{device}",
        "/remote/{device}/response",
    )
    assert config.tasks.default_timeout == 3600.0
    assert config.watchers.coalesce_interval == 0.1


def test_every_section_is_known_by_name() -> None:
    assert set(SECTIONS) == {field.name for field in msgspec.structs.fields(Config)}
    assert set(SECTIONS) >= {"http", "broker", "mqtt", "topics", "tasks", "watchers"}


def test_mqtt_endpoint_follows_broker_embedded() -> None:
    embedded = load_config(environ={"PM_BROKER_PORT": "1999", "PM_MQTT_PORT": "2883"})
    assert embedded.mqtt_endpoint == ("127.0.0.1", 1999)
    external = load_config(
        environ={"PM_BROKER_EMBEDDED": "false", "PM_MQTT_HOST": "mq", "PM_MQTT_PORT": "2883"}
    )
    assert external.mqtt_endpoint == ("mq", 2883)


# -- the file ------------------------------------------------------------------------------


def test_a_toml_file_sets_values_and_keeps_other_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[http]\nport = 9001\nhost = "0.0.0.0"\n\n[tasks]\ndefault_timeout = 12.5\n',
    )
    config = load_config(path, environ={})
    assert (config.http.host, config.http.port) == ("0.0.0.0", 9001)
    assert config.http.max_body_bytes == 1024 * 1024
    assert config.tasks.default_timeout == 12.5
    assert config.broker == Config().broker
    assert load_config(str(path), environ={}) == config  # a str path works too


def test_an_unknown_key_is_refused_by_name(tmp_path: Path) -> None:
    path = write(tmp_path, "[http]\nprot = 9000\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert "`prot`" in str(caught.value) and "$.http" in str(caught.value)


def test_an_unknown_section_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="`htp`"):
        load_config(write(tmp_path, "[htp]\nport = 9000\n"), environ={})


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('[http]\nport = "high"\n', r"\$\.http\.port"),
        ("[http]\nport = true\n", r"\$\.http\.port"),
        ("[topics]\nrequest = 5\n", r"\$\.topics\.request"),
        ('[watchers]\ncoalesce_interval = "soon"\n', r"\$\.watchers\.coalesce_interval"),
        ("http = 5\n", r"\$\.http"),
    ],
)
def test_a_wrong_type_names_the_key(tmp_path: Path, text: str, where: str) -> None:
    with pytest.raises(ConfigError, match=where):
        load_config(write(tmp_path, text), environ={})


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.toml", environ={})


def test_a_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path, environ={})


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[http\nport = 1\n"), environ={})


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b"# caf\xe9\n[http]\nport = 9000\n")
    with pytest.raises(ConfigError, match="latin1.toml"):
        load_config(path, environ={})


# -- environment and explicit overrides ----------------------------------------------------


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[http]\nport = 9001\n\n[broker]\nembedded = true\n")
    config = load_config(
        path,
        environ={
            "PM_HTTP_PORT": "9000",
            "PM_BROKER_EMBEDDED": "false",
            "PM_TASKS_DEFAULT_TIMEOUT": "2.5",
            "PM_TASKS_DEVICE_IDLE_RETIRE": "7",
            "PM_URL": "http://elsewhere",  # a CLI variable, not gateway config
            "HTTP_PORT": "1",
        },
    )
    assert config.http.port == 9000
    assert config.broker.embedded is False
    assert config.tasks.default_timeout == 2.5
    assert config.tasks.device_idle_retire == 7.0


def test_os_environ_is_read_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PM_HTTP_PORT", "9123")
    assert load_config().http.port == 9123


def test_an_unknown_environment_key_is_refused_by_name() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ={"PM_HTTP_PROT": "9000"})
    assert "`prot`" in str(caught.value) and "$.http" in str(caught.value)


@pytest.mark.parametrize(
    ("name", "value", "where"),
    [
        ("PM_HTTP_PORT", "nine", r"\$\.http\.port"),
        ("PM_HTTP_PORT", "9000.5", r"\$\.http\.port"),
        ("PM_BROKER_EMBEDDED", "maybe", r"\$\.broker\.embedded"),
    ],
)
def test_a_wrong_environment_value_names_the_key(name: str, value: str, where: str) -> None:
    with pytest.raises(ConfigError, match=where):
        load_config(environ={name: value})


def test_explicit_overrides_win_over_file_and_environment(tmp_path: Path) -> None:
    path = write(tmp_path, "[http]\nport = 9001\n")
    config = load_config(
        path,
        environ={"PM_HTTP_PORT": "9002", "PM_HTTP_HOST": "10.0.0.1"},
        overrides={"http": {"port": 9003}},
    )
    assert (config.http.host, config.http.port) == ("10.0.0.1", 9003)


def test_a_non_table_section_with_an_environment_override_is_a_config_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match=r"\$\.http"):
        load_config(write(tmp_path, "http = 5\n"), environ={"PM_HTTP_PORT": "9000"})


def test_a_certificate_without_a_key_is_a_config_error(certificate: tuple[Path, Path]) -> None:
    with pytest.raises(ConfigError, match="set together"):
        load_config(environ={"PM_HTTP_CERTFILE": str(certificate[0])})


# -- config.example.toml -------------------------------------------------------------------


def test_example_file_parses_into_config() -> None:
    assert EXAMPLE.is_file(), f"{EXAMPLE} is missing"
    assert isinstance(load_config(EXAMPLE, environ={}), Config)


def test_example_file_documents_every_key() -> None:
    document = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    missing = [
        f"{section}.{field.encode_name}"
        for section, struct in SECTIONS.items()
        for field in msgspec.structs.fields(struct)
        if field.encode_name not in document.get(section, {})
    ]
    assert missing == []
    assert set(document) == set(SECTIONS)


def test_example_file_values_are_the_defaults() -> None:
    assert load_config(EXAMPLE, environ={}) == Config()
    document = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    defaults = msgspec.to_builtins(Config())
    for section, values in document.items():
        for key, value in values.items():
            # Same value and same TOML kind: 3600.0 documents a float, not 3600.
            assert (key, value, type(value)) == (
                key,
                defaults[section][key],
                type(defaults[section][key]),
            ), f"{section}.{key}"


@pytest.mark.parametrize("key", ["answer_probe_interval", "answer_probe_timeout"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_the_answer_probe_timing_must_be_positive(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=rf"Expected `float` > 0.* - at `\$\.mqtt\.{key}`"):
        load_config(environ={f"PM_MQTT_{key.upper()}": value})
