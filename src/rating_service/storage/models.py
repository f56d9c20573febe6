"""The rating database's tables."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)

metadata = MetaData()

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
    UniqueConstraint("service_type", "prefix", name="tariffs_service_type_prefix_key"),
    CheckConstraint("price_per_unit_micros >= 0", name="tariffs_price_non_negative"),
    CheckConstraint("increment_units >= 1", name="tariffs_increment_positive"),
    CheckConstraint("minimum_units >= 0", name="tariffs_minimum_non_negative"),
    CheckConstraint("setup_fee_micros >= 0", name="tariffs_setup_fee_non_negative"),
)

VERSION_TABLE = "alembic_version_rating"
