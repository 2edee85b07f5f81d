"""Messages assembled from a change's fields encoded once (``fanout.FieldCodes``, ``SharedCatalog.message``)
are byte for byte what projecting and encoding the whole message makes (``envelope``), whatever the
catalog, hidden fields, embedded documents and values; what cannot be cut up is encoded whole, as before."""

from __future__ import annotations

import datetime
import math
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from xia_broadcast.core.catalog import flat_plan, validate_catalog
from xia_broadcast.core.change import Change
from xia_broadcast.core.schema import DocSchema
from xia_broadcast.fanout import Body, FieldCodes, Sharing, envelope

SCHEMA = DocSchema.from_dict({
    "key": ["name"],
    "fields": {
        "name": "str", "amount": "float", "note": "str",
        "secret": {"type": "str", "hidden": True},
        "address": {"type": "embedded", "fields": {"city": "str", "pin": {"type": "str", "hidden": True}}},
        "lines": {"type": "embedded", "many": True,
                  "fields": {"sku": "str", "cost": {"type": "float", "hidden": True}}},
        "plain": {"type": "embedded", "fields": {"a": "str", "b": "str"}},
    },
}, "Order")
NO_HIDDEN = DocSchema.from_dict({"fields": {"name": "str", "amount": "float", "note": "str"}}, "Order")
TOP_HIDDEN = DocSchema.from_dict({"fields": {"name": "str", "amount": "float", "note": "str",
                                            "secret": {"type": "str", "hidden": True}}}, "Order")


