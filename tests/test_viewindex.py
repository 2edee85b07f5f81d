"""The view index: a change is tested against the views it can match, never fewer."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from xia_broadcast.core.scope import compile_scope, validate_scope
from xia_broadcast.core.viewindex import ViewIndex, index_key

VALUES = [1, 1.0, 2, -1, 2.5, True, False, "1", "a", "b", "", None, 0, float("nan"), float("inf")]
values = st.sampled_from(VALUES)


class Tags(list):  # type: ignore[type-arg]
    """A list of another class (an application's): read as a list, by the scope and by the index alike."""


field_values = values | st.lists(values, max_size=3) | st.lists(values, max_size=3).map(Tags)
ORDERING = (">", ">=", "<", "<=")
conditions = st.fixed_dictionaries({"fn": st.sampled_from(["a", "b", "c.d"]),
                                    "op": st.sampled_from(["==", "!=", "in", "not in", *ORDERING]),
                                    "val": values | st.lists(values, max_size=3)})


def valid(c: dict[str, Any]) -> bool:
    """The conditions the scope validator takes: ordering against a scalar, ``in`` a list, ``==`` anything."""
    if c["op"] in ORDERING:
        return type(c["val"]) in (int, float, str)
    if c["op"] in ("in", "not in"):
        return isinstance(c["val"], list)
    return True


scopes = st.lists(conditions.filter(valid), max_size=3)
docs = st.fixed_dictionaries({}, optional={"a": field_values, "b": field_values,
                                           "c": st.fixed_dictionaries({"d": field_values})})


def linear_scan(predicates: dict[int, Any], data: dict[str, Any], prev: dict[str, Any] | None) -> set[int]:
    return {i for i, p in predicates.items() if p(data) or (prev is not None and p(prev))}


@settings(max_examples=300, deadline=None)
@given(st.lists(scopes, min_size=1, max_size=12), docs, st.none() | docs, st.data())
def test_candidates_hold_every_view_whose_scope_holds_each_once(view_scopes: list[list[dict[str, Any]]],
                                                                data: dict[str, Any], prev: dict[str, Any] | None,
                                                                draw: st.DataObject) -> None:
    index: ViewIndex[int] = ViewIndex()
    predicates = {}
    for i, scope in enumerate(view_scopes):
        conditions = validate_scope(scope)
        index.add(i, i, index_key(conditions))
        predicates[i] = compile_scope(scope)
    removed = draw.draw(st.sets(st.sampled_from(range(len(view_scopes)))))
    for i in removed:
        index.remove(i)
    candidates = index.candidates(data, prev)
    assert len(candidates) == len(set(candidates))
    assert set(candidates) <= set(predicates) - removed
    for i, predicate in predicates.items():
        if i not in removed and (predicate(data) or (prev is not None and predicate(prev))):
            assert i in candidates, (view_scopes[i], data, prev)


@settings(max_examples=500, deadline=None)
@given(st.lists(conditions.filter(valid), min_size=1, max_size=16), docs, st.none() | docs)
def test_views_of_one_indexed_condition_are_found_exactly_as_a_linear_scan_finds_them(
        view_conditions: list[dict[str, Any]], data: dict[str, Any], prev: dict[str, Any] | None) -> None:
    """A view whose scope is one condition the index files it by (``==``, ``in``, an ordering) is a candidate
    exactly when its scope holds for the document or its previous state: the index is the scan."""
    index: ViewIndex[int] = ViewIndex()
    predicates = {}
    for i, cond in enumerate(view_conditions):
        scope = validate_scope([cond])
        filed = index_key(scope)
        if filed is None:
            continue  # free: tested by every change, nothing to compare
        index.add(i, i, filed)
        predicates[i] = compile_scope([cond])
    candidates = index.candidates(data, prev)
    assert len(candidates) == len(set(candidates))
    assert set(candidates) == linear_scan(predicates, data, prev), (view_conditions, data, prev)


def test_ordering_conditions_are_filed_and_found_by_their_bound() -> None:
    index: ViewIndex[str] = ViewIndex()
    for t in range(100):
        index.add(f">={t}", f">={t}", index_key(validate_scope([{"fn": "amount", "op": ">=", "val": t}])))
        index.add(f"<{t}", f"<{t}", index_key(validate_scope([{"fn": "amount", "op": "<", "val": t}])))
    found = index.candidates({"amount": 10})
    assert sorted(found) == sorted([f">={t}" for t in range(11)] + [f"<{t}" for t in range(11, 100)])
    assert index.candidates({"amount": "10"}) == []  # a string is not a number
    assert index.candidates({"amount": True}) == []  # nor is a boolean
    assert index.candidates({"amount": float("nan")}) == []  # NaN passes no bound
    assert len(index.candidates({"amount": [5, 50]})) == 51 + 94  # >=0..>=50 and <6..<99: the union, once each
    for t in range(100):
        index.remove(f">={t}")
        index.remove(f"<{t}")
    assert len(index) == 0 and index.candidates({"amount": 10}) == []


def test_an_in_condition_is_filed_under_each_of_its_values() -> None:
    index: ViewIndex[str] = ViewIndex()
    index.add("eu", "eu", index_key(validate_scope([{"fn": "region", "op": "in", "val": ["FR", "DE", "DE"]}])))
    index.add("us", "us", index_key(validate_scope([{"fn": "region", "op": "in", "val": ["US"]}])))
    index.add("none", "none", index_key(validate_scope([{"fn": "region", "op": "in", "val": ["US", None]}])))
    assert index_key(validate_scope([{"fn": "region", "op": "in", "val": ["US", None]}])) is None  # free
    assert sorted(index.candidates({"region": "DE"})) == ["eu", "none"]
    assert sorted(index.candidates({"region": ["US", "FR"]})) == ["eu", "none", "us"]
    assert sorted(index.candidates({"region": "DE"}, {"region": "US"})) == ["eu", "none", "us"]
    index.remove("eu")
    assert sorted(index.candidates({"region": "DE"})) == ["none"]
    assert index._by_field["region"].keys() == {("str", "US")}  # nothing left behind


def test_many_views_on_one_field_cost_one_test_per_change() -> None:
    index: ViewIndex[str] = ViewIndex()
    for i in range(1000):
        scope = validate_scope([{"fn": "customer", "op": "==", "val": f"c{i}"}])
        index.add(f"c{i}", f"c{i}", index_key(scope))
    index.add("all", "all", index_key([]))
    assert sorted(index.candidates({"customer": "c7"})) == ["all", "c7"]
    assert sorted(index.candidates({"customer": "c7"}, {"customer": "c9"})) == ["all", "c7", "c9"]
    assert index.candidates({"customer": 7}) == ["all"]  # another kind never matches
    assert len(index) == 1001
    for i in range(1000):
        index.remove(f"c{i}")
    assert index.candidates({"customer": "c7"}) == ["all"] and len(index) == 1
