"""The topic scheme and connection settings: pure code, no broker."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import iotdata
from iotdata.mqtt import MqttSettings, TlsSettings, Topics

DEVICE_IDS = st.text(
    alphabet=st.characters(blacklist_characters="+#/", blacklist_categories=("Cc", "Cs", "Z")),
    min_size=1,
    max_size=40,
).filter(str.isprintable)


def test_topics_follow_the_scheme() -> None:
    topics = Topics("plant/a")
    assert topics.telemetry("pump-1") == "plant/a/pump-1/telemetry"
    assert topics.state("pump-1") == "plant/a/pump-1/state"
    assert topics.command("pump-1", "reboot") == "plant/a/pump-1/commands/reboot"
    assert topics.command_result("pump-1", "reboot") == "plant/a/pump-1/commands/reboot/result"
    assert topics.config_desired("pump-1") == "plant/a/pump-1/config/desired"
    assert topics.config_reported("pump-1") == "plant/a/pump-1/config/reported"
    assert topics.all_telemetry() == "plant/a/+/telemetry"
    assert topics.all_telemetry("gateways") == "$share/gateways/plant/a/+/telemetry"


@given(DEVICE_IDS, st.sampled_from(["reboot", "set-rate", "x"]))
def test_parse_inverts_every_topic(device_id: str, command: str) -> None:
    topics = Topics()
    assert topics.parse(topics.telemetry(device_id)) == (device_id, "telemetry", None)
    assert topics.parse(topics.state(device_id)) == (device_id, "state", None)
    assert topics.parse(topics.command(device_id, command)) == (device_id, "command", command)
    result = topics.command_result(device_id, command)
    assert topics.parse(result) == (device_id, "command-result", command)
    assert topics.parse(topics.config_desired(device_id)) == (device_id, "config-desired", None)
    assert topics.parse(topics.config_reported(device_id)) == (device_id, "config-reported", None)


@pytest.mark.parametrize(
    "topic", ["other/x/telemetry", "iotdata/x", "iotdata//telemetry", "iotdata/x/telemetry/y"]
)
def test_foreign_topics_do_not_parse(topic: str) -> None:
    assert Topics().parse(topic) is None


@pytest.mark.parametrize("prefix", ["", "a/+", "#", "/a", "a/", "$SYS"])
def test_bad_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(iotdata.InvalidInputError):
        Topics(prefix)


def test_bad_device_ids_and_commands_are_refused() -> None:
    for device_id in ["", "a/b", "a+", "#", "x\n"]:
        with pytest.raises(iotdata.InvalidInputError):
            Topics().telemetry(device_id)
    with pytest.raises(iotdata.InvalidInputError):
        Topics().command("d", "a/b")


def test_settings_from_url() -> None:
    settings = MqttSettings.from_url("mqtt://user:p%40ss@broker.local:1884?protocol=3.1.1")
    assert (settings.host, settings.port, settings.protocol) == ("broker.local", 1884, 4)
    assert (settings.username, settings.password) == ("user", "p@ss")
    assert "p@ss" not in repr(settings) and settings.url == "mqtt://broker.local:1884"
    secure = MqttSettings.from_url("mqtts://broker.local", keepalive=10)
    assert secure.port == 8883 and secure.tls == TlsSettings() and secure.keepalive == 10


@pytest.mark.parametrize(
    "url",
    [
        "http://x",
        "mqtt://",
        "mqtt://x:99999",
        "mqtt://x?protocol=4.0",
        "mqtt://x?bogus=1",
        "mqtt://x?keepalive=-1",
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(iotdata.InvalidInputError):
        MqttSettings.from_url(url)


def test_tls_settings_check_their_files(tmp_path: Path) -> None:
    with pytest.raises(iotdata.InvalidInputError, match="no such file"):
        TlsSettings(ca_file=str(tmp_path / "missing.pem"))
    cert = tmp_path / "c.pem"
    cert.write_text("not a certificate")
    with pytest.raises(iotdata.InvalidInputError, match="both cert_file and key_file"):
        TlsSettings(cert_file=str(cert))
    with pytest.raises(iotdata.InvalidInputError, match="cannot load TLS files"):
        TlsSettings(ca_file=str(cert)).context()
