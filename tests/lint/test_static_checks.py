"""The wire contract and the code stay clean: buf lint, generated code up to date, ruff
and mypy. Each runs the real tool, as the README's test command promises."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lint

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_buf_lint_passes_on_the_protos() -> None:
    buf = shutil.which("buf", path=str(BIN)) or shutil.which("buf")
    assert buf, "buf is missing: install the dev extra (pip install -e '.[dev]', buf-bin)"
    result = _run(buf, "lint")
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_code_matches_the_protos(tmp_path: Path) -> None:
    result = _run(sys.executable, "scripts/gen_protos.py", str(tmp_path))
    assert result.returncode == 0, result.stderr
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(
        p.relative_to(ROOT / "src")
        for package in ("rating", "billing", "auth", "service")
        for p in (ROOT / "src" / "meterline" / package).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    assert generated == committed, "run: python scripts/gen_protos.py"
    stale = [
        str(path)
        for path in generated
        if not filecmp.cmp(tmp_path / path, ROOT / "src" / path, shallow=False)
    ]
    assert not stale, f"regenerate with `python scripts/gen_protos.py`: {stale}"


def test_ruff_is_clean() -> None:
    check = _run(str(BIN / "ruff"), "check", "src", "tests", "scripts", "bench")
    assert check.returncode == 0, check.stdout
    formatted = _run(str(BIN / "ruff"), "format", "--check", "src", "tests", "scripts", "bench")
    assert formatted.returncode == 0, formatted.stdout


def test_mypy_is_clean() -> None:
    result = _run(str(BIN / "mypy"))
    assert result.returncode == 0, result.stdout
