"""JSON encoding to bytes that are only as large as they look.

``orjson.dumps`` returns a ``bytes`` object that keeps the buffer it wrote into (4 KiB at least) however
short the JSON: a 200-byte message that is kept (a view key, a queued or cached message) would hold 4 KiB.
:func:`dumps` copies the result to its exact size: about 60 ns for 200 bytes, against 4 KiB per kept object.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson

_EMPTY = b""


def dumps(value: Any, *, option: int | None = None, default: Callable[[Any], Any] | None = None) -> bytes:
    """``orjson.dumps(value, default=default, option=option)``, in a ``bytes`` object of its own length."""
    # joining two parts makes a new object of the exact size (joining one would return it unchanged)
    return _EMPTY.join((orjson.dumps(value, default=default, option=option), _EMPTY))
