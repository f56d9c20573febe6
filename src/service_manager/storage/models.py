"""The service database's tables."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()
VERSION_TABLE = "alembic_version_service"

gateways = Table(
    "gateways",
    metadata,
    Column("gateway_id", String(100), primary_key=True),
    Column("address", String(255), nullable=False),
    # Comma-separated ServiceType names this gateway carries; '*' for all.
    Column("service_types", Text, nullable=False, server_default="*"),
    Column("enabled", Boolean, nullable=False, server_default=text("true")),
)

sessions = Table(
    "sessions",
    metadata,
    Column("session_id", String(64), primary_key=True),
    Column("account_id", String(64), nullable=False),
    Column("service_type", String(32), nullable=False),
    Column("endpoint", String(256), nullable=False),
    Column("application_id", String(256), nullable=False, server_default=""),
    Column("gateway_id", String(100), ForeignKey("gateways.gateway_id"), nullable=False),
    Column("rate", JSONB, nullable=False),
    Column("status", String(16), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_update_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_sequence", BigInteger, nullable=False, server_default="0"),
    # The session's usage: the larger of the device's and the gateway's counters.
    Column("used_units", BigInteger, nullable=False, server_default="0"),
    Column("client_used_units", BigInteger, nullable=False, server_default="0"),
    Column("gateway_used_units", BigInteger, nullable=False, server_default="0"),
    Column("granted_units", BigInteger, nullable=False, server_default="0"),
    Column("held_micros", BigInteger, nullable=False, server_default="0"),
    # The first hold's amount while it is being reserved; 0 once recorded (migration 0002).
    Column("pending_hold_micros", BigInteger, nullable=False, server_default="0"),
    Column("termination_reason", String(32), nullable=True),
    Column("request_id", String(200), nullable=True, unique=True),
    # Ownership and fencing (migration 0004): the instance holding the stream, and the
    # epoch every one of its writes must carry.
    Column("owner_id", String(64), nullable=False, server_default=""),
    Column("owner_epoch", BigInteger, nullable=False, server_default="1"),
    Column("hold_count", Integer, nullable=False, server_default="0"),
    Column("pending_hold_number", Integer, nullable=False, server_default="0"),
    Column("pending_granted_units", BigInteger, nullable=False, server_default="0"),
    Index("sessions_active_idx", "status", "last_update_at"),
)

session_holds = Table(
    "session_holds",
    metadata,
    Column("session_id", String(64), ForeignKey("sessions.session_id"), primary_key=True),
    Column("hold_number", Integer, primary_key=True),
    Column("hold_id", String(64), nullable=False),
    Column("amount_micros", BigInteger, nullable=False),
    Column("granted_units_after", BigInteger, nullable=False),
)

service_records = Table(
    "service_records",
    metadata,
    Column("session_id", String(64), ForeignKey("sessions.session_id"), primary_key=True),
    Column("account_id", String(64), nullable=False),
    Column("service_type", String(32), nullable=False),
    Column("endpoint", String(256), nullable=False),
    Column("application_id", String(256), nullable=False),
    Column("gateway_id", String(100), nullable=False),
    Column("rate", JSONB, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("ended_at", DateTime(timezone=True), nullable=False),
    Column("used_units", BigInteger, nullable=False),
    Column("billed_units", BigInteger, nullable=False),
    Column("charged_micros", BigInteger, nullable=False),
    Column("termination_reason", String(32), nullable=False),
    Index("service_records_account_idx", "account_id", "ended_at"),
)
