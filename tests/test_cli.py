"""The `lakehouse-dl` command line: help on every command, `tables`, `config`, and exit codes."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path

import pytest

from pipelines.cli import build_parser, main
from pipelines.config import PROJECT_ROOT


def run_cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """`lakehouse-dl ARGS` in a fresh interpreter, as a user would run it."""
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ})


def subcommands(parser=None, prefix: tuple = ()) -> list[str]:
    """Every command the parser knows, nested ones as "landing seed", so a new command gets its
    --help test for free. A command that only groups others (`landing`) is listed by its leaves."""
    parser = parser or build_parser()
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = subcommands(sub, (*prefix, name))
                out.extend(nested or [" ".join((*prefix, name))])
    return sorted(out)


def test_top_level_help_lists_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: lakehouse-dl")
    for name in subcommands():
        assert name.split()[0] in result.stdout


def test_the_console_script_is_installed():
    script = os.path.join(os.path.dirname(sys.executable), "lakehouse-dl")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "tables" in result.stdout


@pytest.mark.parametrize("command", subcommands())
def test_help_on_every_subcommand(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command.split(), "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: lakehouse-dl {command}")
    assert "--env" in out and "--set" in out


def test_no_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2
    assert "required: COMMAND" in capsys.readouterr().err


def test_tables_json_on_an_empty_lakehouse_is_an_empty_list(tmp_path):
    result = run_cli("tables", "--json", "--set", f"lakehouse.root={tmp_path / 'empty'}")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_tables_on_an_empty_lakehouse_says_so(tmp_path, capsys):
    assert main(["tables", "--set", f"lakehouse.root={tmp_path}"]) == 0
    assert f"no tables yet under {tmp_path}" in capsys.readouterr().out


def test_tables_json_gives_each_tables_fields(lakehouse, spark, capsys):
    flights = spark.createDataFrame([(1, date(2013, 1, 1)), (2, date(2013, 1, 2)), (3, date(2013, 1, 2))],
                                    "flight_id long, date date")
    lakehouse.table("bronze.flights").write(flights, partition_by=["date"])
    lakehouse.table("bronze.flights").write(flights.limit(1))

    result = run_cli("tables", "--json", "--set", f"lakehouse.root={Path(lakehouse.root).parent}")
    assert result.returncode == 0, result.stderr
    [info] = json.loads(result.stdout)
    assert {k: info[k] for k in ("name", "layer", "version", "rows", "files", "last_operation")} == {
        "name": "bronze.flights", "layer": "bronze", "version": 1, "rows": 4, "files": 3,
        "last_operation": "WRITE"}
    assert info["size_bytes"] == sum(os.path.getsize(f[len("file://"):])
                                     for f in lakehouse.table("bronze.flights").files())
    assert info["partition_by"] == ["date"] and info["path"].endswith("bronze/flights")

    assert main(["tables", "--set", f"lakehouse.root={Path(lakehouse.root).parent}"]) == 0
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("bronze.flights")][0]
    assert line.split()[1:4] == ["1", "4", "3"] and "WRITE at " in line


def test_a_bad_set_key_exits_2_with_a_clear_message():
    result = run_cli("tables", "--set", "lakehouse.rot=/tmp/x")
    assert result.returncode == 2
    assert "configuration error: --set lakehouse.rot: unknown key 'lakehouse.rot'" in result.stderr
    assert "allowed here:" in result.stderr and "root" in result.stderr
    assert result.stdout == ""


def test_a_bad_value_and_an_unknown_environment_exit_2(capsys):
    assert main(["config", "--set", "training.epochs=many"]) == 2
    assert "key 'training.epochs' must be an integer" in capsys.readouterr().err
    assert main(["config", "--env", "nosuch"]) == 2
    assert "unknown environment 'nosuch'" in capsys.readouterr().err


def test_config_prints_the_merged_configuration(tmp_path, capsys):
    assert main(["config", "--set", "training.epochs=2", "--set", f"lakehouse.root={tmp_path}"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["training"]["epochs"] == 2
    assert printed["lakehouse"]["root"] == str(tmp_path / "nycflights13")
    assert printed["env"] == "local"


def test_log_format_json_gives_one_json_object_per_library_line(tmp_path, capsys):
    root = tmp_path / "lakehouse"
    assert main(["landing", "seed", "--date", "2013-01-01", "--set", f"lakehouse.root={root}",
                 "--log-format", "json"]) == 0
    out = capsys.readouterr().out.splitlines()
    logged = [json.loads(line) for line in out if line.startswith("{")]
    assert {r["logger"] for r in logged} == {"pipelines.stages.landing"}
    assert all(r["level"] == "INFO" and r["time"].endswith("Z") for r in logged)
    assert any(r["message"].startswith("[landing] flights: 1 file") for r in logged)
    # The command's own closing line stays a line a person reads.
    assert [line for line in out if not line.startswith("{")] == [
        f"[landing] 6 files written, 0 unchanged under {root / 'landing' / 'nycflights13'}"]


def test_quiet_leaves_the_library_lines_out_and_verbose_keeps_them(tmp_path, capsys):
    root = tmp_path / "lakehouse"
    assert main(["landing", "seed", "--date", "2013-01-01", "--set", f"lakehouse.root={root}", "-q"]) == 0
    assert not [line for line in capsys.readouterr().out.splitlines() if line.startswith("[landing] flights")]
    assert main(["landing", "seed", "--date", "2013-01-01", "--set", f"lakehouse.root={root}", "-v"]) == 0
    assert "[landing] flights: 1 file (0 written, 1 unchanged)" in capsys.readouterr().out
