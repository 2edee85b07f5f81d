"""Data scopes: every rule of ``core/scope.py`` with worked examples."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import pytest

from xia_broadcast.core.limits import SubscriptionLimits
from xia_broadcast.core.schema import DocSchema
from xia_broadcast.core.scope import compile_scope
from xia_broadcast.errors import HiddenFieldError, InvalidScopeError, SubscriptionError

ORDER = DocSchema.from_dict(
    {
        "name": "Order",
        "fields": {
            "status": "str",
            "total": "float",
            "paid": "bool",
            "tags": "list",
            "meta": "dict",
            "extra": "any",
            "customer": {"fields": {"name": "str", "address": {"fields": {"city": "str"}}}},
            "lines": {"many": True, "fields": {"sku": "str", "qty": "int"}},
        },
    }
)

HIDDEN_ORDER = DocSchema.from_dict(
    {
        "name": "Order",
        "fields": {
            "total": "float",
            "margin": {"type": "float", "hidden": True},
            "customer": {"fields": {"name": "str", "secret": {"type": "str", "hidden": True}}},
            "lines": {"many": True, "fields": {"sku": "str", "cost": {"type": "float", "hidden": True}}},
        },
    }
)


def in_scope(doc: dict[str, Any], *conditions: tuple[str, str, Any], schema: DocSchema | None = None) -> bool:
    return compile_scope([{"fn": fn, "op": op, "val": val} for fn, op, val in conditions], schema)(doc)


# -- empty scopes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", [None, []])
def test_no_scope_puts_every_document_in_scope(scope: Any) -> None:
    pred = compile_scope(scope)
    assert pred({"_id": "1"})
    assert pred({})


# -- each operator on scalars --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "op", "val", "expected"),
    [
        (5, "==", 5, True),
        (5, "==", 6, False),
        (5, "==", 5.0, True),  # int and float are one kind: numbers
        ("new", "==", "new", True),
        ("new", "==", "New", False),
        (True, "==", True, True),
        (False, "==", True, False),
        (5, "!=", 6, True),
        (5, "!=", 5, False),
        ("a", "!=", "b", True),
        (3, "<", 5, True),
        (5, "<", 5, False),
        (5, "<=", 5, True),
        (6, "<=", 5, False),
        (6, ">", 5, True),
        (5, ">", 5, False),
        (5, ">=", 5, True),
        (4, ">=", 5, False),
        (2.5, ">", 2, True),
        ("b", ">", "a", True),  # strings order lexicographically
        ("B", ">", "a", False),
        ("2024-03-01", ">=", "2024-01-01", True),
        ("x", "in", ["x", "y"], True),
        ("z", "in", ["x", "y"], False),
        (2, "in", [1, 2, 3], True),
        (2, "in", [1.0, 2.0], True),
        ("z", "not in", ["x", "y"], True),
        ("x", "not in", ["x", "y"], False),
        ("x", "in", ["x", 1], True),  # looked up among the elements of its own kind
        ("x", "not in", ["y", 1], True),
    ],
)
def test_operator_on_scalar(value: Any, op: str, val: Any, expected: bool) -> None:
    assert in_scope({"f": value}, ("f", op, val)) is expected


# -- type mismatch is out of scope for every operator --------------------------------------------------


@pytest.mark.parametrize(
    ("value", "op", "val"),
    [
        ("5", "==", 5),
        ("5", "!=", 5),  # the negation does not put a mismatch in scope either
        (1, "==", True),  # bool is not a number
        (1, "!=", True),
        (True, "!=", 1),
        ("5", "<", 10),
        ("5", "<=", 10),
        (5, ">", "1"),
        (5, ">=", "1"),
        (True, ">", 0),  # a bool does not order against a number
        (None, "<", 3),  # ordering against None is a mismatch
        (None, ">=", "a"),
        ("5", "in", [5, 6]),
        ("5", "not in", [5, 6]),
        ({"a": 1}, "==", 1),  # an object compares with no scalar
        ({"a": 1}, "!=", 1),
        ({"a": 1}, "in", [1]),
        ({"a": 1}, "not in", [1]),
        ({"a": 1}, "<", 1),
    ],
)
def test_type_mismatch_is_out_of_scope(value: Any, op: str, val: Any) -> None:
    assert in_scope({"f": value}, ("f", op, val)) is False


def test_none_in_the_list_is_comparable_with_anything_like_none_with_eq() -> None:
    # ``not in [None]`` means what ``!= None`` means, for a value of any kind
    assert in_scope({"f": "x"}, ("f", "!=", None))
    assert in_scope({"f": "x"}, ("f", "not in", [None]))
    assert not in_scope({"f": "x"}, ("f", "in", [None]))
    assert in_scope({"f": "x"}, ("f", "not in", [None, 5]))
    assert not in_scope({"f": None}, ("f", "not in", [None, 5]))
    assert in_scope({"f": {"a": 1}}, ("f", "not in", [None]))
    assert not in_scope({"f": "x"}, ("f", "not in", [5]))  # still a mismatch without None


def test_in_with_an_empty_list_is_not_a_mismatch() -> None:
    assert in_scope({"f": "x"}, ("f", "in", [])) is False
    assert in_scope({"f": "x"}, ("f", "not in", [])) is True


# -- missing fields read as None -----------------------------------------------------------------------


def test_missing_field_reads_as_none() -> None:
    doc = {"_id": "1"}
    assert in_scope(doc, ("status", "==", None))
    assert not in_scope(doc, ("status", "!=", None))
    assert not in_scope(doc, ("status", "==", "new"))
    assert in_scope(doc, ("status", "!=", "new"))  # None is comparable with anything by ==/!=
    assert in_scope(doc, ("status", "in", [None, "new"]))
    assert not in_scope(doc, ("status", "in", ["new"]))
    assert in_scope(doc, ("status", "not in", ["new"]))
    assert not in_scope(doc, ("status", "<", 3))  # ordering against None: mismatch, out


def test_explicit_none_behaves_like_missing() -> None:
    assert in_scope({"status": None}, ("status", "==", None))
    assert not in_scope({"status": "x"}, ("status", "==", None))
    assert in_scope({"status": "x"}, ("status", "!=", None))


def test_missing_embedded_document_reads_as_none_below_it() -> None:
    assert in_scope({}, ("customer.address.city", "==", None))
    assert in_scope({"customer": None}, ("customer.name", "==", None))
    assert not in_scope({"customer": {}}, ("customer.name", "==", "Ann"))


# -- dotted paths and lists ----------------------------------------------------------------------------


def test_dotted_path_into_embedded_documents() -> None:
    doc = {"customer": {"name": "Ann", "address": {"city": "Paris"}}}
    assert in_scope(doc, ("customer.name", "==", "Ann"))
    assert in_scope(doc, ("customer.address.city", "in", ["Paris", "Lyon"]))
    assert not in_scope(doc, ("customer.address.city", "==", "Lyon"))


LINES = {"lines": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 5}]}


@pytest.mark.parametrize(
    ("op", "val", "expected"),
    [
        ("==", "a", True),  # some line has sku a
        ("==", "c", False),
        ("!=", "c", True),  # every line differs from c
        ("!=", "a", False),  # not every line differs from a: exact negation of ==
        ("in", ["b", "z"], True),
        ("not in", ["b", "z"], False),
        ("not in", ["y", "z"], True),
    ],
)
def test_path_through_a_list_of_embedded_documents(op: str, val: Any, expected: bool) -> None:
    assert in_scope(LINES, ("lines.sku", op, val)) is expected


def test_ordering_through_a_list_holds_when_some_element_satisfies_it() -> None:
    assert in_scope(LINES, ("lines.qty", ">", 3))
    assert not in_scope(LINES, ("lines.qty", ">", 5))
    assert in_scope(LINES, ("lines.qty", "<=", 1))


def test_path_ending_in_a_list_of_scalars() -> None:
    doc = {"tags": ["red", "big"]}
    assert in_scope(doc, ("tags", "==", "red"))
    assert not in_scope(doc, ("tags", "==", "blue"))
    assert in_scope(doc, ("tags", "!=", "blue"))
    assert not in_scope(doc, ("tags", "!=", "red"))
    assert in_scope(doc, ("tags", "in", ["big"]))
    assert in_scope(doc, ("tags", "not in", ["blue", "small"]))


def test_empty_list_satisfies_negative_operators_only() -> None:
    doc: dict[str, Any] = {"tags": [], "lines": []}
    assert not in_scope(doc, ("tags", "==", "red"))
    assert in_scope(doc, ("tags", "!=", "red"))
    assert not in_scope(doc, ("lines.sku", "in", ["a"]))
    assert in_scope(doc, ("lines.sku", "not in", ["a"]))


def test_mismatched_list_elements_never_satisfy_a_condition() -> None:
    doc = {"tags": [1, "a"]}
    assert in_scope(doc, ("tags", "==", "a"))  # the string element satisfies it
    assert not in_scope(doc, ("tags", "!=", "b"))  # the number element is a mismatch: not every element
    assert not in_scope({"tags": [1, 2]}, ("tags", "==", "a"))
    assert not in_scope({"tags": [1, 2]}, ("tags", "!=", "a"))


def test_a_list_of_another_class_is_read_as_a_list_at_the_top_and_below() -> None:
    class Tags(list):  # type: ignore[type-arg]
        pass
    for fn, doc in (("tags", {"tags": Tags(["y", "x"])}), ("a.tags", {"a": {"tags": Tags(["y", "x"])}})):
        assert compile_scope([{"fn": fn, "op": "==", "val": "x"}])(doc)
        assert compile_scope([{"fn": fn, "op": ">", "val": "w"}])(doc)
        assert not compile_scope([{"fn": fn, "op": "==", "val": "z"}])(doc)
        assert compile_scope([{"fn": fn, "op": "!=", "val": "z"}])(doc)


def test_list_in_a_list() -> None:
    doc = {"a": [{"b": [{"c": 1}, {"c": 2}]}, {"b": [{"c": 3}]}]}
    assert in_scope(doc, ("a.b.c", "==", 3))
    assert not in_scope(doc, ("a.b.c", "==", 4))
    assert in_scope(doc, ("a.b.c", "!=", 4))


# -- conditions are ANDed ------------------------------------------------------------------------------


def test_all_conditions_must_hold() -> None:
    doc = {"status": "new", "total": 120.0, "paid": False}
    assert in_scope(doc, ("status", "==", "new"), ("total", ">", 100))
    assert not in_scope(doc, ("status", "==", "new"), ("total", ">", 200))
    assert not in_scope(doc, ("status", "==", "old"), ("total", ">", 100))
    three = (("status", "==", "new"), ("total", ">", 100), ("paid", "==", False))
    assert in_scope(doc, *three)
    assert not in_scope({**doc, "paid": True}, *three)
    assert in_scope(doc, *reversed(three))


def test_scope_does_not_modify_its_conditions_or_the_document() -> None:
    scope = [{"fn": "f", "op": "in", "val": ["a", "b"]}]
    doc = {"f": "a", "tags": ["x"]}
    compile_scope(scope)(doc)
    assert scope == [{"fn": "f", "op": "in", "val": ["a", "b"]}]
    assert doc == {"f": "a", "tags": ["x"]}


def test_tuple_values_are_accepted_for_in() -> None:
    assert in_scope({"f": "b"}, ("f", "in", ("a", "b")))


def test_in_an_object_is_membership_in_its_keys_as_the_original_reads_it() -> None:
    """Python's ``in`` on a dict tests its keys; the original evaluated scopes with it, so an object value
    keeps that meaning (it was refused before)."""
    statuses = {"new": "fresh", "paid": "settled"}
    assert in_scope({"status": "paid"}, ("status", "in", statuses))
    assert not in_scope({"status": "settled"}, ("status", "in", statuses))  # a value, not a key
    assert in_scope({"status": "shipped"}, ("status", "not in", statuses))
    assert not in_scope({"status": "new"}, ("status", "not in", statuses))
    assert not in_scope({"status": 5}, ("status", "in", statuses))  # a type mismatch is out, as for lists


# -- invalid scopes are refused at compile time, naming the problem ------------------------------------


@pytest.mark.parametrize(
    ("scope", "message"),
    [
        ("status == new", "must be a list"),
        ({"fn": "status", "op": "==", "val": "new"}, "must be a list"),
        ([["status", "==", "new"]], "data_scope[0] must be an object"),
        ([{"fn": "status", "op": "==", "val": 1}, "x"], "data_scope[1] must be an object"),
        ([{"fn": "status", "op": "~=", "val": "new"}], "unknown operator '~='"),
        ([{"fn": "status", "op": "=", "val": "new"}], "unknown operator '='"),
        ([{"fn": "status", "op": "eq", "val": "new"}], "unknown operator 'eq'"),
        ([{"fn": "status", "op": "=="}], "needs 'fn', 'op' and 'val'"),
        ([{"op": "==", "val": 1}], "needs 'fn', 'op' and 'val'"),
        ([{"fn": "", "op": "==", "val": 1}], "'fn' must be a field name"),
        ([{"fn": 3, "op": "==", "val": 1}], "'fn' must be a field name"),
        ([{"fn": "a..b", "op": "==", "val": 1}], "'fn' must be a field name"),
        ([{"fn": "a.", "op": "==", "val": 1}], "'fn' must be a field name"),
        ([{"fn": "status", "op": "in", "val": 5}], "'in' needs a list of scalar values, an object or a string"),
        ([{"fn": "status", "op": "not in", "val": [["a"]]}], "'not in' needs a list of scalar values"),
        ([{"fn": "total", "op": "<", "val": None}], "'<' needs a number, a string or a date"),
        ([{"fn": "total", "op": ">=", "val": True}], "'>=' needs a number, a string or a date"),
        ([{"fn": "total", "op": ">", "val": [1]}], "'>' needs a number, a string or a date"),
        ([{"fn": "status", "op": "==", "val": {1, 2}}], "'==' needs a JSON value"),
    ],
)
def test_invalid_scope_is_refused(scope: Any, message: str) -> None:
    with pytest.raises(InvalidScopeError) as info:
        compile_scope(scope)
    assert message in str(info.value)


def test_invalid_scope_error_is_a_subscription_error_with_close_code() -> None:
    with pytest.raises(SubscriptionError) as info:
        compile_scope([{"fn": "x", "op": "like", "val": 1}])
    assert info.value.code == 4420
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("fn", "message"),
    [
        ("colour", "Order has no field 'colour'"),
        ("customer.phone", "Order has no field 'customer.phone'"),
        ("customer.address.zip", "Order has no field 'customer.address.zip'"),
        ("lines.price", "Order has no field 'lines.price'"),
        ("status.length", "field 'status' of Order has no sub-fields"),
        ("tags.x", "field 'tags' of Order has no sub-fields"),
        ("_id.x", "'_id' has no sub-fields"),
    ],
)
def test_unknown_field_is_refused_against_a_schema_when_strict(fn: str, message: str) -> None:
    with pytest.raises(InvalidScopeError) as info:
        compile_scope([{"fn": fn, "op": "==", "val": 1}], ORDER, strict=True)
    assert message in str(info.value)
    # lenient (the original's reading): the path reads as None
    assert compile_scope([{"fn": fn, "op": "==", "val": None}], ORDER)({"_id": "1", "status": "new"})
    assert not compile_scope([{"fn": fn, "op": "==", "val": 1}], ORDER)({"_id": "1", "status": "new"})


def test_extra_keys_in_a_condition_are_ignored_unless_strict() -> None:
    scope = [{"fn": "status", "op": "==", "val": "new", "neg": True}]
    assert compile_scope(scope)({"status": "new"})
    with pytest.raises(InvalidScopeError, match=r"unknown keys \['neg'\]"):
        compile_scope(scope, strict=True)


@pytest.mark.parametrize("fn", ["_id", "status", "customer.address.city", "lines.sku", "meta.any.depth", "extra.x"])
def test_known_paths_are_accepted_against_a_schema(fn: str) -> None:
    pred = compile_scope([{"fn": fn, "op": "!=", "val": "zz"}], ORDER)
    assert pred({"_id": "1"})


def test_without_a_schema_any_path_is_accepted() -> None:
    assert compile_scope([{"fn": "anything.at.all", "op": "==", "val": None}])({})


# -- the original's readings (xia-engine) -------------------------------------------------------------


def test_in_with_a_string_value_is_a_substring_test() -> None:
    assert in_scope({"name": "north-east"}, ("name", "in", "the north-east region"))
    assert not in_scope({"name": "south"}, ("name", "in", "the north-east region"))
    assert in_scope({"name": "south"}, ("name", "not in", "the north-east region"))
    assert not in_scope({"name": 5}, ("name", "in", "5 and 6"))  # not a string: a mismatch, out
    assert not in_scope({"name": 5}, ("name", "not in", "abc"))
    assert not in_scope({}, ("name", "in", "abc")) and in_scope({}, ("name", "not in", "abc"))


def test_eq_with_a_list_or_an_object_compares_the_whole_value() -> None:
    doc = {"tags": ["a", "b"], "meta": {"k": 1}}
    assert in_scope(doc, ("tags", "==", ["a", "b"]))
    assert not in_scope(doc, ("tags", "==", ["b", "a"]))
    assert not in_scope(doc, ("tags", "==", ["a"]))
    assert in_scope(doc, ("tags", "!=", ["a"]))
    assert in_scope(doc, ("meta", "==", {"k": 1})) and not in_scope(doc, ("meta", "!=", {"k": 1}))
    assert not in_scope({"tags": "a"}, ("tags", "==", ["a"]))  # a string is no list: mismatch
    assert not in_scope({"tags": "a"}, ("tags", "!=", ["a"]))
    assert not in_scope({}, ("tags", "==", ["a"])) and in_scope({}, ("tags", "!=", ["a"]))
    lines = {"lines": [{"tags": ["x"]}, {"tags": ["y", "z"]}]}
    assert in_scope(lines, ("lines.tags", "==", ["y", "z"]))
    assert not in_scope(lines, ("lines.tags", "==", ["y"]))


def test_datetimes_and_dates_compare_with_their_iso_strings() -> None:
    doc = {"at": "2024-05-01T10:00:00", "day": "2024-05-01", "aware": "2024-05-01T10:00:00+00:00", "n": 5}
    assert in_scope(doc, ("at", ">=", datetime(2024, 5, 1, 9)))
    assert not in_scope(doc, ("at", "<", datetime(2024, 5, 1, 9)))
    assert in_scope(doc, ("at", "==", datetime(2024, 5, 1, 10)))
    assert in_scope(doc, ("day", "<", date(2024, 6, 1)))
    assert in_scope({"at": datetime(2024, 5, 1, 10)}, ("at", ">", datetime(2024, 1, 1)))
    assert not in_scope(doc, ("aware", ">", datetime(2024, 1, 1)))  # aware against naive: mismatch, out
    assert not in_scope(doc, ("n", ">", datetime(2024, 1, 1)))
    assert not in_scope({"at": "not a date"}, ("at", "!=", datetime(2024, 1, 1)))


def test_subscription_limits_are_refused_at_compile_time() -> None:
    small = SubscriptionLimits(max_conditions=2, max_path_depth=2, max_in_values=3, max_value_length=10)
    with pytest.raises(InvalidScopeError, match="max_conditions"):
        compile_scope([{"fn": "a", "op": "==", "val": 1}] * 3, limits=small)
    with pytest.raises(InvalidScopeError, match="max_path_depth"):
        compile_scope([{"fn": "a.b.c", "op": "==", "val": 1}], limits=small)
    with pytest.raises(InvalidScopeError, match="max_in_values"):
        compile_scope([{"fn": "a", "op": "in", "val": [1, 2, 3, 4]}], limits=small)
    with pytest.raises(InvalidScopeError, match="max_value_length"):
        compile_scope([{"fn": "a", "op": "==", "val": "x" * 11}], limits=small)
    with pytest.raises(InvalidScopeError, match="max_value_length"):
        compile_scope([{"fn": "a", "op": "==", "val": ["x" * 11]}], limits=small)
    with pytest.raises(InvalidScopeError, match="max_path_depth"):  # the default bound
        compile_scope([{"fn": ".".join(["p"] * 20), "op": "==", "val": 1}])
    assert compile_scope([{"fn": "a.b", "op": "in", "val": [1, 2, 3]}] * 2, limits=small)({"a": {"b": 2}})


#: an order whose hidden values are all above 0, and one whose values are all 0
HIDDEN_DOC = {"total": 1.0, "margin": 0.5, "customer": {"name": "Bob", "secret": 7}, "lines": [{"sku": "a", "cost": 2}]}
ZERO_DOC = {"total": 0.0, "margin": 0.0, "customer": {"name": "Bob", "secret": 0}, "lines": [{"sku": "a", "cost": 0}]}


def test_a_scope_naming_a_hidden_field_needs_permission() -> None:
    for fn in ("margin", "customer.secret", "lines.cost"):
        with pytest.raises(HiddenFieldError) as info:
            compile_scope([{"fn": fn, "op": ">", "val": 0}], HIDDEN_ORDER, hidden_allowed=False)
        assert info.value.code == 4403
        allowed = compile_scope([{"fn": fn, "op": ">", "val": 0}], HIDDEN_ORDER, hidden_allowed=True)
        assert allowed(HIDDEN_DOC) and not allowed(ZERO_DOC)
    visible = compile_scope([{"fn": "total", "op": ">", "val": 0}], HIDDEN_ORDER, hidden_allowed=False)
    assert visible(HIDDEN_DOC) and not visible(ZERO_DOC)


def test_comparing_a_whole_embedded_document_with_hidden_fields_needs_permission() -> None:
    """``customer == {...}`` would match only when the guess of its hidden field is right."""
    for fn, val in [("customer", {"name": "Bob", "secret": "1234"}), ("customer", {"name": "Bob"}),
                    ("lines", [{"sku": "a", "cost": 7}])]:
        for op in ("==", "!="):
            with pytest.raises(HiddenFieldError, match="comparing it whole"):
                compile_scope([{"fn": fn, "op": op, "val": val}], HIDDEN_ORDER, hidden_allowed=False)
            allowed = compile_scope([{"fn": fn, "op": op, "val": val}], HIDDEN_ORDER, hidden_allowed=True)
            assert allowed({fn: val}) is (op == "==") and allowed({fn: None}) is (op == "!=")
    # a field without hidden fields below it may be compared whole by anyone
    whole = compile_scope([{"fn": "tags", "op": "==", "val": ["a"]}], ORDER, hidden_allowed=False)
    assert whole({"tags": ["a"]}) and not whole({"tags": ["a", "b"]})
