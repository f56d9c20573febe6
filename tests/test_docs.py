"""The docs keep up with the code: the README's test command is what CI runs, every
setting is documented, every documented command exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meterline.cli.main import app

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci.startswith("python3 -m venv .venv")
    assert ci in (ROOT / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    config = (ROOT / "src" / "meterline" / "kernel" / "config.py").read_text()
    documented = (ROOT / "docs" / "configuration.md").read_text()
    variables = set(re.findall(r"METERLINE_[A-Z_]+", config))
    assert variables, "config.py reads no METERLINE_ variables?"
    missing = sorted(name for name in variables if name not in documented)
    assert not missing, f"document these in docs/configuration.md: {missing}"


@pytest.mark.parametrize(
    "command",
    [
        ["up", "--help"],
        ["serve", "--help"],
        ["account", "create", "--help"],
        ["account", "fund", "--help"],
        ["account", "show", "--help"],
        ["credential", "issue", "--help"],
        ["tariffs", "import", "--help"],
        ["tariffs", "export", "--help"],
        ["tariffs", "plans", "--help"],
        ["account", "plan", "--help"],
        ["sessions", "list", "--help"],
    ],
)
def test_documented_commands_exist(command: list[str]) -> None:
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert " ".join(command[:-1]) in (ROOT / "README.md").read_text()