class Shown:
    """An object that encodes as its display data (as the original's documents do)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def get_display_data(self) -> Any:
        return {"shown": self.value}


scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=6) | st.sampled_from(["\u2028", "\"\\/", "\x00\x1f", "é€😀", "</script>"])
           | st.just(datetime.datetime(2026, 12, 5, 1, 2, 3)) | st.just(datetime.date(2026, 1, 1))
           | st.builds(Shown, st.integers(0, 9)) | st.just({1, 2}) | st.just((1, "a")))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=8)
# what orjson refuses: integers beyond 64 bits, keys that are not strings (encoded whole, by json)
refused = st.integers(2**64, 2**70) | st.dictionaries(st.integers(0, 3), st.integers(0, 3), min_size=1, max_size=2)
names = st.sampled_from(["_id", "name", "amount", "note", "secret", "address", "lines", "plain", "extra", "é"])
cuttable = st.dictionaries(names, values, max_size=8)
uncuttable = st.dictionaries(names | st.integers(0, 2), values | refused, max_size=8)
documents = (cuttable | cuttable | cuttable | uncuttable).map(
    lambda d: {"_id": "o-1", **{k: v for k, v in d.items() if k != "_id"}})
sub_catalogs = st.none() | st.just({}) | st.fixed_dictionaries({}, optional={
    "city": st.none(), "pin": st.none(), "sku": st.none(), "cost": st.none(), "a": st.none()})
catalogs = st.none() | st.just({}) | st.dictionaries(names, sub_catalogs | st.booleans(), max_size=5)


def whole(change: Change, data: dict[str, Any], op: str, catalog: dict[str, Any], show_hidden: bool) -> bytes:
    """The message as it is made without cutting up: the projection, encoded whole."""
    from xia_broadcast.core.catalog import compile_normalised
    body = Body(compile_normalised(catalog, change.schema, show_hidden)(data))
    return envelope(change.class_name, op, change.seq, body).data


@settings(max_examples=400, deadline=None)
@given(documents, documents, catalogs, st.booleans(), st.sampled_from([SCHEMA, NO_HIDDEN, TOP_HIDDEN, None]),
       st.sampled_from("IUDX"), st.text(max_size=3))
def test_a_message_from_cut_up_fields_is_the_whole_encoding_byte_for_byte(
        data: dict[Any, Any], prev: dict[Any, Any], catalog: Any, show_hidden: bool, schema: DocSchema | None,
        op: str, seq: str) -> None:
    normal = validate_catalog(catalog, schema)
    change = Change("Order", op, seq, data=data, schema=schema, prev=prev)
    sharing = Sharing()
    # the first catalog asking for a document encodes it whole; the second cuts it up (two catalogs that
    # differ only by their key in the registry: the same fields, so the same bytes)
    first, second = sharing.catalog(b"k", normal, show_hidden), sharing.catalog(b"k2", normal, show_hidden)
    first.views = second.views = 2  # remembered, as for several views
    for state in (data, prev, data):
        expected = whole(change, state, op, normal, show_hidden)
        assert first.message(change, state, op).data == expected, (normal, state)
        assert second.message(change, state, op).data == expected, (normal, state)
        other = "U" if op != "U" else "X"  # an op other than the change's (whose head the cut-up fields hold)
        assert second.message(change, state, other).data == whole(change, state, other, normal, show_hidden)
    plan = flat_plan(normal, schema, show_hidden)
    cuttable = all(type(k) is str for k in data) and all(_orjson_takes(v) for v in data.values())
    if plan is not None and cuttable:  # the second catalog cut the fields up, not encoded them whole
        assert sharing.codes is not None and sharing.codes.cuts[0] not in (None, FieldCodes.UNCUT)


def _orjson_takes(value: Any) -> bool:
    import orjson
    try:
        orjson.dumps(value, default=lambda o: o.get_display_data() if isinstance(o, Shown)
                     else list(o) if isinstance(o, (set, tuple)) else str(o))
    except TypeError:
        return False
    return True


def test_a_message_of_an_integer_beyond_64_bits_is_encoded_whole_by_json_as_before() -> None:
    change = Change("Order", "I", "1", data={"_id": "o", "big": 2**80, "f": math.inf}, schema=None)
    sharing = Sharing()
    sharing.catalog(b"k", {"big": None}, False).message(change, change.data, "I")  # a first catalog
    shared = sharing.catalog(b"k2", {}, False)
    assert shared.message(change, change.data, "I").data == \
        b'{"doc_class":"Order","op":"I","seq":"1","message":{"_id":"o","big":1208925819614629174706176,"f":Infinity}}'


def test_one_message_per_change_for_the_views_of_a_catalog_and_a_new_one_for_the_next_change() -> None:
    shared = Sharing().catalog(b"k", {"name": None}, False)
    shared.views = 2
    first = Change("Order", "I", "1", data={"_id": "a", "name": "x", "note": "n"}, schema=NO_HIDDEN)
    second = Change("Order", "I", "2", data={"_id": "a", "name": "x", "note": "n"}, schema=NO_HIDDEN)
    m1 = shared.message(first, first.data, "I")
    assert shared.message(first, first.data, "I") is m1
    assert shared.message(first, first.data, "U") is not m1  # another op, another message
    m2 = shared.message(second, second.data, "I")
    assert m2 is not m1 and m2.data == b'{"doc_class":"Order","op":"I","seq":"2","message":{"_id":"a","name":"x"}}'


@settings(max_examples=150, deadline=None)
@given(st.lists(documents, min_size=2, max_size=12), st.lists(catalogs, min_size=1, max_size=4), st.booleans(),
       st.sampled_from([SCHEMA, TOP_HIDDEN, None]), st.sampled_from([1, 2, 1024]))
def test_messages_stay_exact_across_changes_of_many_document_shapes(
        docs: list[dict[Any, Any]], catalog_list: list[Any], show_hidden: bool, schema: DocSchema | None,
        bound: int) -> None:
    """One Sharing and its catalogs over a run of changes whose documents have other fields, or the same
    fields in another order: each catalog's getter is found by the document's shape (remembered by
    identity, and in bounded tables that start again when full), never a getter of another shape."""
    import xia_broadcast.core.catalog as catalog_module
    import xia_broadcast.fanout as fanout_module
    saved = fanout_module.MAX_SHAPES, catalog_module.MAX_SHAPES_PER_PLAN
    fanout_module.MAX_SHAPES = catalog_module.MAX_SHAPES_PER_PLAN = bound
    try:
        sharing = Sharing()
        normals = [validate_catalog(c, schema) for c in catalog_list]
        shared = [sharing.catalog(b"k%d" % i, n, show_hidden) for i, n in enumerate(normals)] + \
                 [sharing.catalog(b"again%d" % i, n, show_hidden) for i, n in enumerate(normals)]
        for s in shared:
            s.views = 2
        for i, doc in enumerate(docs + [dict(reversed(list(d.items()))) for d in docs]):
            change = Change("Order", "U", str(i), data=doc, schema=schema)
            for s in shared:  # the first of each catalog encodes whole, the second from cut-up fields
                assert s.message(change, doc, "U").data == whole(change, doc, "U", s.catalog, show_hidden), \
                    (s.catalog, doc)
        assert len(sharing.shapes) <= bound
        assert all(plan is None or len(plan._pickers) <= bound for s in shared for plan in s.plans.values())
    finally:
        fanout_module.MAX_SHAPES, catalog_module.MAX_SHAPES_PER_PLAN = saved
