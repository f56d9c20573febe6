"""`meterline up` owns its data folder, as real processes on the embedded default: a second
`up` is refused and leaves the first alone; `status` and `down` find the running stack;
`kill -9` of `up` leaves no process behind (checked by pid); the next `up` recovers the
folder with a sentence, on ports whose last connections linger in TIME-WAIT; a part
killed under a serving `up` stops the whole stack with a sentence naming it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.test_embedded_default import METERLINE_CLI, _embedded_env, _gone
from tests.support.ports import time_wait_on

pytestmark = [pytest.mark.e2e, pytest.mark.embedded]

START_WITHIN = 120.0
GONE_WITHIN = 20.0


def _cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*METERLINE_CLI, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )


def _up(env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*METERLINE_CLI, "up"],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _written_by(state_file: Path, pid: int) -> bool:
    try:
        return bool(json.loads(state_file.read_text()).get("pid") == pid)
    except (OSError, ValueError):
        return False


def _serving(up: subprocess.Popen[str], data_dir: Path) -> dict[str, int]:
    """Wait for the stack to serve; the pid of each of its processes."""
    state_file = data_dir / "stack.json"
    deadline = time.monotonic() + START_WITHIN
    while not _written_by(state_file, up.pid):  # a killed stack's stack.json may linger
        if up.poll() is not None:
            raise AssertionError(up.stdout.read() if up.stdout else "up exited")
        assert time.monotonic() < deadline, f"meterline up did not serve in {START_WITHIN} s"
        time.sleep(0.2)
    processes: dict[str, int] = json.loads(state_file.read_text())["processes"]
    assert set(processes) == {"postgres", "redis", "rating", "billing", "service", "web"}
    assert not any(_gone(pid) for pid in processes.values())
    return processes


def _wait_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + GONE_WITHIN
    while not all(_gone(pid) for pid in pids):
        left = [pid for pid in pids if not _gone(pid)]
        assert time.monotonic() < deadline, f"still running after {GONE_WITHIN} s: {left}"
        time.sleep(0.1)


def test_a_second_up_is_refused_status_and_down(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = _embedded_env(data_dir)
    first = _up(env, tmp_path)
    try:
        processes = _serving(first, data_dir)

        second = _cli(env, tmp_path, "up")
        assert second.returncode == 1, second.stdout + second.stderr
        assert second.stderr.strip() == (
            f"error: a stack (pid {first.pid}) is running here ({data_dir}); "
            "`meterline down` stops it"
        )
        # The refusal touched nothing of the first stack's: all of it still runs and serves.
        assert first.poll() is None
        assert not any(_gone(pid) for pid in processes.values())
        assert (data_dir / "stack.json").exists()

        status = _cli(env, tmp_path, "status", "--json")
        assert status.returncode == 0, status.stderr
        shown = json.loads(status.stdout)
        assert shown["running"] is True and shown["pid"] == first.pid
        assert shown["health"] == {"rating": "SERVING", "billing": "SERVING", "service": "SERVING"}

        down = _cli(env, tmp_path, "down")
        assert down.returncode == 0, down.stderr
        assert down.stdout.strip() == f"stopped the stack (pid {first.pid})"
        assert first.wait(timeout=30) == 0
    finally:
        if first.poll() is None:
            first.kill()
    _wait_gone(list(processes.values()))
    assert not (data_dir / "stack.json").exists()
    status = _cli(env, tmp_path, "status")
    assert status.returncode == 1 and "no stack runs" in status.stdout


def test_kill_9_of_up_leaves_nothing_and_the_next_up_recovers(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = _embedded_env(data_dir)
    first = _up(env, tmp_path)
    try:
        processes = _serving(first, data_dir)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    # PostgreSQL, Redis and the three services go with it.
    _wait_gone(list(processes.values()))

    status = _cli(env, tmp_path, "status")
    assert status.returncode == 1
    assert "ended here without stopping" in status.stdout

    # The same ports, the last connections of which linger in TIME-WAIT.
    for role in ("RATING", "BILLING", "SERVICE"):
        time_wait_on(int(env[f"METERLINE_{role}_ADDRESS"].rpartition(":")[2]))
    again = _up(env, tmp_path)
    try:
        processes = _serving(again, data_dir)
        down = _cli(env, tmp_path, "down")
        assert down.returncode == 0, down.stderr
        assert again.wait(timeout=30) == 0
        assert again.stdout is not None
        said = again.stdout.read()
    finally:
        if again.poll() is None:
            again.kill()
    assert f"a stack (pid {first.pid}) ended here without stopping; recovered its data folder" in (
        said
    )
    _wait_gone(list(processes.values()))


@pytest.mark.parametrize("part", ["postgres", "service"])
def test_a_part_killed_under_up_stops_the_stack_and_says_which(tmp_path: Path, part: str) -> None:
    data_dir = tmp_path / "data"
    env = _embedded_env(data_dir)
    up = _up(env, tmp_path)
    try:
        processes = _serving(up, data_dir)
        assert up.stdout is not None
        said = ""
        while "serving; Ctrl-C" not in said:  # the default tariffs are loaded by then
            line = up.stdout.readline()
            assert line, said
            said += line
        os.kill(processes[part], signal.SIGKILL)
        code = up.wait(timeout=60)
        said += up.stdout.read()
    finally:
        if up.poll() is None:
            up.kill()
    assert code == 1, said
    assert f"{part}" in said and "stopped while the stack was serving" in said, said
    assert "start it again with `meterline up`" in said
    _wait_gone(list(processes.values()))


def test_postgres_killed_as_the_stack_comes_up_is_a_sentence(tmp_path: Path) -> None:
    """Killed as soon as the stack is up, PostgreSQL goes while `up` loads the default
    tariffs or just after: either way one sentence and exit code 1, never a traceback."""
    data_dir = tmp_path / "data"
    env = _embedded_env(data_dir)
    up = _up(env, tmp_path)
    try:
        processes = _serving(up, data_dir)
        os.kill(processes["postgres"], signal.SIGKILL)
        code = up.wait(timeout=60)
        assert up.stdout is not None
        said = up.stdout.read()
    finally:
        if up.poll() is None:
            up.kill()
    assert code == 1, said
    assert "unexpected failure" not in said and "Traceback" not in said, said
    assert (
        "postgres stopped while the stack was serving" in said
        or "loading the default tariffs failed (" in said
    ), said
    assert "start it again with `meterline up`" in said
    _wait_gone(list(processes.values()))
