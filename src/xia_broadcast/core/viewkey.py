"""Canonical view keys: subscribers whose (scope, catalog, show_hidden, ACL) are equal share one view.

Keys are canonical so that equal requests written differently (condition order, key order) meet: the
conditions of a scope are an AND, so their order does not matter, and neither does the key order of a
catalog or the item order of an ACL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from .acl import Acl

ViewKey = tuple[bytes, bytes, bool, tuple[tuple[str, str], ...] | None]


def _canon(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def view_key(
    scope: list[Mapping[str, Any]], catalog: Mapping[str, Any], show_hidden: bool, acl: Acl | None
) -> ViewKey:
    """The key of the view a subscription belongs to (inputs already validated)."""
    conditions = sorted(_canon(c) for c in scope)
    return (b"[" + b",".join(conditions) + b"]", _canon(catalog), bool(show_hidden), None if acl is None else acl.key)
