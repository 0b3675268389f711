"""The `pyedge` command line without a server: settings, exit codes, plugins, the shell."""

from __future__ import annotations

import io
import subprocess
import sys
from importlib.metadata import EntryPoint
from pathlib import Path

import click
import pytest

from edge_server import cli
from pyedge import __version__

PYEDGE = str(Path(sys.executable).parent / "pyedge")
Capture = pytest.CaptureFixture[str]


def test_config_prints_each_value_with_its_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    settings = tmp_path / "edge.toml"
    settings.write_text("[edge]\nhttp_port = 9002\n")
    monkeypatch.setenv("EDGE_MQTT_PORT", "1999")
    assert cli.main(["--config", str(settings), "config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"EDGE_HTTP_PORT=9002  # {settings} [edge] http_port" in lines
    assert "EDGE_MQTT_PORT=1999  # environment EDGE_MQTT_PORT" in lines
    assert "EDGE_HTTP_HOST=0.0.0.0  # default" in lines
    assert lines == sorted(lines)


def test_a_bad_setting_exits_2_naming_the_key(
    monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    monkeypatch.setenv("EDGE_HTTP_PORT", "abc")
    assert cli.main(["config"]) == cli.EXIT_CONFIG == 2
    err = capsys.readouterr().err
    assert err.startswith("pyedge: configuration error: EDGE_HTTP_PORT (from environment")
    assert "expected an integer, got 'abc'" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bogus"], "No such command 'bogus'"),
        ([], "Usage: pyedge"),
        (["run", "--port", "abc"], "Invalid value for '--port'"),
        (["container", "stop", "x", "--timeout", "-1"], "Invalid value for '-t' / '--timeout'"),
        (["app", "plan", "/nonexistent/app.yaml"], "does not exist"),
    ],
)
def test_usage_errors_exit_2_with_clicks_message(
    argv: list[str], message: str, capsys: Capture
) -> None:
    assert cli.main(argv) == 2
    captured = capsys.readouterr()
    assert message in captured.out + captured.err


def test_version(capsys: Capture) -> None:
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"pyedge {__version__}\n"


def test_help_lists_the_builtin_and_the_services_commands(capsys: Capture) -> None:
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    commands = out.split("Commands:")[1].split()
    for name in ("run", "config", "shell", "image", "container", "app"):
        assert name in commands
    assert "--url" in out
    assert cli.main(["container", "--help"]) == 0
    assert {"ls", "start", "stop", "logs"} <= set(capsys.readouterr().out.split())


def test_the_console_script_returns_the_exit_code() -> None:
    ok = subprocess.run([PYEDGE, "--version"], capture_output=True, text=True, timeout=30)
    assert (ok.returncode, ok.stdout) == (0, f"pyedge {__version__}\n")
    bad = subprocess.run([PYEDGE, "image", "nope"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2
    assert "No such command 'nope'" in bad.stderr


def test_a_broken_plugin_leaves_the_other_commands_working(
    monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    installed = [
        EntryPoint("broken", "no_such_module_anywhere:commands", cli.COMMANDS_GROUP),
        EntryPoint("container-manager", "container_manager.cli:commands", cli.COMMANDS_GROUP),
        EntryPoint("shadow", "edge_server.cli:show_config", cli.COMMANDS_GROUP),
    ]
    monkeypatch.setattr(cli, "entry_points", lambda group: installed)
    group = cli.RootGroup(commands=[cli.show_config])
    with click.Context(group) as ctx:
        assert group.list_commands(ctx) == ["app", "config", "container", "gateway", "image"]
        # A built-in command keeps its name even when a plugin offers one like it.
        assert group.get_command(ctx, "config") is cli.show_config
    assert "cannot load the commands of broken: No module named" in capsys.readouterr().err


def test_an_app_file_that_does_not_parse_names_the_file_and_line(
    tmp_path: Path, capsys: Capture
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("services:\n  web:\n    image: busybox\n   command: [sleep\n")
    assert cli.main(["--url", "http://127.0.0.1:1", "app", "plan", str(broken)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {broken}: line 4, column 4:")

    as_json = tmp_path / "app.json"
    as_json.write_text('{"services": {"web": {"image": "busybox",}}}')
    assert cli.main(["app", "apply", str(as_json)]) == 1
    assert f"error: {as_json}: line 1, column 42:" in capsys.readouterr().err

    empty = tmp_path / "empty.yaml"
    empty.write_text("name: nothing\n")
    assert cli.main(["app", "apply", str(empty)]) == 1
    assert "expected a mapping with a 'services:' mapping" in capsys.readouterr().err


def test_the_shell_runs_commands_until_exit_and_survives_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    lines = 'help\nbogus\n"unclosed\nshell\nhelp container\n\n--version\nquit\nconfig\n'
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    assert cli.main(["shell"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count(cli.PROMPT) == 8  # `config` after quit is never read
    assert "Usage: pyedge [OPTIONS] COMMAND" in captured.out  # help
    assert "Usage: pyedge container [OPTIONS] COMMAND" in captured.out  # help container
    assert f"pyedge {__version__}\n" in captured.out
    assert "No such command 'bogus'" in captured.err
    assert "error: No closing quotation" in captured.err
    assert "already in the pyedge shell" in captured.err
    assert "EDGE_HTTP_PORT" not in captured.out


def test_the_shell_ends_at_end_of_input_and_keeps_the_outer_url(
    monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("image ls\n"))
    assert cli.main(["--url", "http://127.0.0.1:1/", "shell"]) == 0
    err = capsys.readouterr().err
    assert "error: cannot reach the edge-server at http://127.0.0.1:1: " in err
