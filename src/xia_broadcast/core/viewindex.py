"""The views of one class, indexed by one condition of each, so that the cost of a change grows with the
views it can match, not with all views.

A view is filed under one condition of its scope on a top-level field (the first of these kinds it has):

* ``==`` with a string, number or boolean ``v``: it can only hold a document whose field equals ``v`` (or,
  for a list field, has an element equal to ``v``); filed under ``(field, v)``;
* ``in`` with a list of strings, numbers and booleans: filed under each of them (a list holding ``None``,
  or a value of another kind, is not indexed: a missing field can match it);
* ``>``, ``>=``, ``<``, ``<=`` with a number or a string ``t``: kept in a list sorted by ``t`` per field,
  kind and direction, so a document's value finds the views it passes with a binary search (NaN is never
  indexed: it matches nothing and has no place in an order).

The others are *free*: every change is tested against them. Values follow the scope's rules: values of
different kinds never match (``1`` and ``True``, ``"1"`` and ``1`` are apart), ``1`` and ``1.0`` are the
same number; a list field matches when one of its elements does.

The index returns a superset of the views whose scope holds (the view's other conditions are still
tested), each view once; for a view whose scope is its indexed condition alone, exactly those that hold
(``tests/test_viewindex.py`` checks both against a linear scan).

Memory: one dict entry per view, plus one dict per indexed field and value, plus two list slots per view
filed under an ordering condition.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

from .scope import kind

V = TypeVar("V")
_INDEXABLE = frozenset({"str", "num", "bool"})
_ORDERED = frozenset({"str", "num"})
#: ordering operators: (direction, strict); "up" views hold values above their bound, "down" below
_ORDERING = {">": ("up", True), ">=": ("up", False), "<": ("down", True), "<=": ("down", False)}

#: what a view is filed under: ("eq", field, (kind, value)), ("in", field, ((kind, value), ...)) or
#: ("range", field, (kind, direction), (bound, strict))
IndexKey = tuple[str, str, Any] | tuple[str, str, Any, Any]


def _number_ok(value: Any) -> bool:
    return not (isinstance(value, float) and math.isnan(value))


def index_key(data_scope: list[dict[str, Any]]) -> IndexKey | None:
    """What a view with this (validated) scope is filed under, or None (free): its first equality on a
    top-level field, else its first indexable ``in``, else its first ordering condition."""
    best: IndexKey | None = None
    rank = 3
    for cond in data_scope:
        fn, op, val = cond["fn"], cond["op"], cond["val"]
        if "." in fn:
            continue
        if op == "==":
            k = kind(val)
            if k in _INDEXABLE and _number_ok(val):
                return "eq", fn, (k, val)
        elif op == "in" and rank > 1 and isinstance(val, list) and val:
            keys = tuple((kind(v), v) for v in val)
            if all(k in _INDEXABLE and _number_ok(v) for k, v in keys):
                best, rank = ("in", fn, keys), 1
        elif op in _ORDERING and rank > 2:
            k = kind(val)
            if k in _ORDERED and _number_ok(val):
                direction, strict = _ORDERING[op]
                best, rank = ("range", fn, (k, direction), (val, strict)), 2
    return best


def _value_keys(value: Any) -> Iterator[tuple[str, Any]]:
    """The (kind, value) pairs a field's value offers to the index: the value, or a list's elements."""
    if isinstance(value, list):
        for el in value:
            k = kind(el)
            if k in _INDEXABLE:
                yield k, el
        return
    k = kind(value)
    if k in _INDEXABLE:
        yield k, value


class _Sorted(Generic[V]):
    """Views of one (field, kind, direction), sorted by their bound; ``keys[i]`` is filed at ``bounds[i]``."""

    __slots__ = ("bounds", "direction", "keys", "strict", "views")

    def __init__(self, direction: str) -> None:
        self.direction = direction
        self.bounds: list[Any] = []
        self.keys: list[Any] = []
        self.views: list[V] = []
        self.strict: list[bool] = []

    def add(self, key: Any, view: V, bound: Any, strict: bool) -> None:
        i = bisect_right(self.bounds, bound)
        self.bounds.insert(i, bound)
        self.keys.insert(i, key)
        self.views.insert(i, view)
        self.strict.insert(i, strict)

    def remove(self, key: Any, bound: Any) -> None:
        for i in range(bisect_left(self.bounds, bound), bisect_right(self.bounds, bound)):
            if self.keys[i] == key:
                del self.bounds[i], self.keys[i], self.views[i], self.strict[i]
                return

    def matching(self, value: Any) -> tuple[list[Any], list[V]]:
        """The keys and views ``value`` passes: above (or at, not strict) their bound, or below it."""
        bounds = self.bounds
        lo, hi = bisect_left(bounds, value), bisect_right(bounds, value)
        if self.direction == "up":  # bound < value
            keys, views = self.keys[:lo], self.views[:lo]
        else:  # bound > value
            keys, views = self.keys[hi:], self.views[hi:]
        for i in range(lo, hi):  # bound == value: where not strict
            if not self.strict[i]:
                keys.append(self.keys[i])
                views.append(self.views[i])
        return keys, views


class ViewIndex(Generic[V]):
    """Views by key, and the candidates a document can match. Insertion order is kept."""

    __slots__ = ("_by_field", "_filed", "_free", "_ranges", "views")

    def __init__(self) -> None:
        #: every view, by its key
        self.views: dict[Any, V] = {}
        self._free: dict[Any, V] = {}
        #: field -> (kind, value) -> views filed there (by ``==``, or by one value of an ``in``)
        self._by_field: dict[str, dict[tuple[str, Any], dict[Any, V]]] = {}
        #: field -> (kind, direction) -> views filed by an ordering condition
        self._ranges: dict[str, dict[tuple[str, str], _Sorted[V]]] = {}
        self._filed: dict[Any, IndexKey] = {}

    def __len__(self) -> int:
        return len(self.views)

    def get(self, key: Any) -> V | None:
        return self.views.get(key)

    def values(self) -> list[V]:
        return list(self.views.values())

    def add(self, key: Any, view: V, filed: IndexKey | None) -> None:
        self.views[key] = view
        if filed is None:
            self._free[key] = view
            return
        self._filed[key] = filed
        how, field = filed[0], filed[1]
        if how == "eq":
            self._by_field.setdefault(field, {}).setdefault(filed[2], {})[key] = view
        elif how == "in":
            by_value = self._by_field.setdefault(field, {})
            for vk in filed[2]:
                by_value.setdefault(vk, {})[key] = view
        else:
            (k, direction), (bound, strict) = filed[2], filed[3]  # type: ignore[misc]
            by_kind = self._ranges.setdefault(field, {})
            ordered = by_kind.get((k, direction))
            if ordered is None:
                ordered = by_kind[(k, direction)] = _Sorted(direction)
            ordered.add(key, view, bound, strict)

    def remove(self, key: Any) -> None:
        if self.views.pop(key, None) is None:
            return
        if self._free.pop(key, None) is not None:
            return
        filed = self._filed.pop(key)
        how, field = filed[0], filed[1]
        if how in ("eq", "in"):
            by_value = self._by_field[field]
            for vk in (filed[2],) if how == "eq" else filed[2]:
                bucket = by_value.get(vk)
                if bucket is None:
                    continue  # an ``in`` list naming one value twice
                bucket.pop(key, None)
                if not bucket:
                    del by_value[vk]
            if not by_value:
                del self._by_field[field]
            return
        (k, direction), (bound, _strict) = filed[2], filed[3]  # type: ignore[misc]
        by_kind = self._ranges[field]
        ordered = by_kind[(k, direction)]
        ordered.remove(key, bound)
        if not ordered.keys:
            del by_kind[(k, direction)]
            if not by_kind:
                del self._ranges[field]

    def candidates(self, data: Mapping[str, Any], prev: Mapping[str, Any] | None = None) -> list[V]:
        """Every view that may hold ``data`` or ``prev`` (a superset of those whose scope holds), each once."""
        free = list(self._free.values())
        if not self._by_field and not self._ranges:
            return free
        # what each lookup found; a view is filed in one place (an ``in`` view in one per value), so lookups
        # overlap only when a document offers several values to the buckets (a list field, or the previous
        # state too)
        found: list[tuple[Any, Any]] = []  # (keys, views) of each lookup that found any
        buckets: set[int] = set()  # those found already (the document and its previous state share many)
        for doc in (data, prev):
            if doc is None:
                continue
            for field, by_value in self._by_field.items():
                for vk in _value_keys(doc.get(field)):
                    bucket = by_value.get(vk)
                    if bucket is not None and id(bucket) not in buckets:
                        buckets.add(id(bucket))
                        found.append((bucket.keys(), bucket.values()))
        for field, by_kind in self._ranges.items():
            # every value of the field (in the document, its previous state, a list's elements), by kind: a
            # view above its bound for one value is for the largest, below it for one is for the smallest,
            # so one lookup per kind and direction finds them all, each once
            values: dict[str, list[Any]] = {}
            for doc in (data, prev):
                if doc is not None:
                    for k, value in _value_keys(doc.get(field)):
                        if k in _ORDERED and _number_ok(value):
                            values.setdefault(k, []).append(value)
            for k, seen in values.items():
                for direction, pick in (("up", max), ("down", min)):
                    ordered = by_kind.get((k, direction))
                    if ordered is not None:
                        keys, views = ordered.matching(pick(seen))
                        if keys:
                            found.append((keys, views))
        if len(found) == 1:
            free.extend(found[0][1])  # no view twice: one lookup, and free views are filed nowhere
            return free
        out = dict(self._free)  # insertion-ordered, and each view once whatever led to it
        for keys, views in found:
            out.update(zip(keys, views, strict=True))
        return list(out.values())
