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
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
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
    # The registry (migration 0006): ENABLED, DRAINING or DISABLED (was `enabled`).
    Column("state", String(16), nullable=False, server_default="ENABLED"),
    Column("region", String(64), nullable=False, server_default=""),
    # The most active sessions at once; 0 for no limit.
    Column("capacity", Integer, nullable=False, server_default="0"),
    # True: never checked for liveness (counts as alive while enabled); the gateways of
    # before 0006, the seeded `local` among them, are so.
    Column("skip_liveness_check", Boolean, nullable=False, server_default=text("false")),
    Column("last_seen_at", DateTime(timezone=True), nullable=True),
    Column("registered_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The cursor of the gateway's newest notice; taken under this row's lock, so cursors
    # commit in order.
    Column("last_notice_cursor", BigInteger, nullable=False, server_default="0"),
)

# Subscriber identities (migration 0006): one account per identity.
account_identities = Table(
    "account_identities",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("value", String(256), primary_key=True),
    Column("account_id", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("account_identities_account_idx", "account_id"),
)

# Each gateway's durable notice stream (migration 0006): rows are never changed, and
# deleted once older than the retention.
gateway_notices = Table(
    "gateway_notices",
    metadata,
    Column(
        "gateway_id",
        String(100),
        ForeignKey("gateways.gateway_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("cursor", BigInteger, primary_key=True),
    Column("kind", String(24), nullable=False),
    Column("session_id", String(64), nullable=False),
    Column("account_id", String(64), nullable=False),
    Column("reason", String(32), nullable=True),
    Column("message", Text, nullable=False),
    Column("balance_micros", BigInteger, nullable=False, server_default="0"),
    Column("seconds_left", BigInteger, nullable=True),
    Column("granted_units", BigInteger, nullable=False, server_default="0"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("gateway_notices_created_idx", "created_at"),
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
    # Usage never silently dropped (migration 0006).
    Column("unbilled_units", BigInteger, nullable=False, server_default="0"),
    Column("unbilled_reason", Text, nullable=False, server_default=""),
    Column("usage_discrepancy", BigInteger, nullable=False, server_default="0"),
    Column("client_used_units", BigInteger, nullable=False, server_default="0"),
    Column("gateway_used_units", BigInteger, nullable=False, server_default="0"),
    # A hold someone else closed before settlement (migration 0007): the usage's charge
    # less what was captured (charged_micros), and why.
    Column("settlement_difference_micros", BigInteger, nullable=False, server_default="0"),
    Column("settlement_note", Text, nullable=False, server_default=""),
    Index("service_records_account_idx", "account_id", "ended_at"),
)

# Client components (migration 0005): one row per published version, its bytes in chunks
# of `chunk_bytes` (chunk n starts at byte n * chunk_bytes). Rows are never changed.
components = Table(
    "components",
    metadata,
    Column("component_id", String(32), primary_key=True),
    Column("name", String(100), nullable=False),
    Column("platform", String(100), nullable=False),
    Column("version", String(64), nullable=False),
    # The version's normal form (1.2.0 and 1.2 are both 1.2): one per name and platform.
    Column("version_normal", String(64), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("signature", Text, nullable=False),
    Column("public_key", Text, nullable=False),
    Column("signing_key_id", String(16), nullable=False),
    Column("chunk_bytes", Integer, nullable=False),
    Column("published_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("published_by", String(200), nullable=False, server_default=""),
    UniqueConstraint("name", "platform", "version_normal", name="components_version_key"),
)

component_chunks = Table(
    "component_chunks",
    metadata,
    Column(
        "component_id",
        String(32),
        ForeignKey("components.component_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("chunk_index", Integer, primary_key=True),
    Column("data", LargeBinary, nullable=False),
)
