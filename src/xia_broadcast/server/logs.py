"""Logs on stderr: one JSON object per line (``log_format = "json"``), or a line of text with the same fields
(``"text"``); ``"auto"`` (the default) writes text to a terminal and JSON anywhere else."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Formats a record as ``{"ts", "level", "logger", "msg", ...extra fields}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in record.__dict__.items():
            if k not in _STANDARD and not k.startswith("_"):
                entry[k] = v
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


class TextFormatter(logging.Formatter):
    """``HH:MM:SS level logger: message key=value ...`` (the extra fields of a structured record)."""

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in record.__dict__.items()
                         if k not in _STANDARD and not k.startswith("_"))
        line = (f"{time.strftime('%H:%M:%S', time.localtime(record.created))} {record.levelname.lower():7} "
                f"{record.name.removeprefix('xia_broadcast.')}: {record.getMessage()}" + (f" {extra}" if extra else ""))
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(fmt: str = "auto", level: str = "INFO") -> None:
    """Log ``xia_broadcast`` records at ``level`` and above to stderr in ``fmt`` (see the module docstring)."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("xia_broadcast")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
