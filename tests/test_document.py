"""The ``Document`` base class: schema from fields, and the original document protocol, also as the
Broadcaster asks it (serialization aliases, a document overriding the protocol)."""

from __future__ import annotations

from typing import Any, ClassVar, Optional

import pytest
from pydantic import ConfigDict
from pydantic.alias_generators import to_camel

from helpers import Socket, fresh
from xia_broadcast import Acl, Document, EmbeddedDocument, field
from xia_broadcast.core.catalog import compile_catalog
from xia_broadcast.errors import (
    AuthorizationError,
    InvalidCatalogError,
    InvalidScopeError,
    OutOfScopeError,
    SchemaError,
)


class Address(EmbeddedDocument):
    city: str = ""
    door_code: str = field("", hidden=True)


class Line(EmbeddedDocument):
    sku: str
    qty: int = 1
    cost: float = field(0.0, hidden=True)


class Order(Document):
    privilege_keys: ClassVar[dict[str, list[str]]] = {"customer": ["customer"]}

    order_id: str = field(key=True)
    customer: str = ""
    status: str = "new"
    total: float = 0.0
    margin: float = field(0.0, hidden=True)
    ship_to: Address = Address()
    bill_to: Optional[Address] = None  # noqa: UP045 (typing.Optional on purpose; `| None` below)
    lines: list[Line] = []
    tags: list[str] = field(default_factory=list)


class Note(Document):
    text: str = ""


def make_order(**kw: Any) -> Order:
    base: dict[str, Any] = {
        "_id": "o-1",
        "order_id": "A-1",
        "customer": "c-7",
        "total": 120.0,
        "margin": 0.25,
        "ship_to": Address(city="Paris", door_code="1234"),
        "lines": [Line(sku="a", qty=2, cost=1.5), Line(sku="b", cost=3.0)],
        "tags": ["rush"],
    }
    return Order(**{**base, **kw})


# -- schema --------------------------------------------------------------------------------------------


def test_schema_of_a_document_class() -> None:
    s = Order.doc_schema()
    assert s.name == "Order"
    assert s.key_fields == ("order_id",)
    assert s.privilege_keys == {"customer": ("customer",)}
    assert s.hidden_fields == {"margin"}
    assert "_id" not in s.fields and "id" not in s.fields
    assert s.fields["lines"].many and s.fields["lines"].embedded is not None
    assert s.fields["lines"].embedded.hidden_fields == {"cost"}
    assert not s.fields["ship_to"].many and s.fields["ship_to"].embedded is not None
    assert s.fields["bill_to"].embedded is not None  # Optional[Address] is an embedded document
    assert s.fields["tags"].type == "list"
    assert s.fields["total"].type == "float"
    assert Order.doc_schema() is s  # computed once


def test_id_is_stored_as_underscore_id_and_generated_when_absent() -> None:
    assert make_order().stored_data()["_id"] == "o-1"
    assert Order(id="o-2", order_id="B").stored_data()["_id"] == "o-2"
    a, b = Order(order_id="x"), Order(order_id="x")
    assert a.id and b.id and a.id != b.id


def test_stored_data_keeps_everything_hidden_fields_included() -> None:
    data = make_order().stored_data()
    assert data["margin"] == 0.25
    assert data["ship_to"] == {"city": "Paris", "door_code": "1234"}
    assert data["lines"][0] == {"sku": "a", "qty": 2, "cost": 1.5}


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValueError):
        Order(order_id="A", colour="red")


# -- get_display_data ----------------------------------------------------------------------------------


def test_display_data_leaves_hidden_fields_out_at_every_depth() -> None:
    assert make_order().get_display_data() == {
        "_id": "o-1",
        "order_id": "A-1",
        "customer": "c-7",
        "status": "new",
        "total": 120.0,
        "ship_to": {"city": "Paris"},
        "bill_to": None,
        "lines": [{"sku": "a", "qty": 2}, {"sku": "b", "qty": 1}],
        "tags": ["rush"],
    }


def test_display_data_with_show_hidden_is_the_whole_document() -> None:
    order = make_order()
    assert order.get_display_data(show_hidden=True) == order.stored_data()


