"""The docs keep up with the code: the README's test command is what CI runs, every
setting is documented, every documented command exists."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer
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


def test_every_documented_setting_is_read_by_the_code() -> None:
    """A variable the docs tell a user to set is one some code reads under that name (the
    tests' own settings are read by the tests)."""
    code = "".join(path.read_text() for path in (ROOT / "src").rglob("*.py"))
    tests = "".join(path.read_text() for path in (ROOT / "tests").rglob("*.py"))
    for document in DOCUMENTS:
        for name in sorted(set(re.findall(r"METERLINE_[A-Z_]*[A-Z]", document.read_text()))):
            source = tests if name.startswith(("METERLINE_TEST_", "METERLINE_CHROMIUM")) else code
            assert name in source, f"{document.relative_to(ROOT)} names {name}, read by no code"


DOCUMENTS = sorted(
    [ROOT / "README.md", ROOT / "compose" / "README.md", *(ROOT / "docs").glob("*.md")]
)
# `meterline ...` in a code block or a code span, up to a comment, a pipe or the span's end.
_INVOCATION = re.compile(r"(?:^|[\s`(])(?:\.venv/bin/)?meterline((?:[ \t]+[^\s`#|&;)]+)+)", re.M)


def _invocations() -> list[tuple[str, list[str]]]:
    found = []
    for document in DOCUMENTS:
        text = document.read_text().replace("\\\n", " ")
        # Prose (outside ``` blocks) is joined into one line: a code span may wrap.
        parts = re.split(r"(```.*?```)", text, flags=re.S)
        text = "".join(
            part if part.startswith("```") else part.replace("\n", " ") for part in parts
        )
        for match in _INVOCATION.finditer(text):
            words = match.group(1).split()
            found.append((f"{document.relative_to(ROOT)}: meterline {' '.join(words)}", words))
    return found


def _subcommands(command: Any) -> dict[str, Any] | None:
    """A group's commands by name (click's Group, as typer builds it), or None."""
    commands = getattr(command, "commands", None)
    return commands if isinstance(commands, dict) else None


def _resolve(words: list[str]) -> tuple[Any, list[str], list[str]]:
    """The command `words` name, its path, and the options given to it; raises
    AssertionError naming what does not exist."""
    command: Any = typer.main.get_command(app)
    path: list[str] = []
    given: list[str] = []
    rest = list(words)
    while rest:
        word = rest.pop(0)
        if word.startswith("-"):
            name = word.split("=", 1)[0]
            option = next((p for p in command.params if name in p.opts), None)
            assert option is not None, f"{' '.join(['meterline', *path])} has no option {name}"
            given.append(name)
            takes_value = option.param_type_name == "option" and not option.is_flag
            if takes_value and "=" not in word:
                rest = rest[1:]
            continue
        commands = _subcommands(command)
        if commands is not None:
            sub = commands.get(word)
            assert sub is not None, f"meterline {' '.join(path)} has no command {word!r}"
            command, path = sub, [*path, word]
            continue
        # a positional argument of a leaf command (a placeholder such as ACCOUNT_ID)
    return command, path, given


def _leaf_paths(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    commands = _subcommands(command)
    if commands is None:
        return [path]
    return [
        leaf
        for name, sub in sorted(commands.items())
        if not getattr(sub, "hidden", False)
        for leaf in _leaf_paths(sub, (*path, name))
    ]


def test_every_documented_command_and_option_exists() -> None:
    invocations = _invocations()
    assert len(invocations) >= 15, invocations  # the docs show the CLI, not a handful
    for where, words in invocations:
        try:
            command, path, _ = _resolve(words)
        except AssertionError as error:
            raise AssertionError(f"{where}: {error}") from None
        assert path, f"{where}: names no command"
        assert _subcommands(command) is None, f"{where}: names a group, not a command"
        result = CliRunner().invoke(app, [*path, "--help"])
        assert result.exit_code == 0, f"{where}: {result.output}"


def test_every_command_is_documented() -> None:
    documented = {tuple(_resolve(words)[1]) for _, words in _invocations()}
    missing = [
        " ".join(path)
        for path in _leaf_paths(typer.main.get_command(app))
        if path not in documented
    ]
    assert not missing, f"document these commands in README.md or docs/: {missing}"
