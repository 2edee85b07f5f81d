"""Class schemas from dicts, JSON and TOML files; their errors; validation of published data."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from xia_broadcast.core.catalog import compile_catalog
from xia_broadcast.core.schema import DocSchema, load_schemas
from xia_broadcast.errors import DocumentError, SchemaError

ORDER_SPEC: dict[str, Any] = {
    "key": ["order_id"],
    "privilege_keys": {"customer": ["customer"]},
    "fields": {
        "order_id": {"type": "str"},
        "customer": "str",
        "total": "float",
        "count": "int",
        "paid": "bool",
        "tags": {"type": "str", "many": True},
        "margin": {"type": "float", "hidden": True},
        "meta": "dict",
        "note": None,
        "lines": {"many": True, "fields": {"sku": {"type": "str"}, "cost": {"hidden": True}}},
        "ship": {"fields": {"city": "str", "geo": {"fields": {"lat": "float"}}}},
    },
}

ORDER_TOML = """
[server]
port = 8765

[classes.Order]
key = ["order_id"]
privilege_keys = { customer = ["customer"] }

[classes.Order.fields]
order_id = "str"
customer = "str"
margin = { type = "float", hidden = true }

[classes.Order.fields.lines]
many = true
fields = { sku = "str", cost = { type = "float", hidden = true } }

