"""The gateway's start-up checks of its TLS files (``check_http_tls``, ``check_broker_tls``),
on a self-signed certificate made per test, without starting anything. The gateway served over
TLS is ``tests/integration/test_tls.py`` and ``test_mqtt_tls.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from pm.config import ConfigError, load_config
from pm.gateway import check_broker_tls, check_http_tls
from tests.integration.gateways import gateway_config


def test_an_unusable_certificate_stops_the_gateway_naming_the_keys(
    certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    certfile, keyfile = certificate
    check_http_tls(gateway_config())  # plain HTTP: nothing to check
    check_http_tls(gateway_config(http={"certfile": str(certfile), "keyfile": str(keyfile)}))
    for broken in (
        {"certfile": str(tmp_path / "missing.pem"), "keyfile": str(keyfile)},
        {"certfile": str(keyfile), "keyfile": str(certfile)},  # swapped
    ):
        with pytest.raises(ConfigError, match="http.certfile") as caught:
            check_http_tls(gateway_config(http=broken))
        assert "http.keyfile" in str(caught.value)


def test_broker_tls_config_is_checked_at_start(
    certificate: tuple[Path, Path],
    tmp_path: Path,
) -> None:
    certfile, keyfile = certificate
    with pytest.raises(ConfigError, match="set together"):
        load_config(environ={"PM_BROKER_KEYFILE": str(keyfile)})
    good = {"certfile": str(certfile), "keyfile": str(keyfile)}
    check_broker_tls(gateway_config(broker=good))
    config = gateway_config(broker=good)
    assert config.mqtt_tls and config.mqtt_ca_file == str(certfile)
    with pytest.raises(ConfigError, match="broker.certfile") as caught:
        check_broker_tls(gateway_config(broker={**good, "certfile": str(tmp_path / "none.pem")}))
    assert "broker.keyfile" in str(caught.value)
    with pytest.raises(ConfigError, match="mqtt.ca_file"):
        check_broker_tls(
            gateway_config(broker=good, mqtt={"ca_file": str(tmp_path / "missing-ca.pem")})
        )
    external = gateway_config(broker={"embedded": False}, mqtt={"tls": True})
    assert external.mqtt_tls and external.mqtt_ca_file == ""
    assert not gateway_config().mqtt_tls
