"""Bills for people: an `Invoice` (meterline.billing.v1) as HTML or PDF, with amounts in
the account's currency formatted by babel (`kernel/money.format_money`), dates in the
reader's time zone. Used by the CLI (`meterline invoice render`) and the web page."""

from meterline.invoices.html import render_html
from meterline.invoices.pdf import render_pdf
from meterline.invoices.view import InvoiceView, invoice_view

__all__ = ["InvoiceView", "invoice_view", "render_html", "render_pdf"]
