"""The end users' web page in a real headless Chromium, against the real stack: sign in
with a portal credential made by the CLI; a session metered through the SDK appears and
its charge rises on the page without a reload; it ends and shows in the history with its
exact charge; a voucher redeemed on the page raises the balance in place; another
account's pages, a forged cookie and a POST without the CSRF token are refused.
A screenshot of the live page is saved in the test's tmp_path (live-page.png)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from client_sdk import ClientConfig, MeterlineClient, ServiceType
from meterline.billing.v1 import billing_pb2
from meterline.kernel.money import format_money
from meterline.kernel.wire import timestamp
from meterline.web.services import PAGE_SIZE
from tests.support import tls
from tests.support.clients import OPERATOR, Stubs, device_credential, ensure_tariff, new_account
from tests.support.session_calls import own_device, start, stop
from tests.support.stack import TOKEN_SECRET, InProcessStack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

PREFIX = "+4420"
ENDPOINT = "+442071234567"
PRICE = 10_000
"""0.01 EUR a second."""
WAIT_MS = 10_000


async def portal_sign_in(stack: InProcessStack, account_id: str) -> tuple[str, str]:
    """`meterline credential issue --account ID --portal --json`: the user name and password."""
    env = {
        **os.environ,
        "METERLINE_TOKEN_SECRET": TOKEN_SECRET,
        "METERLINE_RATING_ADDRESS": stack.endpoints.rating,
        "METERLINE_BILLING_ADDRESS": stack.endpoints.billing,
        "METERLINE_SERVICE_ADDRESS": stack.endpoints.service,
        **tls.client_environment(),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meterline.cli.main",
        "credential",
        "issue",
        "--account",
        account_id,
        "--portal",
        "--json",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    issued = json.loads(out)
    assert issued["account_id"] == account_id
    return issued["user"], issued["password"]


async def sign_in(page: Page, url: str, user: str, password: str, account_id: str) -> None:
    await page.goto(f"{url}/sign-in")
    await page.get_by_label("User name").fill(user)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(f"{url}/accounts/{account_id}")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=WAIT_MS)


async def mark_no_reload(page: Page) -> None:
    """A mark a reload would wipe out."""
    await page.evaluate("window.__noReload = 'still here'")


async def assert_not_reloaded(page: Page) -> None:
    assert await page.evaluate("window.__noReload") == "still here", "the page was reloaded"


def sdk_config(stack: InProcessStack, client_id: str, secret: str) -> ClientConfig:
    return ClientConfig(
        service_addresses=[stack.endpoints.service],
        auth_addresses=[stack.endpoints.billing],
        client_id=client_id,
        client_secret=secret,
        tls=tls.client_tls(),
    )


async def charge_on_page(page: Page, session_id: str) -> int:
    value = await page.locator(f'[data-session="{session_id}"]').get_attribute(
        "data-charged-micros"
    )
    return int(value or 0)


async def test_a_metered_session_shows_live_then_in_history_with_its_exact_charge(
    stack: InProcessStack, api: Stubs, page_url: str, page: Page, tmp_path: Path
) -> None:
    problems: list[str] = []  # script errors, CSP refusals
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    await ensure_tariff(api.rating, PREFIX, PRICE)
    account_id = await new_account(api.billing, 5_000_000)
    user, password = await portal_sign_in(stack, account_id)
    await sign_in(page, page_url, user, password, account_id)
    await expect(page.locator("#available")).to_have_text(format_money(5_000_000, "EUR"))
    await expect(page.locator("#no-sessions")).to_be_visible()
    await mark_no_reload(page)

    client_id, secret = await device_credential(api.auth, account_id)
    async with MeterlineClient(sdk_config(stack, client_id, secret)) as client:
        session = await client.start_service(ServiceType.VOICE, ENDPOINT)
        row = page.locator(f'[data-session="{session.session_id}"]')
        seen: list[int] = []
        for used in range(1, 16):
            await session.report(used)
            await asyncio.sleep(0.25)
            if await row.count():
                seen.append(await charge_on_page(page, session.session_id))
        await expect(row).to_be_visible(timeout=WAIT_MS)
        await expect(row.locator(".endpoint")).to_have_text(ENDPOINT)
        await expect(row.locator(".service")).to_have_text("Voice call")
        await expect(row).to_have_attribute("data-used-units", "15", timeout=WAIT_MS)
        await expect(row.locator(".charge")).to_have_text(format_money(150_000, "EUR"))
        rising = sorted(set(seen))
        assert seen == sorted(seen) and len(rising) >= 3, f"the charge did not rise: {seen}"
        await expect(row.locator(".duration")).not_to_have_text("\u2013")
        screenshot = tmp_path / "live-page.png"
        await page.screenshot(path=str(screenshot), full_page=True)
        assert screenshot.stat().st_size > 0
        print(f"live page screenshot: {screenshot}")

        record = await session.stop(17)
    assert record.charged_micros == 170_000
    await expect(row).to_have_count(0, timeout=WAIT_MS)
    await expect(page.locator("#notices")).to_contain_text("ended", timeout=WAIT_MS)
    await expect(page.locator("#balance")).to_have_text(format_money(5_000_000 - 170_000, "EUR"))
    await assert_not_reloaded(page)

    await page.get_by_role("link", name="History").click()
    line = page.locator(f'#records tr[data-session="{session.session_id}"]')
    await expect(line.locator(".charge")).to_have_text(format_money(170_000, "EUR"))
    await expect(line).to_contain_text(ENDPOINT)
    await expect(page.locator("#ledger tbody tr")).not_to_have_count(0)
    # Times in the browser's own zone (Europe/Zurich here), not the server's UTC.
    ended = line.locator("time")
    iso = await ended.get_attribute("datetime")
    assert iso and iso.endswith("+00:00")
    shown = await ended.inner_text()
    expected = await page.evaluate(
        "(iso) => new Intl.DateTimeFormat(undefined, {dateStyle: 'medium', timeStyle: 'medium',"
        " timeZone: 'Europe/Zurich'}).format(new Date(iso))",
        iso,
    )
    assert shown == expected != iso
    cookies = {c["name"]: c for c in await page.context.cookies()}
    assert cookies["meterline_tz"]["value"] == "Europe%2FZurich"
    session_cookie = cookies["meterline_session"]
    assert session_cookie["httpOnly"] and session_cookie["secure"]
    assert session_cookie["sameSite"] == "Strict"
    assert problems == []


async def test_a_voucher_redeemed_on_the_page_raises_the_balance_in_place(
    stack: InProcessStack, api: Stubs, page_url: str, page: Page
) -> None:
    account_id = await new_account(api.billing, 1_000_000)
    batch = await api.billing.CreateVouchers(
        billing_pb2.CreateVouchersRequest(count=1, amount_micros=2_500_000, currency="EUR"),
        metadata=OPERATOR,
    )
    user, password = await portal_sign_in(stack, account_id)
    await sign_in(page, page_url, user, password, account_id)
    await mark_no_reload(page)

    await page.get_by_label("Voucher code").fill(batch.codes[0].lower())
    await page.get_by_role("button", name="Redeem").click()
    await expect(page.locator("#top-up-result")).to_contain_text("Voucher redeemed")
    await expect(page.locator("#available")).to_have_text(format_money(3_500_000, "EUR"))
    await expect(page.locator("#balance")).to_have_text(format_money(3_500_000, "EUR"))
    await assert_not_reloaded(page)

    # The same code again (a second press, a retry): told so, and nothing is added.
    await page.get_by_label("Voucher code").fill(batch.codes[0])
    await page.get_by_role("button", name="Redeem").click()
    await expect(page.locator("#top-up-result")).to_contain_text(
        "This voucher was already redeemed for this account", timeout=WAIT_MS
    )
    await expect(page.locator("#top-up-result")).to_contain_text("nothing was added")
    await expect(page.locator("#available")).to_have_text(format_money(3_500_000, "EUR"))
    await expect(page.locator("#balance")).to_have_text(format_money(3_500_000, "EUR"))


async def test_another_accounts_pages_and_a_forged_cookie_are_refused(
    stack: InProcessStack, api: Stubs, page_url: str, page: Page
) -> None:
    mine = await new_account(api.billing, 1_000_000)
    theirs = await new_account(api.billing, 9_000_000)
    user, password = await portal_sign_in(stack, mine)
    await sign_in(page, page_url, user, password, mine)

    for path in ("", "/history", "/bills", "/events", "/bills/some-invoice"):
        answer = await page.goto(f"{page_url}/accounts/{theirs}{path}")
        assert answer is not None and answer.status == 403, path
    await expect(page.locator("main")).not_to_contain_text(format_money(9_000_000, "EUR"))
    # What the page never gave out is refused with a page, never a server error: a
    # non-ASCII account in the URL, a page link that is garbage.
    odd = await page.goto(f"{page_url}/accounts/{mine}%C3%A9")
    assert odd is not None and odd.status == 403
    garbage = await page.goto(f"{page_url}/accounts/{mine}/history?records=garbage")
    assert garbage is not None and garbage.status == 400
    await expect(page.locator("main")).to_contain_text("address is not one the page gave out")
    refused = await page.request.post(
        f"{page_url}/accounts/{theirs}/top-up",
        form={"code": "X", "csrf_token": await page_csrf(page, page_url, mine)},
    )
    assert refused.status == 403

    # A cookie the page never gave out is no session: back to the sign-in.
    await page.context.clear_cookies()
    await page.context.add_cookies(
        [{"name": "meterline_session", "value": "forged-" + "x" * 40, "url": page_url}]
    )
    answer = await page.goto(f"{page_url}/accounts/{mine}")
    assert answer is not None
    assert page.url == f"{page_url}/sign-in"
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    events = await page.request.get(f"{page_url}/accounts/{mine}/events")
    assert events.status == 401


async def page_csrf(page: Page, url: str, account_id: str) -> str:
    await page.goto(f"{url}/accounts/{account_id}")
    value = await page.locator('#top-up input[name="csrf_token"]').get_attribute("value")
    assert value
    return value


async def test_a_post_without_the_csrf_token_is_refused(
    stack: InProcessStack, api: Stubs, page_url: str, page: Page
) -> None:
    account_id = await new_account(api.billing, 1_000_000)
    batch = await api.billing.CreateVouchers(
        billing_pb2.CreateVouchersRequest(count=1, amount_micros=1_000_000, currency="EUR"),
        metadata=OPERATOR,
    )
    user, password = await portal_sign_in(stack, account_id)
    await sign_in(page, page_url, user, password, account_id)
    top_up = f"{page_url}/accounts/{account_id}/top-up"

    without = await page.request.post(top_up, form={"code": batch.codes[0]})
    assert without.status == 403
    assert "security token" in (await without.json())["error"]
    wrong = await page.request.post(top_up, form={"code": batch.codes[0], "csrf_token": "guess"})
    assert wrong.status == 403
    assert (await page.request.post(f"{page_url}/sign-out", form={})).status == 403
    account = await api.billing.GetAccount(
        billing_pb2.GetAccountRequest(account_id=account_id), metadata=OPERATOR
    )
    assert account.balance_micros == 1_000_000, "a refused POST redeemed the voucher"

    # The same POST with the session's token goes through.
    token = await page_csrf(page, page_url, account_id)
    accepted = await page.request.post(
        top_up,
        form={"code": batch.codes[0], "csrf_token": token},
        headers={"Accept": "application/json"},
    )
    assert accepted.status == 200, await accepted.text()

    # Signing in needs the sign-in form's own token too.
    await page.context.clear_cookies()
    sign_in_post = await page.request.post(
        f"{page_url}/sign-in", form={"user": user, "password": password}
    )
    assert sign_in_post.status == 403


async def test_a_bill_opens_as_html_and_downloads_as_a_pdf_holding_its_total(
    stack: InProcessStack, api: Stubs, page_url: str, page: Page, tmp_path: Path
) -> None:
    from pypdf import PdfReader

    await ensure_tariff(api.rating, PREFIX, PRICE)
    account_id = await new_account(api.billing, 5_000_000)
    client_id, secret = await device_credential(api.auth, account_id)
    began = datetime.now(UTC) - timedelta(minutes=5)
    async with MeterlineClient(sdk_config(stack, client_id, secret)) as client:
        session = await client.start_service(ServiceType.VOICE, ENDPOINT)
        await session.report(30)
        record = await session.stop(30)
    assert record.charged_micros == 300_000
    invoice = await api.billing.GenerateInvoice(
        billing_pb2.GenerateInvoiceRequest(
            account_id=account_id,
            period_start=timestamp(began),
            period_end=timestamp(datetime.now(UTC)),
            idempotency_key=f"bill-{account_id}",
        ),
        metadata=OPERATOR,
    )
    assert invoice.total_micros == 300_000
    total = format_money(invoice.total_micros, "EUR")
    other = await new_account(api.billing, 1_000_000)
    other_bill = await api.billing.GenerateInvoice(
        billing_pb2.GenerateInvoiceRequest(
            account_id=other,
            period_start=timestamp(began),
            period_end=timestamp(datetime.now(UTC)),
            idempotency_key=f"bill-{other}",
        ),
        metadata=OPERATOR,
    )

    user, password = await portal_sign_in(stack, account_id)
    await sign_in(page, page_url, user, password, account_id)
    await page.get_by_role("link", name="Bills").click()
    item = page.locator(f'#bills li[data-invoice="{invoice.invoice_id}"]')
    await expect(item.locator(".number")).to_have_text(invoice.number)
    await expect(item.locator(".total")).to_have_text(total)

    await item.locator("a.view").click()
    await expect(page.locator("body")).to_contain_text(invoice.number)
    await expect(page.locator("body")).to_contain_text(total)
    await page.go_back()

    async with page.expect_download() as waiting:
        await item.locator("a.pdf").click()
    download = await waiting.value
    saved = tmp_path / download.suggested_filename
    await download.save_as(str(saved))
    assert saved.read_bytes().startswith(b"%PDF")
    text = "\n".join(p.extract_text() or "" for p in PdfReader(saved).pages)
    assert invoice.number in text
    assert total in text, text

    # Another account's bill: not under my account, nor under theirs.
    mine = await page.goto(f"{page_url}/accounts/{account_id}/bills/{other_bill.invoice_id}")
    assert mine is not None and mine.status == 404
    await expect(page.locator("body")).not_to_contain_text(other_bill.number)
    theirs = await page.goto(f"{page_url}/accounts/{other}/bills/{other_bill.invoice_id}.pdf")
    assert theirs is not None and theirs.status == 403


async def test_low_balance_and_final_unit_notices_show_as_they_come(
    stack: InProcessStack, api: Stubs, page_url: str, page: Page
) -> None:
    await ensure_tariff(api.rating, PREFIX, PRICE)
    # 0.70 EUR at 0.01 EUR a second: one 60-second slice, and not the price of another.
    account_id = await new_account(api.billing, 700_000)
    user, password = await portal_sign_in(stack, account_id)
    await sign_in(page, page_url, user, password, account_id)
    client_id, secret = await device_credential(api.auth, account_id)
    async with MeterlineClient(sdk_config(stack, client_id, secret)) as client:
        session = await client.start_service(ServiceType.VOICE, ENDPOINT)
        for used in (10, 25, 40, 50, 55):
            await session.report(used)
            await asyncio.sleep(0.3)
        notices = page.locator("#notices")
        await expect(notices.locator(".low-balance")).to_have_count(1, timeout=WAIT_MS)
        await expect(notices.locator(".final-units")).to_have_count(1, timeout=WAIT_MS)
        await expect(notices).to_contain_text("final units")
        await session.stop(55)
    await expect(notices).to_contain_text("ended", timeout=WAIT_MS)
    # Each notice once, however many events carried the flag.
    await expect(notices.locator(".final-units")).to_have_count(1)
    await expect(notices.locator(".low-balance")).to_have_count(1)


async def test_signing_out_ends_the_session_on_the_server(
    stack: InProcessStack, api: Stubs, page_url: str, page: Page
) -> None:
    account_id = await new_account(api.billing, 1_000_000)
    user, password = await portal_sign_in(stack, account_id)
    await sign_in(page, page_url, user, password, account_id)
    old = {c["name"]: c["value"] for c in await page.context.cookies()}["meterline_session"]

    await page.get_by_role("button", name="Sign out").click()
    await page.wait_for_url(f"{page_url}/sign-in")
    # The old cookie, put back, is no session any more.
    await page.context.add_cookies([{"name": "meterline_session", "value": old, "url": page_url}])
    await page.goto(f"{page_url}/accounts/{account_id}")
    assert page.url == f"{page_url}/sign-in"

    await page.get_by_label("User name").fill(user)
    await page.get_by_label("Password").fill(password + "x")
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("alert")).to_have_text(
        "That user name and password do not match."
    )


async def test_the_history_pages_through_service_records_and_ledger_entries(
    stack: InProcessStack, api: Stubs, page_url: str, page: Page, tmp_path: Path
) -> None:
    await ensure_tariff(api.rating, PREFIX, PRICE)
    account_id = await new_account(api.billing, 5_000_000)
    who = own_device(account_id)
    ended = []
    for used in range(1, PAGE_SIZE + 3):  # one page and two more
        session_id = await start(api, account_id, ENDPOINT, who)
        await stop(api, session_id, used, who)
        ended.append(session_id)
    user, password = await portal_sign_in(stack, account_id)
    await sign_in(page, page_url, user, password, account_id)

    await page.get_by_role("link", name="History").click()
    rows = page.locator("#records tbody tr")
    await expect(rows).to_have_count(PAGE_SIZE)
    first_page = [await row.get_attribute("data-session") for row in await rows.all()]
    assert first_page == list(reversed(ended))[:PAGE_SIZE]
    await expect(page.locator("#ledger tbody tr")).not_to_have_count(0)

    await page.get_by_role("link", name="Older services").click()
    await expect(rows).to_have_count(2)
    second_page = [await row.get_attribute("data-session") for row in await rows.all()]
    assert second_page == list(reversed(ended))[PAGE_SIZE:]
    await expect(page.get_by_role("link", name="Older services")).to_have_count(0)
    await page.screenshot(path=str(tmp_path / "history-page.png"), full_page=True)
    await expect(rows.nth(1).locator(".charge")).to_have_text(format_money(PRICE, "EUR"))

    await page.get_by_role("link", name="Later movements").click()
    await expect(page.locator("#ledger tbody tr")).not_to_have_count(0)
    await expect(rows).to_have_count(2)  # the services' page is kept
