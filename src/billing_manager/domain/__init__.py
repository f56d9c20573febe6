"""Ledger and credential rules, with no I/O."""
