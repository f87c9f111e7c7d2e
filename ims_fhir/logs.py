"""Log lines that a client cannot forge: escaped, length-capped, text or JSON lines.

Terms:

- *clean*: text (often from a request: a path, an id) made safe for a log line: control
  characters written as escapes (``\\n``, ``\\x00``), so one event is always one line,
  and cut to a length with a count of what was cut.
- *text* format: ``time LEVEL logger: message``, the message cleaned (:class:`SafeFormatter`).
- *json* format: one JSON object per line, ``{"time", "level", "logger", "message", ...}``
  plus the fields a caller passes with ``extra={"fields": {...}}`` (:class:`JsonFormatter`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def clean(value: object, limit: int = 300) -> str:
    """``value`` as one printable line of at most ``limit`` characters (plus a count of the rest)."""
    text = str(value)
    cut = len(text) > limit
    if cut:
        rest = len(text) - limit
        text = text[:limit]
    out = []
    for c in text:
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif not c.isprintable():
            code = ord(c)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(c)
    line = "".join(out)
    return f"{line}...(+{rest} chars)" if cut else line


class SafeFormatter(logging.Formatter):
    """The text format: every message escaped to one line and length-capped."""

    def __init__(self, fmt: str, *, limit: int = 2000) -> None:
        super().__init__(fmt)
        self.limit = limit

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        record.message = clean(record.message, self.limit)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802
        return clean(super().formatException(ei), self.limit * 4)


class JsonFormatter(logging.Formatter):
    """The JSON-lines format: ``{"time", "level", "logger", "message", ...}`` one object per line.

    Fields passed with ``extra={"fields": {...}}`` are added, each value length-capped.
    """

    def __init__(self, *, limit: int = 2000) -> None:
        super().__init__()
        self.limit = limit

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name,
            "message": clean(record.getMessage(), self.limit)}
        for key, value in (getattr(record, "fields", None) or {}).items():
            out[str(key)] = value if isinstance(value, (int, float, bool)) or value is None else clean(value)
        if record.exc_info:
            out["exception"] = clean(self.formatException(record.exc_info), self.limit * 4)
        return json.dumps(out, ensure_ascii=True)


def log_formatter(kind: str) -> logging.Formatter:
    if kind == "json":
        return JsonFormatter()
    return SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")



__all__ = ["JsonFormatter", "SafeFormatter", "clean", "log_formatter"]
