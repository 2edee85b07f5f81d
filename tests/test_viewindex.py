"""The view index: a change is tested against the views it can match, never fewer."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from xia_broadcast.core.scope import compile_scope, validate_scope
from xia_broadcast.core.viewindex import ViewIndex, equality_key

VALUES = [1, 1.0, 2, True, False, "1", "a", None, 0]
values = st.sampled_from(VALUES)
field_values = values | st.lists(values, max_size=3)
conditions = st.fixed_dictionaries({"fn": st.sampled_from(["a", "b", "c.d"]),
                                    "op": st.sampled_from(["==", "!=", "in", ">"]),
                                    "val": values})
scopes = st.lists(conditions, max_size=3).filter(
    lambda s: all(c["op"] != ">" or type(c["val"]) in (int, float, str) for c in s)).map(
    lambda s: [{**c, "val": [c["val"]]} if c["op"] == "in" else c for c in s])
docs = st.fixed_dictionaries({}, optional={"a": field_values, "b": field_values,
                                           "c": st.fixed_dictionaries({"d": field_values})})


@settings(max_examples=300, deadline=None)
@given(st.lists(scopes, min_size=1, max_size=12), docs, st.none() | docs, st.data())
def test_candidates_hold_every_view_whose_scope_holds_each_once(view_scopes: list[list[dict[str, Any]]],
                                                                data: dict[str, Any], prev: dict[str, Any] | None,
                                                                draw: st.DataObject) -> None:
    index: ViewIndex[int] = ViewIndex()
    predicates = {}
    for i, scope in enumerate(view_scopes):
        conditions = validate_scope(scope)
        index.add(i, i, equality_key(conditions))
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


def test_many_views_on_one_field_cost_one_test_per_change() -> None:
    index: ViewIndex[str] = ViewIndex()
    for i in range(1000):
        scope = validate_scope([{"fn": "customer", "op": "==", "val": f"c{i}"}])
        index.add(f"c{i}", f"c{i}", equality_key(scope))
    index.add("all", "all", equality_key([]))
    assert sorted(index.candidates({"customer": "c7"})) == ["all", "c7"]
    assert sorted(index.candidates({"customer": "c7"}, {"customer": "c9"})) == ["all", "c7", "c9"]
    assert index.candidates({"customer": 7}) == ["all"]  # another kind never matches
    assert len(index) == 1001
    for i in range(1000):
        index.remove(f"c{i}")
    assert index.candidates({"customer": "c7"}) == ["all"] and len(index) == 1
