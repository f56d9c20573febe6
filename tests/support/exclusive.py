"""Under pytest-xdist, a test marked `exclusive` runs with no other test beside it: one
whose time bound needs the machine to itself, or that opens many database connections
(the shared PostgreSQL allows 100). Every other test shares the machine.

A readers-writer lock over two lock files all workers of one run share: an exclusive test
first takes `intent` (so no new test starts while it waits), then `machine` alone; any
other test takes `machine` shared, passing through `intent` on the way in."""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path


def _lock_directory() -> Path | None:
    """The run's lock directory, or None when the tests run in one process."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run:
        return None
    directory = Path(tempfile.gettempdir()) / f"meterline-tests-{run}"
    directory.mkdir(exist_ok=True)
    return directory


@contextmanager
def machine_share(exclusive: bool) -> Iterator[None]:
    directory = _lock_directory()
    if directory is None:
        yield
        return
    with ExitStack() as files:
        intent = files.enter_context(open(directory / "intent.lock", "a"))
        machine = files.enter_context(open(directory / "machine.lock", "a"))
        if exclusive:
            fcntl.flock(intent, fcntl.LOCK_EX)
            fcntl.flock(machine, fcntl.LOCK_EX)
        else:
            fcntl.flock(intent, fcntl.LOCK_SH)
            fcntl.flock(machine, fcntl.LOCK_SH)
            fcntl.flock(intent, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(machine, fcntl.LOCK_UN)
            fcntl.flock(intent, fcntl.LOCK_UN)
