"""ACLs: subjects of a document, pattern and action matching, None vs empty, coercion."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xia_broadcast.core.acl import Acl, AclItem, check_acl, subjects_of
from xia_broadcast.core.schema import DocSchema
from xia_broadcast.errors import InvalidAclError

ORDER = DocSchema.from_dict(
    {
        "name": "Order",
        "key": ["region", "number"],
        "privilege_keys": {"customer": ["customer"], "desk": ["region", "desk"]},
        "fields": {"region": "str", "number": "int", "customer": "str", "desk": "str", "total": "float"},
    }
)
NOTE = DocSchema.from_dict({"name": "Note", "fields": {"text": "str"}})
ORDER_DOC = {"_id": "o-9", "region": "eu", "number": 123, "customer": "c-7", "desk": "d1", "total": 5.0}


def acl(*items: tuple[str, str]) -> Acl:
    return Acl.from_display(content=[{"obj": o, "act": a} for o, a in items])


def may_read(a: Acl | None, data: dict[str, Any] = ORDER_DOC, schema: DocSchema | None = ORDER,
             class_name: str = "Order") -> bool:
    return check_acl(a, subjects_of(class_name, data, schema))


# -- subjects ------------------------------------------------------------------------------------------


def test_subjects_are_key_then_each_privilege_key() -> None:
    assert subjects_of("Order", ORDER_DOC, ORDER) == (
        "Order/key/eu/123",
        "Order/customer/c-7",
        "Order/desk/eu/d1",
    )


def test_class_without_key_fields_uses_its_id_as_key() -> None:
    assert subjects_of("Note", {"_id": "n-1", "text": "hi"}, NOTE) == ("Note/key/n-1",)


def test_without_a_schema_the_id_is_the_key() -> None:
    assert subjects_of("Free", {"_id": 42, "region": "eu"}, None) == ("Free/key/42",)


def test_missing_key_value_is_empty() -> None:
    assert subjects_of("Order", {"_id": "x", "region": "eu"}, ORDER)[0] == "Order/key/eu/"


# -- matching ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("items", "expected"),
    [
        ((("Order/key/eu/123", "read"),), True),
        ((("Order/key/eu/124", "read"),), False),
        ((("Order/key/eu", "read"),), False),  # a pattern matches the whole subject, not a prefix
        ((("Order/customer/c-7", "read"),), True),  # a privilege key grants on its own
        ((("Order/desk/eu/d1", "read"),), True),
        ((("Order/customer/c-8", "read"),), False),
        ((("Order/*", "read"),), True),  # * spans the rest, / included
        ((("Order/key/*", "read"),), True),
        ((("Order/key/*/123", "read"),), True),
        ((("Order/key/us/*", "read"),), False),
        ((("*", "read"),), True),
        ((("*/customer/c-7", "read"),), True),
        ((("Invoice/*", "read"),), False),  # another class
        ((("Orders/*", "read"),), False),
        ((("Ord*", "read"),), True),
        ((("Order/key/eu/123", "write"),), False),  # the action must hold read
        ((("Order/key/eu/123", "read,write"),), True),
        ((("Order/key/eu/123", "write,read"),), True),
        ((("Order/key/eu/123", "*"),), True),
        ((("Order/key/eu/123", "re*"),), True),
        ((("Order/key/eu/123", "readonly"),), False),
        ((("Order/key/eu/123", "rea"),), False),
        ((("Invoice/*", "read"), ("Order/key/eu/123", "write"), ("Order/customer/*", "read")), True),
        ((("Invoice/*", "read"), ("Order/key/eu/123", "write")), False),
    ],
)
def test_an_item_matches_when_obj_matches_a_subject_and_act_holds_read(
    items: tuple[tuple[str, str], ...], expected: bool
) -> None:
    assert may_read(acl(*items)) is expected


def test_regex_characters_in_patterns_are_literal() -> None:
    doc = {"_id": "a.b", "text": ""}
    assert may_read(acl(("Note/key/a.b", "read")), doc, NOTE, "Note")
    assert not may_read(acl(("Note/key/a.b", "read")), {"_id": "axb"}, NOTE, "Note")
    assert not may_read(acl(("Note/key/(.*)", "read")), doc, NOTE, "Note")


def test_none_is_unrestricted_and_empty_content_reads_nothing() -> None:
    assert may_read(None)
    assert not may_read(Acl())
    assert not may_read(Acl.from_display(content=[]))
    assert not may_read(Acl.coerce({"content": []}))
    assert not may_read(Acl.coerce({}))


def test_other_actions_are_checked_the_same_way() -> None:
    a = acl(("Order/*", "write"))
    subjects = subjects_of("Order", ORDER_DOC, ORDER)
    assert a.allows(subjects, "write")
    assert not a.allows(subjects, "read")
    assert not a.allows(subjects, "delete")


# -- construction and identity -------------------------------------------------------------------------


def test_coerce_accepts_display_dict_acl_objects_and_duck_typed_acls() -> None:
    expected = acl(("Order/*", "read"))
    assert Acl.coerce(None) is None
    assert Acl.coerce(expected) is expected
    assert Acl.coerce({"content": [{"obj": "Order/*", "act": "read"}]}) == expected
    assert Acl.coerce(SimpleNamespace(content=[SimpleNamespace(obj="Order/*", act="read")])) == expected
    assert Acl.coerce({"content": [AclItem("Order/*", "read")]}) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("Order/*", "not an ACL: str"),
        (42, "not an ACL: int"),
        ({"content": "Order/*"}, "content must be a list"),
        ({"content": [{"obj": "Order/*"}]}, "content[0] needs string 'obj' and 'act'"),
        ({"content": [{"obj": 1, "act": "read"}]}, "content[0] needs string 'obj' and 'act'"),
        ({"content": [], "owner": "me"}, "unknown ACL entries ['owner']"),
    ],
)
def test_invalid_acl_is_refused(value: Any, message: str) -> None:
    with pytest.raises(InvalidAclError) as info:
        Acl.coerce(value)
    assert message in str(info.value)
    assert info.value.code == 4401


def test_equal_content_in_any_order_is_one_acl() -> None:
    a = acl(("Order/*", "read"), ("Invoice/*", "read,write"))
    b = acl(("Invoice/*", "read,write"), ("Order/*", "read"), ("Order/*", "read"))
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != acl(("Order/*", "read"))


def test_display_data_round_trips() -> None:
    a = acl(("Order/*", "read"), ("Invoice/*", "write"))
    assert a.get_display_data() == {
        "content": [{"obj": "Order/*", "act": "read"}, {"obj": "Invoice/*", "act": "write"}]
    }
    assert Acl.coerce(a.get_display_data()) == a


# -- an ACL restricted to one class (what views share) ------------------------------------------------------

PATTERNS = ["*", "Order", "Order/", "Order/*", "Orde*", "Order*", "O*", "*r/*", "O*r/key/*", "Order/key/*",
            "Order/key/eu/*", "Order/*/eu", "Order/customer/c-7", "Orders/*", "Order s/*", "Invoice/*",
            "Invoice/key/eu/123", "*/key/eu/123", "order/*", "Order/key/eu/123", "Order/key/*/*", "**", ""]
ACTS = ["read", "write", "read,write", "*", "r*", "rea", "readonly", " read ", ""]
acl_items = st.lists(st.tuples(st.sampled_from(PATTERNS), st.sampled_from(ACTS)), max_size=5)
# values an attacker may give key fields: slashes and stars are data, not pattern syntax
key_values = st.sampled_from(["eu", "us", "", "/", "*", "eu/123", "a*b", "Order", "key"]) | st.text(max_size=4)


@settings(max_examples=400, deadline=None)
@given(acl_items, key_values, key_values, key_values, key_values, st.sampled_from(["read", "write", "delete"]))
def test_an_acl_restricted_to_a_class_decides_exactly_as_the_whole_acl_for_that_class(
        items: list[tuple[str, str]], region: str, customer: str, desk: str, number: str, action: str) -> None:
    whole = acl(*items)
    doc = {**ORDER_DOC, "region": region, "customer": customer, "desk": desk, "number": number}
    for class_name, schema in (("Order", ORDER), ("Ord", None), ("O", None)):
        subjects = subjects_of(class_name, doc, schema)
        restricted = whole.for_class(class_name)
        assert restricted.allows(subjects, action) is whole.allows(subjects, action), (items, subjects)
        assert set(restricted.content) <= set(whole.content)


def test_grants_that_cannot_match_a_class_are_dropped_and_the_others_kept() -> None:
    whole = acl(("Invoice/*", "read"), ("Orders/*", "read"), ("Order", "read"), ("Order/key/1", "read"),
                ("Ord*", "write"), ("*", "read"), ("*/key/1", "read"), ("O*/x", "read"))
    assert [(i.obj, i.act) for i in whole.for_class("Order").content] == [
        ("Order/key/1", "read"), ("Ord*", "write"), ("*", "read"), ("*/key/1", "read"), ("O*/x", "read")]
    assert acl(("Invoice/*", "read")).for_class("Order") == acl()  # grants nothing on Order: reads nothing
