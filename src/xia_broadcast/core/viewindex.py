"""The views of one class, indexed by an equality condition of each, so that the cost of a change grows
with the views it can match, not with all views.

A view whose scope holds ``{"fn": f, "op": "==", "val": v}`` on a top-level field, with ``v`` a string, a
number or a boolean, can only hold a document whose ``f`` equals ``v`` (or, for a list field, has an element
equal to ``v``). Such a view is filed under ``(f, v)``; the others are *free* and every change is tested
against them. Equality follows the scope's rules: values of different kinds never match (``1`` and ``True``,
``"1"`` and ``1`` are apart), ``1`` and ``1.0`` are the same number.

Memory: one dict entry per view, plus one dict per indexed field and value.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

from .scope import kind

V = TypeVar("V")
_INDEXABLE = frozenset({"str", "num", "bool"})


def equality_key(data_scope: list[dict[str, Any]]) -> tuple[str, tuple[str, Any]] | None:
    """The ``(field, value key)`` a view with this (validated) scope is filed under, or None (free)."""
    for cond in data_scope:
        if cond["op"] != "==" or "." in cond["fn"]:
            continue
        k = kind(cond["val"])
        if k in _INDEXABLE:
            return cond["fn"], (k, cond["val"])
    return None


def _value_keys(value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, list):
        for el in value:
            k = kind(el)
            if k in _INDEXABLE:
                yield k, el
        return
    k = kind(value)
    if k in _INDEXABLE:
        yield k, value


class ViewIndex(Generic[V]):
    """Views by key, and the candidates a document can match. Insertion order is kept."""

    __slots__ = ("_by_field", "_filed", "_free", "views")

    def __init__(self) -> None:
        #: every view, by its key
        self.views: dict[Any, V] = {}
        self._free: dict[Any, V] = {}
        self._by_field: dict[str, dict[tuple[str, Any], dict[Any, V]]] = {}
        self._filed: dict[Any, tuple[str, tuple[str, Any]]] = {}

    def __len__(self) -> int:
        return len(self.views)

    def get(self, key: Any) -> V | None:
        return self.views.get(key)

    def values(self) -> list[V]:
        return list(self.views.values())

    def add(self, key: Any, view: V, eq: tuple[str, tuple[str, Any]] | None) -> None:
        self.views[key] = view
        if eq is None:
            self._free[key] = view
            return
        field, value = eq
        self._by_field.setdefault(field, {}).setdefault(value, {})[key] = view
        self._filed[key] = eq

    def remove(self, key: Any) -> None:
        if self.views.pop(key, None) is None:
            return
        if self._free.pop(key, None) is not None:
            return
        field, value = self._filed.pop(key)
        by_value = self._by_field[field]
        bucket = by_value[value]
        del bucket[key]
        if not bucket:
            del by_value[value]
            if not by_value:
                del self._by_field[field]

    def candidates(self, data: Mapping[str, Any], prev: Mapping[str, Any] | None = None) -> list[V]:
        """Every view that may hold ``data`` or ``prev`` (a superset of those whose scope holds)."""
        out = list(self._free.values())
        if not self._by_field:
            return out
        # a view is filed in exactly one bucket: visiting each bucket once lists each view once
        visited: set[int] = set()
        for doc in (data, prev):
            if doc is None:
                continue
            for field, by_value in self._by_field.items():
                for vk in _value_keys(doc.get(field)):
                    bucket = by_value.get(vk)
                    if bucket is not None and id(bucket) not in visited:
                        visited.add(id(bucket))
                        out.extend(bucket.values())
        return out
