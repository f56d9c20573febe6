"""A bill as one HTML page, from the package's Jinja2 template (autoescaped: account
names, endpoints and reasons are text, never markup)."""

from __future__ import annotations

from functools import cache

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from meterline.billing.v1 import billing_pb2
from meterline.invoices.view import DEFAULT_LOCALE, DEFAULT_TIME_ZONE, invoice_view


@cache
def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("meterline.invoices", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_html(
    invoice: billing_pb2.Invoice,
    *,
    locale: str = DEFAULT_LOCALE,
    time_zone: str = DEFAULT_TIME_ZONE,
) -> str:
    """The bill as a standalone HTML document (its style inline, no outside files)."""
    view = invoice_view(invoice, locale=locale, time_zone=time_zone)
    language = locale.replace("_", "-")
    return _environment().get_template("invoice.html.j2").render(bill=view, language=language)
