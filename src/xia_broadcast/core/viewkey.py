"""Canonical view keys: subscribers whose (scope, catalog, show_hidden, ACL) are equal share one view.

Keys are canonical so that equal requests written differently (condition order, key order) meet: the
conditions of a scope are an AND, so their order does not matter, and neither does the key order of a
catalog or the item order of an ACL.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from .acl import Acl
from .encoding import dumps

ViewKey = tuple[bytes, bytes, bool, tuple[tuple[str, str], ...] | None, Any]


def _canon(value: Any) -> bytes:
    return dumps(value, option=orjson.OPT_SORT_KEYS)


def _nulls(value: Any, out: list[str]) -> None:
    """What each ``null`` of ``value``'s canonical JSON stands for, in its order: ``n`` None, ``N`` NaN, ``I``
    infinity, ``i`` minus infinity (JSON writes the three of them as ``null``)."""
    if value is None:
        out.append("n")
    elif isinstance(value, float) and not math.isfinite(value):
        out.append("N" if value != value else "I" if value > 0 else "i")
    elif isinstance(value, Mapping):
        for k in sorted(value):
            _nulls(value[k], out)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _nulls(v, out)


def _canon_condition(condition: Mapping[str, Any]) -> bytes:
    """A scope condition's canonical JSON; when it holds NaN or an infinity, followed by what each of its
    ``null`` stands for (outside the JSON, so that no other condition writes the same bytes): ``v == NaN``
    (which holds for nothing), ``v == None`` and ``v < inf`` must not share a view."""
    canonical = _canon(condition)
    nulls: list[str] = []
    _nulls(condition, nulls)
    if any(n != "n" for n in nulls):
        canonical += b"#" + "".join(nulls).encode()
    return canonical


def raw_acl_key(raw: Any) -> Any:
    """What tells ACL objects apart beyond their (obj, act) items: documents and broadcasters that check
    ACLs themselves receive the raw object, which may carry more (conditions, extra attributes)."""
    if raw is None or isinstance(raw, Acl):
        return None
    display: Any = raw
    if not isinstance(raw, Mapping):
        get_display = getattr(raw, "get_display_data", None)
        if not callable(get_display):
            return ("object", id(raw))
        display = get_display()
    if _only_items(display):
        return None  # all it says is in the Acl's (obj, act) key
    return _canon_any(display)


def _only_items(display: Any) -> bool:
    if not isinstance(display, Mapping) or set(display) - {"content"}:
        return False
    content = display.get("content") or []
    return isinstance(content, (list, tuple)) and all(
        isinstance(i, Mapping) and not set(i) - {"obj", "act"} for i in content)


def _canon_any(value: Any) -> bytes:
    return dumps(value, option=orjson.OPT_SORT_KEYS, default=repr)


def view_key(
    scope: Sequence[Mapping[str, Any]], catalog: Mapping[str, Any], show_hidden: bool, acl: Acl | None,
    raw_acl: Any = None,
) -> ViewKey:
    """The key of the view a subscription belongs to (inputs already validated); ``raw_acl`` is the ACL
    as the subscriber gave it."""
    conditions = sorted(_canon_condition(c) for c in scope)
    return (b"[" + b",".join(conditions) + b"]", _canon(catalog), bool(show_hidden),
            None if acl is None else acl.key, raw_acl_key(raw_acl))
