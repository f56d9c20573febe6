"""The rating database's tables."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    MetaData,
    String,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()
VERSION_TABLE = "alembic_version_rating"
CHANGES_CHANNEL = "meterline_rating_changes"
"""PostgreSQL NOTIFY channel: every write tells every rating instance to reload."""

rate_plans = Table(
    "rate_plans",
    metadata,
    Column("plan_id", String(64), primary_key=True),
    Column("display_name", String(200), nullable=False),
    Column("time_zone", String(64), nullable=False, server_default="UTC"),
    Column("default_band", String(32), nullable=False, server_default="STANDARD"),
    Column("time_bands", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("is_default", Boolean, nullable=False, server_default=text("false")),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

tariffs = Table(
    "tariffs",
    metadata,
    Column("tariff_id", String(64), primary_key=True),
    Column("service_type", String(32), nullable=False),
    Column("prefix", String(64), nullable=False),
    Column("unit", String(16), nullable=False),
    Column("price_per_unit_micros", BigInteger, nullable=False),
    Column("increment_units", BigInteger, nullable=False),
    Column("minimum_units", BigInteger, nullable=False),
    Column("setup_fee_micros", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("description", Text, nullable=False, server_default=""),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column(
        "plan_id",
        String(64),
        ForeignKey("rate_plans.plan_id"),
        nullable=False,
        server_default="default",
    ),
    # NULL: the first version of its key, in force from the beginning of time.
    Column("effective_from", DateTime(timezone=True), nullable=True),
    Column("effective_to", DateTime(timezone=True), nullable=True),
    Column("first_increment_units", BigInteger, nullable=False, server_default="0"),
    Column("unit_size", BigInteger, nullable=False, server_default="1"),
    Column("band_prices", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    Column("tiers", JSONB, nullable=False, server_default=text("'[]'::jsonb")),
    CheckConstraint("price_per_unit_micros >= 0", name="tariffs_price_non_negative"),
    CheckConstraint("increment_units >= 1", name="tariffs_increment_positive"),
    CheckConstraint("minimum_units >= 0", name="tariffs_minimum_non_negative"),
    CheckConstraint("setup_fee_micros >= 0", name="tariffs_setup_fee_non_negative"),
    CheckConstraint("unit_size >= 1", name="tariffs_unit_size_positive"),
)

account_plans = Table(
    "account_plans",
    metadata,
    Column("account_id", String(64), primary_key=True),
    Column("plan_id", String(64), ForeignKey("rate_plans.plan_id"), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
