"""A port in TIME-WAIT, as a server that closed its connections first leaves it."""

from __future__ import annotations

import socket
import time

import pytest


def time_wait_on(port: int) -> None:
    """Leave a connection of `port` in TIME-WAIT, as a server that closed first does (what
    a previous `up --demo` leaves on its ports), with nothing listening there."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
        client = socket.create_connection(("127.0.0.1", port))
        served, _ = listener.accept()
        served.close()  # the server's side closes first: it is the one left in TIME-WAIT
        time.sleep(0.1)
        client.close()
        time.sleep(0.1)
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # a bind without SO_REUSEADDR is refused
