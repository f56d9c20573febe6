"""The ledger's audit (`meterline ledger verify`): every invariant of the account database
checked from the entries up, in a few set-based queries on one snapshot, and, given the
service database, each settled session's captures against its service record's charge.

What is checked, per account (all, or the ones named):
- every transaction's entries sum to zero;
- the running balances are the sums of the entries (`ledger_running_balance_drift`),
  so balance = sum of the customer's entries and available = balance - held;
- held = the sum of the open holds;
- available is not below minus the credit limit (zero for a prepaid account);
- no hold is captured twice, captured or released beyond its amount, or has
  transactions its status denies; a captured hold's CAPTURE is its captured amount;
- no hold is refunded beyond what it captured;
- a redeemed voucher funded once, its own amount, on the account it names;
- (service database) each settled session's holds captured its record's charge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg

from meterline.kernel.db import libpq_dsn

_SCOPE = "(%(accounts)s::text[] IS NULL OR {column} = ANY(%(accounts)s::text[]))"

_CHECKS: tuple[tuple[str, str], ...] = (
    (
        "transaction {0} of account {1}: its entries sum to {2}, not 0",
        "SELECT transaction_id, account_id, sum(amount_micros) FROM ledger_entries "
        f"WHERE {_SCOPE.format(column='account_id')} "
        "GROUP BY transaction_id, account_id HAVING sum(amount_micros) <> 0",
    ),
    (
        "account {0}: running available {1} but its entries sum to {2}; running held {3} "
        "but its entries sum to {4}",
        "SELECT account_id, available_micros, entries_available_micros, held_micros, "
        "entries_held_micros FROM ledger_running_balance_drift() "
        f"WHERE {_SCOPE.format(column='account_id')}",
    ),
    (
        "account {0}: held {1} but its open holds add up to {2}",
        "SELECT a.account_id, a.held_micros, coalesce(sum(h.amount_micros), 0) FROM accounts a "
        "LEFT JOIN holds h ON h.account_id = a.account_id AND h.status = 'OPEN' "
        f"WHERE {_SCOPE.format(column='a.account_id')} "
        "GROUP BY a.account_id, a.held_micros "
        "HAVING a.held_micros <> coalesce(sum(h.amount_micros), 0)",
    ),
    (
        "account {0}: available {1} is below minus its credit limit {2}",
        "SELECT account_id, available_micros, credit_limit_micros FROM accounts "
        f"WHERE {_SCOPE.format(column='account_id')} "
        "AND available_micros < -credit_limit_micros",
    ),
    (
        "hold {0} of account {1}: {2} captured and {3} released of {4}",
        "SELECT hold_id, account_id, captured_micros, released_micros, amount_micros FROM holds "
        f"WHERE {_SCOPE.format(column='account_id')} "
        "AND captured_micros + released_micros > amount_micros",
    ),
    (
        "hold {0} of account {1}: status {2} but {3} CAPTURE and {4} RELEASE transactions "
        "capturing {5} (the hold says {6})",
        "SELECT h.hold_id, h.account_id, h.status, "
        "count(*) FILTER (WHERE t.kind = 'CAPTURE'), count(*) FILTER (WHERE t.kind = 'RELEASE'), "
        "coalesce(sum(t.amount_micros) FILTER (WHERE t.kind = 'CAPTURE'), 0), h.captured_micros "
        "FROM holds h LEFT JOIN ledger_transactions t ON t.hold_id = h.hold_id "
        "AND t.account_id = h.account_id AND t.kind IN ('CAPTURE', 'RELEASE') "
        f"WHERE {_SCOPE.format(column='h.account_id')} "
        "GROUP BY h.hold_id, h.account_id, h.status, h.captured_micros "
        "HAVING count(t.transaction_id) <> (CASE WHEN h.status = 'OPEN' THEN 0 ELSE 1 END) "
        "OR (h.status = 'CAPTURED' AND count(*) FILTER (WHERE t.kind = 'CAPTURE') <> 1) "
        "OR coalesce(sum(t.amount_micros) FILTER (WHERE t.kind = 'CAPTURE'), 0) "
        "<> h.captured_micros",
    ),
    (
        "hold {0} of account {1}: refunded {2} of a capture of {3}",
        "SELECT h.hold_id, h.account_id, sum(t.amount_micros), h.captured_micros FROM holds h "
        "JOIN ledger_transactions t ON t.hold_id = h.hold_id AND t.account_id = h.account_id "
        f"AND t.kind = 'REFUND' WHERE {_SCOPE.format(column='h.account_id')} "
        "GROUP BY h.hold_id, h.account_id, h.captured_micros "
        "HAVING sum(t.amount_micros) > h.captured_micros",
    ),
    (
        "voucher of batch {0}: redeemed on account {1} by transaction {2}, which funded {3} "
        "on account {4} (the voucher is worth {5})",
        "SELECT v.batch_id, v.account_id, v.transaction_id, t.amount_micros, t.account_id, "
        "v.amount_micros FROM vouchers v LEFT JOIN ledger_transactions t "
        "ON t.transaction_id = v.transaction_id WHERE v.redeemed_at IS NOT NULL "
        f"AND {_SCOPE.format(column='v.account_id')} "
        "AND (t.transaction_id IS NULL OR t.kind <> 'FUND' OR t.amount_micros <> v.amount_micros "
        "OR t.account_id <> v.account_id "
        "OR t.idempotency_key <> 'voucher:' || v.code_hash)",
    ),
)

_COUNTS = (
    "SELECT (SELECT count(*) FROM accounts WHERE {a}), "
    "(SELECT count(*) FROM ledger_transactions WHERE {t}), "
    "(SELECT count(*) FROM holds WHERE {t})"
).format(a=_SCOPE.format(column="account_id"), t=_SCOPE.format(column="account_id"))

_SETTLED = (
    "SELECT r.session_id, r.account_id, r.charged_micros, "
    "coalesce(array_agg(h.hold_id) FILTER (WHERE h.hold_id IS NOT NULL), '{{}}') "
    "FROM service_records r LEFT JOIN session_holds h ON h.session_id = r.session_id "
    f"WHERE {_SCOPE.format(column='r.account_id')} "
    "GROUP BY r.session_id, r.account_id, r.charged_micros"
).replace("{{}}", "{}")

_CAPTURED = "SELECT hold_id, captured_micros FROM holds WHERE hold_id = ANY(%(holds)s::text[])"


@dataclass
class Audit:
    """What `verify` checked, and every mismatch it found (one sentence each)."""

    accounts: int = 0
    transactions: int = 0
    holds: int = 0
    sessions: int | None = None
    """Settled sessions checked against their records; None: no service database."""
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    def summary(self) -> str:
        sessions = "" if self.sessions is None else f", {self.sessions} settled sessions"
        verdict = "OK" if self.ok else f"{len(self.mismatches)} mismatches"
        return (
            f"ledger verify: {self.accounts} accounts, {self.transactions} transactions, "
            f"{self.holds} holds{sessions}: {verdict}"
        )


def verify(billing_url: str, service_url: str = "", accounts: Sequence[str] | None = None) -> Audit:
    """Check the account database (and the service database, given its URL); `accounts`
    limits the checks to those accounts."""
    scope: dict[str, Any] = {"accounts": list(accounts) if accounts else None}
    audit = Audit()
    with psycopg.connect(libpq_dsn(billing_url)) as conn:
        # One snapshot for every query: a ledger moving meanwhile cannot look unbalanced.
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        counts = conn.execute(_COUNTS, scope).fetchone()
        assert counts is not None
        audit.accounts, audit.transactions, audit.holds = (
            int(counts[0]),
            int(counts[1]),
            int(counts[2]),
        )
        for sentence, query in _CHECKS:
            for row in conn.execute(query, scope).fetchall():
                audit.mismatches.append(sentence.format(*row))
        if service_url:
            with psycopg.connect(libpq_dsn(service_url)) as service:
                settled = service.execute(_SETTLED, scope).fetchall()
            every_hold = [hold for row in settled for hold in row[3]]
            captured: dict[str, int] = {
                str(row[0]): int(row[1])
                for row in conn.execute(_CAPTURED, {"holds": every_hold}).fetchall()
            }
            audit.sessions = len(settled)
            for session_id, account_id, charged, holds in settled:
                total = 0
                for hold in holds:
                    total += captured.get(hold, 0)
                if total != charged:
                    audit.mismatches.append(
                        f"session {session_id} of account {account_id}: its holds captured "
                        f"{total} but its service record charged {charged}"
                    )
        conn.rollback()
    return audit
