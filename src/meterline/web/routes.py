"""The pages: now (balance, running sessions, notices, top-up), history (service records
and ledger entries, each paged), bills (the list, each as HTML and PDF). Every handler
first checks the session and that the URL's account is its own (auth.signed_in); the
services check again, since every call carries the user's own token."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import grpc
from babel import Locale, UnknownLocaleError
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from meterline.web.auth import checked_form, current_session, page_context, signed_in, token
from meterline.web.portal import TEMPLATES, OtherAccount, portal_of
from meterline.web.sessions import PortalSession
from meterline.web.views import (
    CUSTOMER_SIDES,
    account_view,
    entry_view,
    invoice_view,
    money,
    record_view,
    session_view,
)

TIME_ZONE_COOKIE = "meterline_tz"
"""Set by the page's script to the browser's time zone (Intl); bills are dated in it."""
BILL_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"


async def home(request: Request) -> Response:
    session = current_session(request)
    if session is None:
        return RedirectResponse("/sign-in", status_code=303)
    return RedirectResponse(f"/accounts/{session.account_id}", status_code=303)


async def now(request: Request) -> Response:
    account_id = request.path_params["account_id"]
    session = signed_in(request, account_id)
    services = portal_of(request).services
    access = await token(request, session)
    account = await services.account(access, account_id)
    running = await services.active_sessions(access, account_id)
    return TEMPLATES.TemplateResponse(
        request,
        "now.html",
        page_context(
            session,
            page="now",
            account=account_view(account),
            sessions=[session_view(s) for s in running],
        ),
    )


async def history(request: Request) -> Response:
    account_id = request.path_params["account_id"]
    session = signed_in(request, account_id)
    services = portal_of(request).services
    access = await token(request, session)
    account = await services.account(access, account_id)
    records_token = request.query_params.get("records", "")
    ledger_token = request.query_params.get("ledger", "")
    records = await services.service_records(access, account_id, records_token)
    entries = await services.ledger_entries(access, account_id, ledger_token)
    return TEMPLATES.TemplateResponse(
        request,
        "history.html",
        page_context(
            session,
            page="history",
            account=account_view(account),
            records=[record_view(r, account.currency) for r in records.records],
            records_next=records.next_page_token,
            entries=[
                entry_view(e, account.currency)
                for e in entries.entries
                if e.ledger_account in CUSTOMER_SIDES
            ],
            ledger_next=entries.next_page_token,
            records_token=records_token,
            ledger_token=ledger_token,
        ),
    )


async def bills(request: Request) -> Response:
    account_id = request.path_params["account_id"]
    session = signed_in(request, account_id)
    services = portal_of(request).services
    access = await token(request, session)
    account = await services.account(access, account_id)
    page_token = request.query_params.get("page", "")
    found = await services.invoices(access, account_id, page_token)
    return TEMPLATES.TemplateResponse(
        request,
        "bills.html",
        page_context(
            session,
            page="bills",
            account=account_view(account),
            invoices=[invoice_view(i) for i in found.invoices],
            next_page=found.next_page_token,
        ),
    )


async def _own_invoice(request: Request) -> Any:
    account_id = request.path_params["account_id"]
    session = signed_in(request, account_id)
    access = await token(request, session)
    invoice = await portal_of(request).services.invoice(access, request.path_params["invoice_id"])
    if invoice.account_id != session.account_id:
        raise OtherAccount
    return invoice


def _locale(request: Request) -> str:
    """The browser's first language babel knows (Accept-Language), else English."""
    for part in request.headers.get("accept-language", "").split(","):
        tag = part.split(";")[0].strip().replace("-", "_")
        if not tag or tag == "*":
            continue
        try:
            return str(Locale.parse(tag))
        except (UnknownLocaleError, ValueError):
            continue
    return "en"


def _time_zone(request: Request) -> str:
    name = request.cookies.get(TIME_ZONE_COOKIE, "")
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return "UTC"
    return name


async def bill_html(request: Request) -> Response:
    from meterline import invoices as rendering

    invoice = await _own_invoice(request)
    page = rendering.render_html(invoice, locale=_locale(request), time_zone=_time_zone(request))
    return HTMLResponse(page, headers={"Content-Security-Policy": BILL_POLICY})


async def bill_pdf(request: Request) -> Response:
    from meterline import invoices as rendering

    invoice = await _own_invoice(request)
    document = rendering.render_pdf(invoice, locale=_locale(request), time_zone=_time_zone(request))
    name = (invoice.number or invoice.invoice_id).replace('"', "")
    return Response(
        bytes(document),
        media_type="application/pdf",
        headers={"Content-Disposition": f'attachment; filename="{name}.pdf"'},
    )


async def top_up(request: Request) -> Response:
    account_id = request.path_params["account_id"]
    session = signed_in(request, account_id)
    form = await checked_form(request, session)
    code = str(form.get("code") or "").strip()
    wants_json = "application/json" in request.headers.get("accept", "")
    if not code:
        return _top_up_refused(request, session, wants_json, "Enter the voucher code.")
    access = await token(request, session)
    try:
        redeemed = await portal_of(request).services.redeem_voucher(access, account_id, code)
    except grpc.aio.AioRpcError as error:
        if error.code() in (
            grpc.StatusCode.NOT_FOUND,
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.FAILED_PRECONDITION,
            grpc.StatusCode.ALREADY_EXISTS,
        ):
            return _top_up_refused(
                request, session, wants_json, error.details() or "The voucher was not redeemed."
            )
        raise
    account = redeemed.account
    funded = money(redeemed.transaction.amount_micros, account.currency)
    if not redeemed.transaction.amount_micros:
        funded = ""
    message = f"Voucher redeemed{': ' + funded if funded else ''}."
    if redeemed.already_redeemed:
        then = f" ({funded})" if funded else ""
        message = f"This voucher was already redeemed for this account{then}; nothing was added."
    if not wants_json:
        return RedirectResponse(f"/accounts/{account_id}", status_code=303)
    return JSONResponse({"message": message, "account": account_view(account)})


def _top_up_refused(
    request: Request, session: PortalSession, wants_json: bool, message: str
) -> Response:
    if wants_json:
        return JSONResponse({"error": message}, status_code=400)
    return TEMPLATES.TemplateResponse(
        request,
        "error.html",
        page_context(session, page="now", title="Not redeemed", message=message),
        status_code=400,
    )
