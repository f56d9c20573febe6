"""Process-wide logging set-up. Modules log with logging.getLogger(__name__) and pass
ids (session, account) as arguments; tokens and secrets are never logged.

Two formats (`METERLINE_LOG_FORMAT`): readable text lines, or one JSON object per line
for log collectors (time, level, logger, message, and the traceback when there is one).
A record written inside a traced RPC (`kernel/tracing.py`) carries its trace and span ids:
` trace=<32 hex>` at the end of a text line, `trace_id` and `span_id` in JSON, so a log
line leads to its trace and back."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from opentelemetry import trace

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class TraceIds(logging.Filter):
    """Puts the current span's ids on each record (`trace_id`, `span_id`: hex, or "" when
    the record is written outside a span, as every record is while tracing is off)."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = trace.format_trace_id(context.trace_id)
            record.span_id = trace.format_span_id(context.span_id)
        else:
            record.trace_id = record.span_id = ""
        return True


class TextFormatter(logging.Formatter):
    """TEXT_FORMAT, with ` trace=<id>` after the message inside a span."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        trace_id = getattr(record, "trace_id", "")
        if not trace_id:
            return line
        # After the first line: a traceback's lines follow the message.
        first, newline, rest = line.partition("\n")
        return f"{first} trace={trace_id}{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        trace_id = getattr(record, "trace_id", "")
        if trace_id:
            entry["trace_id"] = trace_id
            entry["span_id"] = getattr(record, "span_id", "")
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "INFO", log_format: str = "text") -> None:
    """Log at `level` (already checked by the settings) in `log_format`."""
    handler = logging.StreamHandler()
    handler.addFilter(TraceIds())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=getattr(logging, level), handlers=[handler])
