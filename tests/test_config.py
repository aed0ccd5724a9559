"""Gateway configuration: defaults, the TOML file, environment overrides, and the example
file that documents every key (checked here so the documentation cannot drift)."""

from __future__ import annotations

import tomllib
import typing
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


# -- ranges --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        # ports: 0 (any free port) is fine to listen on, 65536 is no port at all
        ("PM_HTTP_PORT", "70000", r"Expected `int` <= 65535 - at `\$\.http\.port`"),
        ("PM_BROKER_PORT", "-1", r"Expected `int` >= 0 - at `\$\.broker\.port`"),
        ("PM_MQTT_PORT", "0", r"Expected `int` >= 1 - at `\$\.mqtt\.port`"),
        # timeouts and intervals: 0 or less would fire at once, every time
        ("PM_TASKS_DEFAULT_TIMEOUT", "-1", r"> 0\.0 - at `\$\.tasks\.default_timeout`"),
        ("PM_TASKS_DEVICE_IDLE_RETIRE", "0", r"> 0\.0 - at `\$\.tasks\.device_idle_retire`"),
        ("PM_STORE_RETENTION_INTERVAL", "0", r"> 0\.0 - at `\$\.store\.retention_interval`"),
        ("PM_STORE_COMMIT_INTERVAL", "61", r"<= 60\.0 - at `\$\.store\.commit_interval`"),
        ("PM_MQTT_KEEPALIVE", "0", r">= 1 - at `\$\.mqtt\.keepalive`"),
        ("PM_TASKS_DEFAULT_TIMEOUT", "nan", r"\$\.tasks\.default_timeout"),
        ("PM_HTTP_IDLE_TIMEOUT", "0", r"> 0\.0 - at `\$\.http\.idle_timeout`"),
        ("PM_HTTP_SEND_TIMEOUT", "-1", r"> 0\.0 - at `\$\.http\.send_timeout`"),
        # sizes and limits: at least one of their things
        ("PM_LIMITS_MAX_JOBS_RUNNING", "0", r">= 1 - at `\$\.limits\.max_jobs_running`"),
        ("PM_HTTP_MAX_BODY_BYTES", "0", r">= 1 - at `\$\.http\.max_body_bytes`"),
        (
            "PM_HTTP_MAX_WEBSOCKET_MESSAGE_BYTES",
            "0",
            r">= 1 - at `\$\.http\.max_websocket_message_bytes`",
        ),
        ("PM_WATCHERS_QUEUE_SIZE", "-5", r">= 1 - at `\$\.watchers\.queue_size`"),
        # rates where 0 means "no limit": negative only is refused
        ("PM_WATCHERS_MAX_UPDATES_PER_SECOND", "-1", r">= 0\.0 - at `\$\.watchers\."),
        # strings that must not be empty
        ("PM_HTTP_HOST", "", r"length >= 1 - at `\$\.http\.host`"),
        ("PM_MQTT_CLIENT_ID", "", r"length >= 1 - at `\$\.mqtt\.client_id`"),
        # keys checked together or by their shape
        ("PM_MQTT_RECONNECT_MIN_DELAY", "10", r"mqtt\.reconnect_min_delay \(10\) must not exceed"),
        ("PM_TOPICS_REQUEST", "/remote/all", r"topics\.request must contain \{device\} exactly"),
        ("PM_TOPICS_RESPONSE", "/r/{device}/#", r"topics\.response must not contain the MQTT"),
        # {gateway}: a level of the answer topic only, once
        ("PM_TOPICS_REQUEST", "/r/{device}/{gateway}", r"topics\.request must not contain \{gat"),
        ("PM_TOPICS_STATUS", "/s/{device}/{gateway}", r"topics\.status must not contain \{gat"),
        ("PM_TOPICS_RESPONSE", "/a/{device}/{gateway}/{gateway}", r"\{gateway\} at most once"),
        # store.url is a PostgreSQL URL or nothing
        ("PM_STORE_URL", "mysql://pm@db/pm", r"matching regex .* - at `\$\.store\.url`"),
        ("PM_STORE_URL", "./pm.db", r"- at `\$\.store\.url`"),
        # [cluster]: an id fit for the database and an MQTT topic level; a ttl and a shard
        # count that can work
        ("PM_CLUSTER_GATEWAY_ID", "gw/1", r"matching regex .* - at `\$\.cluster\.gateway_id`"),
        ("PM_CLUSTER_GATEWAY_ID", "gw+", r"- at `\$\.cluster\.gateway_id`"),
        ("PM_CLUSTER_GATEWAY_ID", "x" * 65, r"- at `\$\.cluster\.gateway_id`"),
        ("PM_CLUSTER_LEASE_TTL", "0.5", r">= 1\.0 - at `\$\.cluster\.lease_ttl`"),
        ("PM_CLUSTER_LEASE_TTL", "inf", r"<= 3600\.0 - at `\$\.cluster\.lease_ttl`"),
        ("PM_CLUSTER_SHARDS", "0", r">= 1 - at `\$\.cluster\.shards`"),
        ("PM_CLUSTER_SHARDS", "65537", r"<= 65536 - at `\$\.cluster\.shards`"),
        ("PM_CLUSTER_ENABLED", "maybe", r"- at `\$\.cluster\.enabled`"),
    ],
)
def test_a_value_out_of_range_is_refused_naming_the_key(
    name: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(environ={name: value})


def test_the_message_names_the_environment_variable_that_set_the_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as from_environment:
        load_config(environ={"PM_HTTP_PORT": "70000"})
    assert str(from_environment.value).endswith("`$.http.port` (from PM_HTTP_PORT)")
    with pytest.raises(ConfigError) as from_file:
        load_config(write(tmp_path, "[http]\nport = 70000\n"), environ={"PM_HTTP_HOST": "::1"})
    assert str(from_file.value).endswith("`$.http.port`")


def _numeric_keys() -> list[tuple[str, str]]:
    return [
        (section, field.encode_name)
        for section, struct in SECTIONS.items()
        for field in msgspec.structs.fields(struct)
        if typing.get_origin(field.type) is typing.Annotated
        and typing.get_args(field.type)[0] in (int, float)
        or field.type in (int, float)
    ]


def test_every_numeric_key_refuses_a_negative_value() -> None:
    # Catches a key added later without a range: none of them means anything below 0.
    keys = _numeric_keys()
    assert len(keys) >= 25, keys
    unchecked = []
    for section, key in keys:
        try:
            load_config(environ={}, overrides={section: {key: -1}})
        except ConfigError:
            continue
        unchecked.append(f"{section}.{key}")
    assert unchecked == []


def test_the_boundaries_themselves_are_accepted() -> None:
    config = load_config(
        environ={
            "PM_HTTP_PORT": "0",
            "PM_BROKER_PORT": "65535",
            "PM_WATCHERS_COALESCE_INTERVAL": "0",
            "PM_WATCHERS_MAX_UPDATES_PER_SECOND": "0",
            "PM_TASKS_MAX_FINISHED_TASKS": "0",
            "PM_STORE_COMMIT_INTERVAL": "0",
            "PM_LIMITS_MAX_JOBS_RUNNING": "1",
            "PM_TASKS_DEFAULT_TIMEOUT": "inf",
        }
    )
    assert (config.http.port, config.broker.port, config.tasks.default_timeout) == (
        0,
        65535,
        float("inf"),
    )


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


@pytest.mark.parametrize("value", ["inf", "315360000"])
def test_default_expires_in_is_inf_or_at_most_ten_years(value: str) -> None:
    config = load_config(environ={"PM_TASKS_DEFAULT_EXPIRES_IN": value})
    assert config.tasks.default_expires_in == float(value)


def test_default_expires_in_beyond_ten_years_is_refused() -> None:
    with pytest.raises(ConfigError, match="tasks.default_expires_in"):
        load_config(environ={"PM_TASKS_DEFAULT_EXPIRES_IN": "1e12"})


def test_store_url_when_set_is_what_the_store_opens() -> None:
    assert load_config(environ={}).store.location == "./puppetmaster.db"
    url = "postgresql://pm@db:5432/pm"
    assert load_config(environ={"PM_STORE_URL": url}).store.location == url


def test_a_cluster_needs_a_gateway_level_in_the_answer_topic() -> None:
    # Without it every gateway would subscribe to every answer: the message says what to set.
    with pytest.raises(ConfigError, match=r"topics\.response = '/remote/\{device\}/response'"):
        load_config(environ={"PM_CLUSTER_ENABLED": "true"})
    with pytest.raises(ConfigError, match=r"'/remote/\{device\}/response/\{gateway\}'"):
        load_config(environ={"PM_CLUSTER_ENABLED": "true"})
    per_gateway = {"PM_TOPICS_RESPONSE": "/remote/{device}/response/{gateway}"}
    config = load_config(environ={"PM_CLUSTER_ENABLED": "true", **per_gateway})
    assert config.topics.response == "/remote/{device}/response/{gateway}"
    # One gateway alone may use a gateway level too (its answers then carry its id).
    assert load_config(environ=per_gateway).topics.response.endswith("/{gateway}")