def test_display_data_through_a_catalog() -> None:
    order = make_order()
    assert order.get_display_data(catalog={"total": None, "lines": {"sku": None}}) == {
        "_id": "o-1",
        "total": 120.0,
        "lines": [{"sku": "a"}, {"sku": "b"}],
    }
    assert order.get_display_data(catalog={"margin": None, "ship_to": {"door_code": None}}) == {
        "_id": "o-1",
        "ship_to": {},
    }
    assert order.get_display_data(catalog={"margin": None, "ship_to": {"door_code": None}}, show_hidden=True) == {
        "_id": "o-1",
        "margin": 0.25,
        "ship_to": {"door_code": "1234"},
    }


def test_display_data_is_a_fresh_dict() -> None:
    order = make_order()
    order.get_display_data()["status"] = "changed"
    assert order.get_display_data()["status"] == "new"


# -- check_scope ---------------------------------------------------------------------------------------


def test_check_scope_passes_in_scope_and_raises_out_of_scope() -> None:
    order = make_order()
    order.check_scope(None)
    order.check_scope([])
    order.check_scope([{"fn": "total", "op": ">", "val": 100}, {"fn": "lines.sku", "op": "==", "val": "b"}])
    order.check_scope([{"fn": "ship_to.city", "op": "in", "val": ["Paris"]}])
    with pytest.raises(OutOfScopeError):
        order.check_scope([{"fn": "total", "op": ">", "val": 200}])
    with pytest.raises(OutOfScopeError):
        order.check_scope([{"fn": "total", "op": "==", "val": "120"}])  # type mismatch: out


def test_check_scope_can_test_hidden_fields_without_revealing_them() -> None:
    order = make_order()
    order.check_scope([{"fn": "margin", "op": "<", "val": 0.5}])
    with pytest.raises(OutOfScopeError):
        order.check_scope([{"fn": "margin", "op": ">", "val": 0.5}])


def test_check_scope_refuses_an_invalid_scope() -> None:
    with pytest.raises(InvalidScopeError, match="unknown operator"):
        make_order().check_scope([{"fn": "status", "op": "~", "val": "red"}])


def test_check_scope_reads_an_undeclared_field_as_none() -> None:
    with pytest.raises(OutOfScopeError):
        make_order().check_scope([{"fn": "colour", "op": "==", "val": "red"}])
    make_order().check_scope([{"fn": "colour", "op": "==", "val": None}])


# -- check_acl -----------------------------------------------------------------------------------------


def test_check_acl_by_key_field() -> None:
    order = make_order()
    assert order.check_acl({"content": [{"obj": "Order/key/A-1", "act": "read"}]})
    assert order.check_acl(Acl.from_display(content=[{"obj": "Order/*", "act": "read"}]))
    assert not order.check_acl({"content": [{"obj": "Order/key/o-1", "act": "read"}]}, raise_error=False)


def test_check_acl_by_privilege_key() -> None:
    order = make_order()
    assert order.check_acl({"content": [{"obj": "Order/customer/c-7", "act": "read"}]})
    assert not order.check_acl({"content": [{"obj": "Order/customer/c-8", "act": "read"}]}, raise_error=False)


def test_class_without_key_fields_uses_its_id() -> None:
    note = Note(_id="n-1", text="hi")
    assert note.check_acl({"content": [{"obj": "Note/key/n-1", "act": "read"}]})
    assert not note.check_acl({"content": [{"obj": "Note/key/n-2", "act": "read"}]}, raise_error=False)


def test_check_acl_action_none_and_empty() -> None:
    order = make_order()
    acl = {"content": [{"obj": "Order/*", "act": "read"}]}
    assert order.check_acl(acl, "read")
    assert not order.check_acl(acl, "write", order, False)  # the original's positional call
    assert order.check_acl(None)
    assert not order.check_acl({"content": []}, raise_error=False)


def test_check_acl_raises_authorization_error_by_default() -> None:
    with pytest.raises(AuthorizationError, match="read on Order o-1 is not granted"):
        make_order().check_acl({"content": [{"obj": "Invoice/*", "act": "read"}]})


# -- what a schema cannot describe is refused rather than leaked ---------------------------------------


