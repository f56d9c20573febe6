"""Logging settings: a level that is not one is refused (never quietly INFO), and the JSON
format writes one parseable object per line, from a real service process."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from meterline.kernel.config import ConfigError, load_settings
from meterline.kernel.logs import JsonFormatter

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("value", ["LOUD", "info2", "10"])
def test_an_invalid_log_level_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match=f"METERLINE_LOG_LEVEL={value!r} is not one of"):
        load_settings({"METERLINE_LOG_LEVEL": value})


def test_levels_and_formats_are_taken_in_any_case() -> None:
    settings = load_settings({"METERLINE_LOG_LEVEL": "debug", "METERLINE_LOG_FORMAT": "JSON"})
    assert (settings.log_level, settings.log_format) == ("DEBUG", "json")
    with pytest.raises(ConfigError, match="METERLINE_LOG_FORMAT='xml'"):
        load_settings({"METERLINE_LOG_FORMAT": "xml"})


def test_a_json_record_is_one_object_with_its_traceback() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord(
            "meterline.x", logging.ERROR, __file__, 1, "lost %s", ("s1",), sys.exc_info()
        )
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert (entry["level"], entry["logger"], entry["message"]) == (
        "ERROR",
        "meterline.x",
        "lost s1",
    )
    assert "RuntimeError: boom" in entry["exception"]


def test_a_service_with_a_bad_log_level_exits_with_one_line() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERLINE_")}
    env.update(METERLINE_LOG_LEVEL="LOUD", METERLINE_PLAINTEXT="1")
    done = subprocess.run(
        [sys.executable, "-m", "rating_service"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "METERLINE_LOG_LEVEL='LOUD' is not one of" in lines[0]
    assert "Traceback" not in done.stderr
