"""Ports are checked the way the services bind them, and a CLI failure is one line."""

from __future__ import annotations

import socket

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
