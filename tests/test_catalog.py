"""Catalogs: field projections, nesting, ``_id``, hidden fields at every depth, refusals."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from xia_broadcast.core.catalog import compile_catalog
from xia_broadcast.core.limits import SubscriptionLimits
from xia_broadcast.core.schema import DocSchema
from xia_broadcast.errors import InvalidCatalogError

ORDER = DocSchema.from_dict(
    {
        "name": "Order",
        "key": ["order_id"],
        "fields": {
            "order_id": "str",
            "status": "str",
            "margin": {"type": "float", "hidden": True},
            "customer": {
                "fields": {
                    "name": "str",
                    "phone": {"type": "str", "hidden": True},
                    "address": {"fields": {"city": "str", "door_code": {"type": "str", "hidden": True}}},
                }
            },
            "lines": {"many": True, "fields": {"sku": "str", "qty": "int", "cost": {"type": "float", "hidden": True}}},
            "audit": {"hidden": True, "fields": {"by": "str"}},
            "meta": "dict",
        },
    }
)

DOC: dict[str, Any] = {
    "_id": "o-1",
    "order_id": "A-1",
    "status": "new",
    "margin": 0.3,
    "customer": {"name": "Ann", "phone": "555", "address": {"city": "Paris", "door_code": "1234"}},
    "lines": [{"sku": "a", "qty": 1, "cost": 2.0}, {"sku": "b", "qty": 2, "cost": 3.0}],
    "audit": {"by": "bob"},
    "meta": {"source": {"app": "shop"}, "n": 1},
}

PUBLIC = {
    "_id": "o-1",
    "order_id": "A-1",
    "status": "new",
    "customer": {"name": "Ann", "address": {"city": "Paris"}},
    "lines": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}],
    "meta": {"source": {"app": "shop"}, "n": 1},
}


def project(catalog: Any, show_hidden: bool = False, doc: dict[str, Any] | None = None) -> dict[str, Any]:
    return dict(compile_catalog(catalog, ORDER, show_hidden)(DOC if doc is None else doc))


# -- all fields ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("catalog", [None, {}])
def test_no_catalog_means_every_non_hidden_field_at_every_depth(catalog: Any) -> None:
    assert project(catalog) == PUBLIC


@pytest.mark.parametrize("catalog", [None, {}])
def test_no_catalog_with_show_hidden_is_the_whole_document(catalog: Any) -> None:
    assert project(catalog, show_hidden=True) == DOC


def test_without_a_schema_nothing_is_known_hidden() -> None:
    assert compile_catalog(None)(DOC) == DOC
    assert compile_catalog({"margin": None})(DOC) == {"_id": "o-1", "margin": 0.3}


# -- naming fields -------------------------------------------------------------------------------------


def test_named_fields_only_and_id_always_included() -> None:
    assert project({"status": None}) == {"_id": "o-1", "status": "new"}
    assert project({"status": None, "order_id": None}) == {"_id": "o-1", "status": "new", "order_id": "A-1"}


def test_naming_id_alone_gives_the_id() -> None:
    assert project({"_id": None}) == {"_id": "o-1"}


def test_named_field_missing_from_the_document_is_left_out() -> None:
    assert project({"status": None}, doc={"_id": "o-2"}) == {"_id": "o-2"}


def test_embedded_document_named_with_none_is_included_whole_less_its_hidden_fields() -> None:
    assert project({"customer": None}) == {"_id": "o-1", "customer": {"name": "Ann", "address": {"city": "Paris"}}}


def test_sub_catalog_of_an_embedded_document() -> None:
    assert project({"customer": {"name": None}}) == {"_id": "o-1", "customer": {"name": "Ann"}}
    assert project({"customer": {"address": {"city": None}}}) == {
        "_id": "o-1",
        "customer": {"address": {"city": "Paris"}},
    }


def test_empty_sub_catalog_means_the_whole_embedded_document() -> None:
    assert project({"customer": {}}) == project({"customer": None})


def test_sub_catalog_applies_to_every_element_of_a_list() -> None:
    assert project({"lines": {"sku": None}}) == {"_id": "o-1", "lines": [{"sku": "a"}, {"sku": "b"}]}
    assert project({"lines": None}) == {"_id": "o-1", "lines": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}]}


def test_sub_catalog_on_a_free_form_field() -> None:
    assert project({"meta": {"source": None}}) == {"_id": "o-1", "meta": {"source": {"app": "shop"}}}


def test_embedded_value_that_is_null_stays_null() -> None:
    doc = {"_id": "o-3", "customer": None, "lines": None}
    assert project({"customer": {"name": None}, "lines": {"sku": None}}, doc=doc) == doc


def test_projection_does_not_modify_the_document() -> None:
    before = copy.deepcopy(DOC)
    project({"customer": {"name": None}, "lines": {"sku": None}})
    project(None)
    assert before == DOC


# -- hidden fields -------------------------------------------------------------------------------------


def test_naming_a_hidden_field_does_not_reveal_it() -> None:
    assert project({"margin": None, "status": None}) == {"_id": "o-1", "status": "new"}
    assert project({"audit": None}) == {"_id": "o-1"}


@pytest.mark.parametrize(
    ("catalog", "expected"),
    [
        ({"customer": {"phone": None, "name": None}}, {"customer": {"name": "Ann"}}),
        ({"customer": {"address": {"door_code": None}}}, {"customer": {"address": {}}}),
        ({"customer": {"address": None}}, {"customer": {"address": {"city": "Paris"}}}),
        ({"lines": {"cost": None, "sku": None}}, {"lines": [{"sku": "a"}, {"sku": "b"}]}),
    ],
)
def test_hidden_fields_are_left_out_at_every_depth(catalog: Any, expected: dict[str, Any]) -> None:
    assert project(catalog) == {"_id": "o-1", **expected}


def test_show_hidden_reveals_named_hidden_fields_at_every_depth() -> None:
    catalog = {"margin": None, "customer": {"phone": None, "address": {"door_code": None}}, "lines": {"cost": None}}
    assert project(catalog, show_hidden=True) == {
        "_id": "o-1",
        "margin": 0.3,
        "customer": {"phone": "555", "address": {"door_code": "1234"}},
        "lines": [{"cost": 2.0}, {"cost": 3.0}],
    }


def test_show_hidden_does_not_add_unnamed_fields() -> None:
    assert project({"status": None}, show_hidden=True) == {"_id": "o-1", "status": "new"}


# -- refusals ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("catalog", "message"),
    [
        (["status"], "catalog must be an object of field names, not list"),
        ("status", "catalog must be an object of field names, not str"),
        ({"status": 1}, "value must be null, true, false (include) or an object (sub-catalog)"),
        ({"status": "yes"}, "value must be null, true, false (include) or an object (sub-catalog)"),
        ({"": None}, "field names are non-empty strings"),
    ],
)
def test_invalid_catalog_is_refused(catalog: Any, message: str) -> None:
    for strict in (False, True):
        with pytest.raises(InvalidCatalogError) as info:
            compile_catalog(catalog, ORDER, strict=strict)
        assert message in str(info.value)


@pytest.mark.parametrize(
    ("catalog", "message", "lenient"),
    [
        ({"colour": None}, "Order has no field 'colour'", {"_id": "o-1"}),
        ({"customer": {"email": None}}, "Order has no field 'customer.email'", {"_id": "o-1", "customer": {}}),
        ({"customer": {"address": {"zip": None}}}, "Order has no field 'customer.address.zip'",
         {"_id": "o-1", "customer": {"address": {}}}),
        ({"lines": {"price": None}}, "Order has no field 'lines.price'", {"_id": "o-1", "lines": [{}, {}]}),
        ({"status": {"x": None}}, "field 'status' is not an embedded document", {"_id": "o-1", "status": "new"}),
        ({"_id": {"x": None}}, "'_id' has no sub-fields", {"_id": "o-1"}),
    ],
)
def test_what_the_original_ignores_is_refused_only_when_strict(catalog: Any, message: str,
                                                              lenient: dict[str, Any]) -> None:
    with pytest.raises(InvalidCatalogError) as info:
        compile_catalog(catalog, ORDER, strict=True)
    assert message in str(info.value)
    assert info.value.code == 4421
    # the original's reading: an unknown name matches nothing (never "every field"), a sub-catalog on a
    # plain field gives its whole value
    assert project(catalog) == lenient


@pytest.mark.parametrize("flag", [True, False])
def test_lazy_load_flags_include_the_field_at_every_depth(flag: bool) -> None:
    catalog = {"status": flag, "customer": {"name": flag, "address": flag}, "lines": {"sku": flag},
               "meta": flag}
    assert project(catalog) == {"_id": "o-1", "status": "new",
                                "customer": {"name": "Ann", "address": {"city": "Paris"}},
                                "lines": [{"sku": "a"}, {"sku": "b"}], "meta": DOC["meta"]}
    assert project({"lines": flag}) == {"_id": "o-1", "lines": PUBLIC["lines"]}
    assert project({"margin": flag}) == {"_id": "o-1"}  # a flag never reveals a hidden field
    assert compile_catalog({"tags": flag})({"_id": 1, "tags": ["x", "y"]}) == {"_id": 1, "tags": ["x", "y"]}


def test_catalog_limits_are_refused() -> None:
    small = SubscriptionLimits(max_catalog_depth=2, max_catalog_fields=3)
    with pytest.raises(InvalidCatalogError, match="max_catalog_depth"):
        compile_catalog({"customer": {"address": {"city": None}}}, ORDER, limits=small)
    with pytest.raises(InvalidCatalogError, match="max_catalog_fields"):
        compile_catalog({"a": None, "b": None, "c": None, "d": None}, limits=small)
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(5000):  # far deeper than Python's recursion limit would allow unchecked
        node["x"] = {}
        node = node["x"]
    with pytest.raises(InvalidCatalogError, match="max_catalog_depth"):
        compile_catalog(deep)


def test_without_a_schema_names_select_what_is_there() -> None:
    assert compile_catalog({"anything": None})({"_id": 1, "anything": 2, "other": 3}) == {"_id": 1, "anything": 2}
    with pytest.raises(InvalidCatalogError):
        compile_catalog({"anything": 5})
