"""Settings: defaults < TOML file < environment < create_app(config); errors name key and source."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_server import create_app
from edge_server.config import load_settings
from pyedge import ConfigError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_apply_without_file_or_environment() -> None:
    settings = load_settings(environ={})
    assert settings["EDGE_HTTP_HOST"] == "0.0.0.0"
    assert settings["EDGE_HTTP_PORT"] == 8000
    assert settings["EDGE_MQTT_PORT"] == 1883
    assert settings["EDGE_DATA_DIR"] == Path("data")
    assert settings["EDGE_SERVICES"] is None
    assert settings["EDGE_NODE_ID"]
    assert settings.sources["EDGE_HTTP_PORT"] == "default"


def test_toml_overrides_defaults_and_environment_overrides_toml(tmp_path: Path) -> None:
    toml = write(
        tmp_path / "edge.toml",
        '[edge]\nhttp_port = 9000\nmqtt_port = 1999\nnode_id = "pi-kitchen"\n',
    )
    env = {"EDGE_CONFIG": str(toml), "EDGE_MQTT_PORT": "2883"}
    settings = load_settings(environ=env)
    assert settings["EDGE_HTTP_PORT"] == 9000
    assert settings.sources["EDGE_HTTP_PORT"] == f"{toml} [edge] http_port"
    assert settings["EDGE_MQTT_PORT"] == 2883
    assert settings.sources["EDGE_MQTT_PORT"] == "environment EDGE_MQTT_PORT"
    assert settings["EDGE_NODE_ID"] == "pi-kitchen"
    overridden = load_settings({"EDGE_MQTT_PORT": 3883}, environ=env)
    assert overridden["EDGE_MQTT_PORT"] == 3883


def test_service_settings_come_from_their_own_table_and_prefix(tmp_path: Path) -> None:
    from custom_service import service

    toml = write(
        tmp_path / "edge.toml", '[custom-service]\ngreeting = "Hej"\nheartbeat_interval = 2.5\n'
    )
    env = {"EDGE_CONFIG": str(toml), "EDGE_CUSTOM_SERVICE_HEARTBEAT_AUTOSTART": "off"}
    settings = load_settings(environ=env, service_sections=[service.section])
    assert settings["EDGE_CUSTOM_SERVICE_GREETING"] == "Hej"
    assert settings["EDGE_CUSTOM_SERVICE_HEARTBEAT_INTERVAL"] == 2.5
    assert settings["EDGE_CUSTOM_SERVICE_HEARTBEAT_AUTOSTART"] is False


def test_services_list_accepts_commas_and_toml_lists(tmp_path: Path) -> None:
    assert load_settings(environ={"EDGE_SERVICES": "a-b, c"})["EDGE_SERVICES"] == ["a-b", "c"]
    toml = write(tmp_path / "edge.toml", '[edge]\nservices = ["custom-service"]\n')
    assert load_settings(environ={"EDGE_CONFIG": str(toml)})["EDGE_SERVICES"] == ["custom-service"]


@pytest.mark.parametrize(
    ("env", "key", "problem"),
    [
        ({"EDGE_HTTP_PORT": "eighty"}, "EDGE_HTTP_PORT", "expected an integer"),
        ({"EDGE_MQTT_PORT": "70000"}, "EDGE_MQTT_PORT", "from 1 to 65535"),
        ({"EDGE_MQTT_EMBEDDED": "maybe"}, "EDGE_MQTT_EMBEDDED", "expected a boolean"),
        ({"EDGE_NODE_ID": "a/b"}, "EDGE_NODE_ID", "no '/'"),
        ({"EDGE_SERVICES": "Custom_Service"}, "EDGE_SERVICES", "not a service slug"),
        ({"EDGE_LOG_LEVEL": "LOUD"}, "EDGE_LOG_LEVEL", "expected one of"),
        (
            {"EDGE_CUSTOM_SERVICE_HEARTBEAT_INTERVAL": "nan"},
            "EDGE_CUSTOM_SERVICE_HEARTBEAT_INTERVAL",
            "expected a finite number",
        ),
    ],
)
def test_a_bad_environment_value_names_the_key_and_source(
    env: dict[str, str], key: str, problem: str
) -> None:
    from custom_service import service

    with pytest.raises(ConfigError) as error:
        load_settings(environ=env, service_sections=[service.section])
    assert error.value.key == key
    assert error.value.source == f"environment {key}"
    assert problem in str(error.value)
    assert str(error.value).startswith(f"{key} (from environment {key}): ")


def test_a_bad_toml_value_names_the_file_table_and_key(tmp_path: Path) -> None:
    toml = write(tmp_path / "edge.toml", '[edge]\nhttp_port = "high"\n')
    with pytest.raises(ConfigError) as error:
        load_settings(environ={"EDGE_CONFIG": str(toml)})
    assert error.value.key == "EDGE_HTTP_PORT"
    assert error.value.source == f"{toml} [edge] http_port"


def test_an_unknown_toml_key_is_an_error(tmp_path: Path) -> None:
    toml = write(tmp_path / "edge.toml", "[edge]\nhttp_prot = 9000\n")
    with pytest.raises(ConfigError, match=r"\[edge\] http_prot .*unknown key"):
        load_settings(environ={"EDGE_CONFIG": str(toml)})


def test_a_broken_or_missing_toml_file_is_named(tmp_path: Path) -> None:
    broken = write(tmp_path / "edge.toml", "[edge\nhttp_port = 1\n")
    with pytest.raises(ConfigError, match="invalid TOML") as error:
        load_settings(environ={"EDGE_CONFIG": str(broken)})
    assert error.value.source == str(broken)
    with pytest.raises(ConfigError, match="file not found"):
        load_settings(environ={"EDGE_CONFIG": str(tmp_path / "missing.toml")})


def test_create_app_fails_at_startup_on_a_bad_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_MQTT_PORT", "-1")
    with pytest.raises(ConfigError, match=r"^EDGE_MQTT_PORT \(from environment EDGE_MQTT_PORT\)"):
        create_app()


def test_an_uninstalled_service_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_SERVICES", "custom-service,weather-service")
    with pytest.raises(ConfigError) as error:
        create_app()
    assert error.value.key == "EDGE_SERVICES"
    assert error.value.source == "environment EDGE_SERVICES"
    assert "not installed: weather-service" in str(error.value)


def test_the_example_config_file_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    from custom_service import service

    example = Path(__file__).resolve().parent.parent / "edge.example.toml"
    settings = load_settings(
        environ={"EDGE_CONFIG": str(example)}, service_sections=[service.section]
    )
    assert settings["EDGE_HTTP_PORT"] == 8000


def test_settings_that_make_bad_autostart_params_stop_start_up(
    app_config: dict[str, object],
) -> None:
    from pyedge import EdgeService
    from pyedge import config as cfg
    from tests.probe_service import HeartbeatLike

    svc = EdgeService(
        "auto-service",
        title="Auto",
        version="0",
        import_name=__name__,
        settings=(cfg.Setting("interval", cfg.number(), 1.0),),
    )
    svc.process(
        "beat",
        lambda session, params: None,
        params=HeartbeatLike,
        autostart=lambda runtime: {"interval": runtime.settings["interval"]},
    )
    with pytest.raises(ConfigError, match=r"autostart of auto-service/beat.*interval"):
        create_app({**app_config, "EDGE_AUTO_SERVICE_INTERVAL": -5}, services=[svc])
