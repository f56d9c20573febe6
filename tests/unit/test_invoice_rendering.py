"""meterline.invoices: a wire Invoice as HTML and PDF, with no services."""

from __future__ import annotations

import io

import pypdf
import pytest

from meterline.billing.v1 import billing_pb2
from meterline.invoices import render_html, render_pdf
from meterline.invoices.view import RenderError

pytestmark = pytest.mark.unit


def _invoice(sessions: int = 1, name: str = "Zoë <script>alert(1)</script>") -> billing_pb2.Invoice:
    invoice = billing_pb2.Invoice(
        invoice_id="inv_1",
        account_id="acct_1",
        number="INV-2026-000042",
        account_name=name,
        currency="EUR",
        total_micros=1_234_567_891 * sessions,
        opening_balance_micros=5_000_000,
        closing_balance_micros=-1,
    )
    invoice.period_start.FromSeconds(1_793_491_200)  # 2026-11-01T00:00:00Z
    invoice.period_end.FromSeconds(1_796_083_200)  # 2026-12-01T00:00:00Z
    invoice.create_time.FromSeconds(1_796_083_260)
    charge = invoice.charges.add(
        service_type="VOICE",
        units=125 * sessions,
        unit="SECOND",
        amount_micros=invoice.total_micros,
    )
    for n in range(sessions):
        session = charge.sessions.add(
            session_id=f"ses_{n:032d}",
            endpoint="+33123456789",
            units=125,
            amount_micros=1_234_567_891,
        )
        session.start_time.FromSeconds(1_793_500_000 + n)
        session.duration.FromSeconds(125)
    movement = invoice.movements.add(
        kind=billing_pb2.TRANSACTION_KIND_FUND, amount_micros=10_000_000, description="voucher ₹"
    )
    movement.create_time.FromSeconds(1_793_491_300)
    return invoice


def _text(data: bytes) -> tuple[int, str]:
    reader = pypdf.PdfReader(io.BytesIO(data))
    return len(reader.pages), "\n".join(page.extract_text() for page in reader.pages)


def test_html_is_escaped_and_in_the_readers_locale_and_zone() -> None:
    html = render_html(_invoice())
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "INV-2026-000042" in html
    assert "1,234.567891 EUR" in html and "-0.000001 EUR" in html
    assert "0:02:05" in html and "125 seconds" in html
    assert "1 Nov 2026, 00:00:00" in html
    french = render_html(_invoice(), locale="fr_FR", time_zone="Europe/Paris")
    assert "1 234,567891 EUR" in french
    assert "1 nov. 2026, 01:00:00" in french  # Paris is UTC+1 in November
    assert 'lang="fr-FR"' in french


def test_pdf_opens_with_the_number_and_total_and_breaks_pages() -> None:
    pages, text = _text(render_pdf(_invoice()))
    assert pages == 1
    assert "INV-2026-000042" in text and "1,234.567891 EUR" in text
    assert "Zoë" in text  # Latin-1 kept; what it lacks becomes its nearest form or "?"
    pages, text = _text(render_pdf(_invoice(sessions=150), locale="de_DE"))
    assert pages > 2
    assert "185.185,18365 EUR" in text  # 150 sessions' total, German grouping
    assert text.count("INV-2026-000042") >= pages  # every page's footer


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"locale": "xx_NOWHERE"}, "not a locale"),
        ({"time_zone": "Mars/Olympus"}, "not a time zone"),
    ],
)
def test_a_bad_locale_or_zone_is_refused(options: dict[str, str], message: str) -> None:
    for render in (render_html, render_pdf):
        with pytest.raises(RenderError, match=message):
            render(_invoice(), **options)  # type: ignore[operator]
