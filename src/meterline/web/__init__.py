"""The end users' web page: sign in with a portal credential, see the balance and the
running sessions' charges live, the history and the bills, and top up with a voucher
(docs/web.md). A client of the services like the CLI; `meterline web` runs it."""

from meterline.web.app import create_app

__all__ = ["create_app"]