[classes.Note.fields]
text = "str"
"""


def test_schema_from_dict() -> None:
    s = DocSchema.from_dict(ORDER_SPEC, "Order")
    assert s.name == "Order"
    assert s.key_fields == ("order_id",)
    assert s.privilege_keys == {"customer": ("customer",)}
    assert s.fields["order_id"].key and not s.fields["customer"].key
    assert s.fields["note"].type == "any"
    assert s.fields["customer"].type == "str"
    assert s.hidden_fields == {"margin"}
    lines = s.fields["lines"]
    assert lines.many and lines.type == "embedded" and lines.embedded is not None
    assert lines.embedded.hidden_fields == {"cost"}
    assert lines.embedded.embedded
    assert s.fields["ship"].embedded is not None and not s.fields["ship"].many
    assert s.has_hidden()
    assert not DocSchema.from_dict({"fields": {"a": "str"}}, "A").has_hidden()


def test_has_hidden_sees_hidden_fields_deep_down() -> None:
    s = DocSchema.from_dict({"fields": {"a": {"fields": {"b": {"fields": {"c": {"hidden": True}}}}}}}, "Deep")
    assert s.hidden_fields == frozenset()
    assert s.has_hidden()
    assert compile_catalog(None, s)({"_id": 1, "a": {"b": {"c": 1, "d": 2}}}) == {"_id": 1, "a": {"b": {"d": 2}}}


def test_name_inside_the_spec_wins() -> None:
    assert DocSchema.from_dict({"name": "Real", "fields": {}}, "Other").name == "Real"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (["a"], "must be a mapping"),
        ({"fields": {}, "keys": ["a"]}, "unknown entries ['keys']"),
        ({"fields": ["a", "b"]}, "'fields' must be a mapping"),
        ({"fields": {"a": "string"}}, "unknown type 'string'"),
        ({"fields": {"a": 5}}, "a field spec is a mapping or a type name"),
        ({"fields": {"a": {"type": "str", "secret": True}}}, "unknown entries ['secret']"),
        ({"fields": {"a": {"hidden": "yes"}}}, "'hidden' and 'many' are booleans"),
        ({"fields": {"a": {"many": 1}}}, "'hidden' and 'many' are booleans"),
        ({"fields": {"a.b": "str"}}, "invalid field name 'a.b'"),
        ({"fields": {"_id": "str"}}, "invalid field name '_id'"),
        ({"fields": {"": "str"}}, "invalid field name ''"),
        ({"fields": {"a": {"type": "embedded"}}}, "an embedded field needs 'fields'"),
        ({"fields": {"a": {"type": "str", "fields": {}}}}, "'fields' is only for embedded documents"),
        ({"fields": {"a": "str"}, "key": ["b"]}, "key field 'b' is not a declared field"),
        ({"fields": {"a": "str"}, "key": [1]}, "'key' must be a field name or a list of field names"),
        ({"fields": {"a": "str"}, "privilege_keys": ["a"]}, "'privilege_keys' must map"),
        ({"fields": {"a": "str"}, "privilege_keys": {"p": []}}, "privilege key 'p' names no field"),
        ({"fields": {"a": "str"}, "privilege_keys": {"p": ["z"]}}, "privilege key 'p' names unknown field 'z'"),
        ({"fields": {"e": {"fields": {"x": {"type": "int", "hidden": 2}}}}}, "'hidden' and 'many' are booleans"),
    ],
)
def test_malformed_schema_is_refused(spec: Any, message: str) -> None:
    with pytest.raises(SchemaError) as info:
        DocSchema.from_dict(spec, "Bad")
    assert message in str(info.value)


def test_a_schema_needs_a_name() -> None:
    with pytest.raises(SchemaError, match="non-empty string name"):
        DocSchema.from_dict({"fields": {}})


def test_single_key_may_be_a_string() -> None:
    assert DocSchema.from_dict({"fields": {"a": "str"}, "key": "a"}, "A").key_fields == ("a",)


# -- validating published data -------------------------------------------------------------------------


GOOD = {
    "_id": "o-1",
    "order_id": "A",
    "customer": "c",
    "total": 3,  # an int is a valid float
    "count": 2,
    "paid": False,
    "tags": ["x", "y"],
    "margin": 0.5,
    "meta": {"anything": [1, {"goes": True}]},
    "note": [1, "two"],
    "lines": [{"sku": "a", "cost": 1}],
    "ship": {"city": "Paris", "geo": {"lat": 1.5}},
}


def test_valid_data_passes_and_every_field_may_be_null_or_missing() -> None:
    s = DocSchema.from_dict(ORDER_SPEC, "Order")
    assert s.validate(GOOD) is GOOD
    assert s.validate({"_id": 7, "customer": None, "ship": None, "lines": None})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (["not", "an", "object"], "a document must be a JSON object"),
        ({"customer": "c"}, "'_id' must be a non-empty string or an integer"),
        ({"_id": ""}, "'_id' must be a non-empty string or an integer"),
        ({"_id": True}, "'_id' must be a non-empty string or an integer"),
        ({"_id": 1.5}, "'_id' must be a non-empty string or an integer"),
        ({"_id": "o", "colour": "red"}, "Order: unknown field 'colour'"),
        ({"_id": "o", "customer": 5}, "Order.customer: expected str, got int"),
        ({"_id": "o", "count": 1.5}, "Order.count: expected int, got float"),
        ({"_id": "o", "count": True}, "Order.count: expected int, got bool"),
        ({"_id": "o", "total": "3"}, "Order.total: expected float, got str"),
        ({"_id": "o", "paid": 1}, "Order.paid: expected bool, got int"),
        ({"_id": "o", "meta": [1]}, "Order.meta: expected dict, got list"),
        ({"_id": "o", "tags": "x"}, "Order.tags: expected a list"),
        ({"_id": "o", "tags": ["x", 2]}, "Order.tags[1]: expected str, got int"),
        ({"_id": "o", "lines": {"sku": "a"}}, "Order.lines: expected a list"),
        ({"_id": "o", "lines": [{"sku": "a", "price": 1}]}, "Order.lines[0]: unknown field 'price'"),
        ({"_id": "o", "lines": ["a"]}, "Order.lines[0]: a document must be a JSON object"),
        ({"_id": "o", "ship": {"geo": {"lat": "n"}}}, "Order.ship.geo.lat: expected float, got str"),
        ({"_id": "o", "ship": {"geo": {"lon": 1}}}, "Order.ship.geo: unknown field 'lon'"),
    ],
)
def test_invalid_data_is_refused_naming_the_field(data: Any, message: str) -> None:
    s = DocSchema.from_dict(ORDER_SPEC, "Order")
    with pytest.raises(DocumentError) as info:
        s.validate(data)
    assert message in str(info.value)


# -- loading from dicts and files ----------------------------------------------------------------------


def test_load_schemas_from_a_dict() -> None:
    schemas = load_schemas({"Order": ORDER_SPEC, "Note": {"fields": {"text": "str"}}})
    assert set(schemas) == {"Order", "Note"}
    assert schemas["Order"].name == "Order"
    assert schemas["Order"].hidden_fields == {"margin"}


def test_load_schemas_under_a_classes_table() -> None:
    schemas = load_schemas({"classes": {"Note": {"fields": {"text": "str"}}}})
    assert list(schemas) == ["Note"]


def test_load_schemas_from_a_json_file(tmp_path: Path) -> None:
    path = tmp_path / "classes.json"
    path.write_text(json.dumps({"Order": ORDER_SPEC}), encoding="utf-8")
    schemas = load_schemas(path)
    assert schemas["Order"].fields["lines"].embedded is not None
    assert load_schemas(str(path))["Order"].key_fields == ("order_id",)


def test_load_schemas_from_a_toml_config_file(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text(ORDER_TOML, encoding="utf-8")
    schemas = load_schemas(path)
    assert set(schemas) == {"Order", "Note"}
    order = schemas["Order"]
    assert order.key_fields == ("order_id",)
    assert order.privilege_keys == {"customer": ("customer",)}
    assert order.hidden_fields == {"margin"}
    lines = order.fields["lines"].embedded
    assert lines is not None and lines.hidden_fields == {"cost"}
    data = {"_id": "1", "order_id": "A", "margin": 1.0, "lines": [{"sku": "x", "cost": 2.0}]}
    assert compile_catalog(None, order)(order.validate(data)) == {"_id": "1", "order_id": "A", "lines": [{"sku": "x"}]}


def test_missing_file_is_a_schema_error(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="cannot read schema file"):
        load_schemas(tmp_path / "nope.json")


def test_invalid_json_file_is_a_schema_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{'Order': ", encoding="utf-8")
    with pytest.raises(SchemaError, match="not valid JSON"):
        load_schemas(path)


def test_invalid_toml_file_is_a_schema_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[classes.Order\nfields = 1", encoding="utf-8")
    with pytest.raises(SchemaError, match="not valid TOML"):
        load_schemas(path)


def test_file_with_a_malformed_class_is_a_schema_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[classes.Order.fields]\na = "text"\n', encoding="utf-8")
    with pytest.raises(SchemaError, match="unknown type 'text'"):
        load_schemas(path)


@pytest.mark.parametrize("source", [["Order"], {"classes": ["Order"]}])
def test_classes_must_be_a_mapping(source: Any, tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match="mapping"):
        load_schemas(source)
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(source), encoding="utf-8")
    with pytest.raises(SchemaError, match="mapping"):
        load_schemas(path)


def test_a_missing_id_names_the_class_key_that_usually_gives_it() -> None:
    s = DocSchema.from_dict({"key": ["order_id"], "fields": {"order_id": "str"}}, "Order")
    with pytest.raises(DocumentError, match=re.escape("this class's key is order_id: e.g. \"_id\": \"A-1\"")):
        s.validate({"order_id": "A-1"})
    with pytest.raises(DocumentError, match=re.escape("_id\": \"...\"")):  # no key value to show either
        s.validate({})
    with pytest.raises(DocumentError) as plain:  # an _id of the wrong kind: no hint needed
        s.validate({"_id": 1.5, "order_id": "A-1"})
    assert "key is" not in str(plain.value)
