"""Ports are checked the way the services bind them, a CLI failure is one line, and a child
started as another user runs as it and dies with its parent."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.support.ports import time_wait_on

from meterline.kernel.processes import free_port, port_is_free

pytestmark = pytest.mark.unit


def test_a_port_in_time_wait_is_free_and_a_listened_one_is_not() -> None:
    port = free_port()
    time_wait_on(port)  # asserts that a plain bind is refused there
    assert port_is_free(f"127.0.0.1:{port}")
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        assert not port_is_free(f"127.0.0.1:{port}")


def test_an_unexpected_failure_is_one_line_and_debug_shows_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from meterline.cli import main

    def broken() -> object:
        raise RuntimeError("the disk caught fire\nsecond line")

    monkeypatch.setattr(main, "_settings", broken)
    for argv, traceback_shown in ((["status"], False), (["--debug", "status"], True)):
        monkeypatch.setattr("sys.argv", ["meterline", *argv])
        with pytest.raises(SystemExit) as exited:
            main.run()
        assert exited.value.code == 1
        err = capsys.readouterr().err
        assert ("Traceback" in err) is traceback_shown
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: unexpected failure (RuntimeError: the disk caught fire;")


PARENT = """
import signal, sys, time
from pathlib import Path
from meterline.kernel.processes import spawn
child = spawn(["sleep", "60"], Path(sys.argv[1]), death_signal=signal.SIGTERM,
              user=65534, group=65534)
print(child.pid, flush=True)
time.sleep(60)
"""


def _uid_of(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return None
    if "State:\tZ" in status:
        return None  # a zombie has ended
    line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    return int(line.split()[1])


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0,
    reason="starting a child as another user needs root on Linux",
)
def test_a_child_started_as_another_user_runs_as_it_and_dies_with_its_parent(
    tmp_path: Path,
) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "child.log")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        deadline = time.monotonic() + 10
        while _uid_of(child) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)  # still changing user
        assert _uid_of(child) == 65534
        parent.kill()
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _uid_of(child) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _uid_of(child) is None, "the child outlived its parent"
    finally:
        parent.kill()
        with contextlib.suppress(ProcessLookupError, NameError):
            os.kill(child, signal.SIGKILL)
