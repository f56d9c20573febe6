"""The live part of the page: server-sent events fed by the service manager's WatchAccount
stream, one stream per open page, with the signed-in user's token. Nothing polls: the
page gets a `hello` (the account and its running sessions) when it connects, then one
`usage` message per account event as the service manager sends it; a session's details
(service, endpoint, start) are read once, when its first event comes. If the stream
breaks the page is told (`trouble`) and the browser's EventSource connects again."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.requests import Request
from starlette.responses import Response

from meterline.web.auth import signed_in, token
from meterline.web.portal import portal_of
from meterline.web.views import account_view, event_view, session_view

log = logging.getLogger(__name__)
PING_SECONDS = 15
RETRY_MS = 2000
"""How soon the browser connects again after the stream ends."""


def _message(kind: str, data: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(data=json.dumps(data), event=kind, retry=RETRY_MS)


async def events(request: Request) -> Response:
    account_id = request.path_params["account_id"]
    session = signed_in(request, account_id)
    services = portal_of(request).services
    access = await token(request, session)
    account = await services.account(access, account_id)
    currency = account.currency

    async def stream() -> AsyncIterator[ServerSentEvent]:
        known = {
            s.session_id: session_view(s)
            for s in await services.active_sessions(access, account_id)
        }
        yield _message(
            "hello", {"account": account_view(account), "sessions": list(known.values())}
        )
        watch = services.watch(access, account_id)
        try:
            async for event in watch:
                ended = event.HasField("termination") and event.termination.ended
                if event.session_id and event.session_id not in known and not ended:
                    for running in await services.active_sessions(access, account_id):
                        known.setdefault(running.session_id, session_view(running))
                details = known.get(event.session_id)
                view = event_view(event, currency, details["unit"] if details else None)
                view["session"] = details
                if ended:
                    known.pop(event.session_id, None)
                    # The capture moved the balance: show the account as it is now.
                    view["account"] = account_view(await services.account(access, account_id))
                yield _message("usage", view)
        except grpc.aio.AioRpcError as error:
            log.info("account %s: live events ended: %s", account_id, error.code().name)
            yield _message(
                "trouble",
                {"message": "Live updates paused; reconnecting…", "code": error.code().name},
            )
        finally:
            cancel = getattr(watch, "cancel", None)
            if cancel is not None:
                cancel()

    return EventSourceResponse(
        stream(),
        ping=PING_SECONDS,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
