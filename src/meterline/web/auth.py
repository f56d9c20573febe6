"""Signing in and out, and the checks every other handler makes: a live session whose
account is the one the URL names, and on every POST the session's CSRF token.

The end user's principal is a DEVICE credential bound to the account (`meterline
credential issue --account ID --portal`): the page exchanges it for a token with
IssueToken and acts with exactly a device's rights on its own account."""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

import grpc
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from meterline.auth.v1 import auth_pb2
from meterline.web.portal import (
    TEMPLATES,
    FormRefused,
    OtherAccount,
    Portal,
    SignInRequired,
    portal_of,
)
from meterline.web.sessions import COOKIE, SIGN_IN_COOKIE, PortalSession, same_text

log = logging.getLogger(__name__)
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


def _cookie(portal: Portal, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        secure=portal.secure_cookies,
        httponly=True,
        samesite="strict",
    )


def current_session(request: Request) -> PortalSession | None:
    return portal_of(request).sessions.get(request.cookies.get(COOKIE))


def signed_in(request: Request, account_id: str | None = None) -> PortalSession:
    """The request's session; SignInRequired without a live one, OtherAccount when the
    URL names another account than the session's."""
    session = current_session(request)
    if session is None:
        raise SignInRequired
    if account_id is not None and not same_text(account_id, session.account_id):
        raise OtherAccount
    return session


async def token(request: Request, session: PortalSession) -> str:
    """The session's access token, renewed with its credential when it is about to expire."""
    if not session.token_is_fresh:
        issued = await portal_of(request).services.issue_token(session.client_id, session.secret)
        session.token = issued.access_token
        session.token_expires_at = float(issued.expire_time.seconds)
    return session.token


async def checked_form(request: Request, session: PortalSession) -> FormData:
    """The POSTed form, once its CSRF token (field or header) is this session's."""
    form = await request.form()
    given = str(form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER) or "")
    if not session.csrf_matches(given):
        raise FormRefused
    return form


# -- the handlers ----------------------------------------------------------------------------


def _sign_in_page(request: Request, error: str = "", status: int = 200) -> Response:
    portal = portal_of(request)
    nonce = secrets.token_urlsafe(24)
    response = TEMPLATES.TemplateResponse(
        request,
        "sign_in.html",
        {"csrf_token": nonce, "error": error, "session": None},
        status_code=status,
    )
    _cookie(portal, response, SIGN_IN_COOKIE, nonce, max_age=3600)
    return response


async def sign_in_form(request: Request) -> Response:
    session = current_session(request)
    if session is not None:
        return RedirectResponse(f"/accounts/{session.account_id}", status_code=303)
    return _sign_in_page(request)


async def sign_in(request: Request) -> Response:
    portal = portal_of(request)
    form = await request.form()
    expected = request.cookies.get(SIGN_IN_COOKIE, "")
    given = str(form.get(CSRF_FIELD) or "")
    if not expected or not given or not same_text(given, expected):
        raise FormRefused
    user = str(form.get("user") or "").strip()
    password = str(form.get("password") or "").strip()
    if not user or not password:
        return _sign_in_page(request, "Enter the user name and the password you were given.", 400)
    try:
        issued = await portal.services.issue_token(user, password)
    except grpc.aio.AioRpcError as error:
        if error.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT):
            return _sign_in_page(request, "That user name and password do not match.", 401)
        log.warning("sign-in failed: %s %s", error.code().name, error.details())
        return _sign_in_page(
            request, "The billing service cannot be reached just now; try again shortly.", 503
        )
    if issued.kind != auth_pb2.PRINCIPAL_KIND_DEVICE or not issued.account_id:
        return _sign_in_page(
            request,
            "This is not an end user's credential; ask for one made with "
            "`meterline credential issue --account ID --portal`.",
            403,
        )
    session = portal.sessions.create(
        issued.account_id, user, password, issued.access_token, float(issued.expire_time.seconds)
    )
    log.info("account %s signed in to the web page", issued.account_id)
    response = RedirectResponse(f"/accounts/{session.account_id}", status_code=303)
    response.delete_cookie(SIGN_IN_COOKIE, path="/")
    _cookie(portal, response, COOKIE, session.session_id, max_age=_seconds_left(portal, session))
    return response


def _seconds_left(portal: Portal, session: PortalSession) -> int:
    return max(1, int(session.ends_at - time.monotonic()))


async def sign_out(request: Request) -> Response:
    session = signed_in(request)
    await checked_form(request, session)
    portal_of(request).sessions.end(session.session_id)
    response = RedirectResponse("/sign-in", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


def page_context(session: PortalSession, **values: Any) -> dict[str, Any]:
    """What every signed-in template gets: the session's account and CSRF token."""
    return {"session": session, "csrf_token": session.csrf_token, **values}
