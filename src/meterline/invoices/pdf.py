"""A bill as a PDF, drawn with fpdf2 (pure Python, from PyPI alone).

The PDF uses fpdf2's core Helvetica: no font file to ship or find, a small file, and it
opens everywhere. Core fonts hold Latin-1 only, so amounts are written with the ISO 4217
code ("12.50 EUR", the CLI's format too) rather than a symbol that Latin-1 lacks (€, ₹),
and any other character outside Latin-1 (in a name or an endpoint) is written as its
closest Latin-1 form, else "?"; the HTML keeps every character as it is."""

from __future__ import annotations

import unicodedata

from fpdf import FPDF
from fpdf.enums import XPos, YPos
from fpdf.fonts import FontFace

from meterline.billing.v1 import billing_pb2
from meterline.invoices.view import DEFAULT_LOCALE, DEFAULT_TIME_ZONE, InvoiceView, invoice_view

FONT = "helvetica"
# Column widths in mm of the charges table (A4 portrait, 15 mm margins: 180 mm).
_COLUMNS = (52.0, 30.0, 28.0, 14.0, 26.0, 30.0)


def latin1(text: str) -> str:
    """`text` in the core font's Latin-1: accents kept where Latin-1 has them."""
    text = text.replace("\u202f", " ").replace("\xa0", " ")
    out = []
    for char in text:
        if ord(char) < 256:
            out.append(char)
            continue
        folded = unicodedata.normalize("NFKD", char).encode("latin-1", "ignore").decode("latin-1")
        out.append(folded or "?")
    return "".join(out)


class _Bill(FPDF):
    def __init__(self, view: InvoiceView) -> None:
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self.view = view
        self.set_margins(15, 15, 15)
        self.set_auto_page_break(auto=True, margin=15)
        self.set_title(latin1(f"Invoice {view.number}"))
        self.set_creator("Meterline")

    def footer(self) -> None:
        self.set_y(-12)
        self.set_font(FONT, size=8)
        self.cell(
            0, 5, latin1(f"Invoice {self.view.number} - page {self.page_no()}/{{nb}}"), align="C"
        )

    def line_of(self, text: str, size: float = 10, style: str = "") -> None:
        self.set_font(FONT, style=style, size=size)
        self.multi_cell(0, size * 0.5, latin1(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def table_of(
        self,
        headings: tuple[str, ...],
        rows: list[tuple[tuple[str, ...], bool]],
        widths: tuple[float, ...],
    ) -> None:
        """A table that wraps long cells and repeats its headings on each page; each row
        is its cells and whether it is bold; the last column is right-aligned."""
        self.set_font(FONT, size=7)
        align = tuple("RIGHT" if i == len(widths) - 1 else "LEFT" for i in range(len(widths)))
        bold = FontFace(emphasis="BOLD")
        with self.table(
            col_widths=widths,
            text_align=align,
            line_height=4,
            borders_layout="HORIZONTAL_LINES",
            headings_style=bold,
        ) as table:
            table.row([latin1(text) for text in headings])
            for cells, strong in rows:
                row = table.row()
                for text in cells:
                    row.cell(latin1(text), style=bold if strong else None)

    def amount_row(self, label: str, amount: str, style: str = "") -> None:
        self.set_font(FONT, style=style, size=10)
        self.cell(130, 6, latin1(label), border="B")
        self.cell(50, 6, latin1(amount), border="B", align="R", new_x=XPos.LMARGIN, new_y=YPos.NEXT)


def render_pdf(
    invoice: billing_pb2.Invoice,
    *,
    locale: str = DEFAULT_LOCALE,
    time_zone: str = DEFAULT_TIME_ZONE,
) -> bytes:
    """The bill as a PDF document's bytes."""
    view = invoice_view(invoice, locale=locale, time_zone=time_zone)
    pdf = _Bill(view)
    pdf.add_page()
    pdf.line_of(f"Invoice {view.number}", size=18, style="B")
    pdf.ln(2)
    pdf.line_of(f"{view.account_name} (account {view.account_id})")
    pdf.line_of(f"Period: {view.period_start} to {view.period_end} ({view.time_zone})")
    pdf.line_of(f"Issued: {view.issued} - Currency: {view.currency}")
    pdf.ln(4)
    pdf.line_of("Summary", size=13, style="B")
    pdf.amount_row("Opening balance", view.opening_balance)
    pdf.amount_row("Fundings and vouchers", view.funded)
    pdf.amount_row("Adjustments", view.adjusted)
    pdf.amount_row("Refunds", view.refunded)
    pdf.amount_row("Charges", view.total)
    pdf.amount_row("Closing balance", view.closing_balance, style="B")
    pdf.ln(4)
    pdf.line_of("Charges", size=13, style="B")
    if view.charges:
        rows: list[tuple[tuple[str, ...], bool]] = []
        for charge in view.charges:
            rows.append(((charge.title, "", "", "", charge.units, charge.amount), True))
            rows.extend(
                (
                    (
                        session.session_id,
                        session.start,
                        session.endpoint,
                        session.duration,
                        session.units,
                        session.amount,
                    ),
                    False,
                )
                for session in charge.sessions
            )
        pdf.table_of(
            ("Service / session", "Start", "Endpoint", "Duration", "Units", "Amount"),
            rows,
            _COLUMNS,
        )
    pdf.amount_row("Total charges", view.total, style="B")
    pdf.ln(4)
    pdf.line_of("Fundings, adjustments and refunds", size=13, style="B")
    if view.movements:
        pdf.table_of(
            ("Date", "Kind", "Description", "Amount"),
            [((m.date, m.kind, m.description, m.amount), False) for m in view.movements],
            (40.0, 24.0, 88.0, 28.0),
        )
    else:
        pdf.line_of("None in this period.")
    pdf.ln(4)
    pdf.line_of(f"Invoice id {view.invoice_id}. Issued bills never change.", size=8)
    return bytes(pdf.output())