def test_list_of_optional_embedded_documents_still_hides_their_hidden_fields() -> None:
    class Basket(Document):
        lines: list[Line | None] = []

    basket = Basket(_id="b", lines=[Line(sku="a", cost=9.0), None])
    assert basket.get_display_data() == {"_id": "b", "lines": [{"sku": "a", "qty": 1}, None]}


@pytest.mark.parametrize(
    "annotation",
    [dict[str, Line], Optional[dict[str, list[Line]]], Line | Address, tuple[Line, Address]],  # noqa: UP045
    ids=["dict", "dict-of-lists", "union", "mixed-tuple"],
)
def test_models_with_hidden_fields_where_no_schema_reaches_are_refused(annotation: Any) -> None:
    ns: dict[str, Any] = {"__annotations__": {"parts": annotation | None}, "parts": None}
    cls = type("Odd", (Document,), ns)
    with pytest.raises(SchemaError, match=r"Odd\.parts: .* has hidden fields"):
        cls.doc_schema()


def test_models_without_hidden_fields_may_go_anywhere() -> None:
    class Plain(EmbeddedDocument):
        x: int = 0

    class Holder(Document):
        by_name: dict[str, Plain] = {}

    holder = Holder(_id="h", by_name={"a": Plain(x=1)})
    assert holder.get_display_data() == {"_id": "h", "by_name": {"a": {"x": 1}}}


class TreeNode(EmbeddedDocument):
    name: str = ""
    children: list[TreeNode] = []


def test_recursive_documents_are_refused_with_a_clear_error() -> None:
    class Tree(Document):
        root: TreeNode = TreeNode()

    with pytest.raises(SchemaError, match="TreeNode contains itself"):
        Tree.doc_schema()


def test_an_unknown_embedded_field_is_named_from_the_document_class() -> None:
    with pytest.raises(InvalidCatalogError, match=r"^Order has no field 'lines\.price'$"):
        compile_catalog({"lines": {"price": None}}, Order.doc_schema(), strict=True)


# -- through the Broadcaster: what the document says is what subscribers get --------------------------------


class Aliased(Document):
    order_id: str = field(key=True, serialization_alias="orderRef")
    margin: float = field(0.0, hidden=True, serialization_alias="mrg")


class Camel(Document):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)
    order_id: str = field(key=True)
    secret_margin: float = field(0.0, hidden=True)


@pytest.mark.parametrize("doc", [Aliased(order_id="A", margin=0.42), Camel(order_id="A", secret_margin=0.42)])
async def test_hidden_fields_and_keys_follow_serialization_aliases(doc: Document) -> None:
    b = fresh()
    ws, acl_ws = Socket(), Socket()
    await b.subscribe(ws, type(doc).__name__)
    await b.subscribe(acl_ws, type(doc).__name__,
                      acl={"content": [{"obj": f"{type(doc).__name__}/key/A", "act": "read"}]})
    await b.document_sent_async(doc, "I", "1")
    assert await b.flush()
    for got in (b.to(ws), b.to(acl_ws)):
        assert len(got) == 1
        assert set(got[0]["message"]) == {"_id", "orderRef" if isinstance(doc, Aliased) else "orderId"}


class Secret(Document):
    owner: str = field(key=True)
    ssn: str = ""

    def check_acl(self, acl: Any, act: str = "read", doc: Any = None, raise_error: bool = True) -> bool:
        return acl is None

    def get_display_data(self, catalog: Any = None, show_hidden: bool = False, **_: Any) -> dict[str, Any]:
        return {"_id": self.id, "owner": self.owner}


async def test_a_document_overriding_the_original_protocol_is_asked_through_it() -> None:
    b = fresh()
    public, restricted = Socket("public"), Socket("restricted")
    await b.subscribe(public, "Secret")
    await b.subscribe(restricted, "Secret", acl={"content": [{"obj": "*", "act": "*"}]})
    await b.document_sent_async(Secret(id="s", owner="bob", ssn="123-45-6789"), "I", "1")
    assert await b.flush()
    assert [m["message"] for m in b.to(public)] == [{"_id": "s", "owner": "bob"}]
    assert b.to(restricted) == []
