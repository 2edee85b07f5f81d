"""An original client against ``xia-broadcast serve``: it gets what the original server would have sent it,
minus the original's faults (docs/compatibility.md). One test per rule of the compatibility issue."""

from __future__ import annotations

import json
from typing import Any

import pytest
from original_listener import OriginalListener

from helpers import CLASSES, ServerFactory, order, read_until_closed, refused, subscribe
from xia_broadcast.core.schema import DocSchema
from xia_broadcast.server.config import ApiKey

SHIPMENT = DocSchema.from_dict({
    "key": ["ref"],
    "fields": {
        "ref": "str",
        "status": "str",
        "tags": "list",
        "cost": {"type": "float", "hidden": True},
        "ship_to": {"fields": {"city": "str", "door_code": {"type": "str", "hidden": True}}},
        "lines": {"many": True, "fields": {"sku": "str", "qty": "int", "cost": {"type": "float", "hidden": True}}},
    },
}, "Shipment")
CLASSES_WITH_SHIPMENT = {**CLASSES, "Shipment": SHIPMENT}


def shipment(ref: str, **fields: Any) -> dict[str, Any]:
    doc = {"_id": ref, "ref": ref, "status": "new", "tags": ["a", "b"], "cost": 9.5,
           "ship_to": {"city": "Paris", "door_code": "1234"},
           "lines": [{"sku": "pen", "qty": 2, "cost": 1.5}, {"sku": "ink", "qty": 10, "cost": 0.2}]}
    doc.update(fields)
    return doc


KEYS = {
    "k-acme": ApiKey("alice", {"content": [{"obj": "Order/customer/acme", "act": "read"}]}, app_name="shop"),
    "k-none": ApiKey("nobody", {"content": []}, app_name="shop"),
    "k-write": ApiKey("writer", {"content": [{"obj": "Order/*", "act": "write"}]}, app_name="shop"),
    "k-root": ApiKey("root", None, app_name="shop", show_hidden=True),
    "k-cust": ApiKey("carol", {"content": [{"obj": "Customer/*", "act": "read"}]}, app_name="shop"),
}


def header(key: str) -> dict[str, str]:
    return {"X-App-Name": "shop", "X-Api-Key": key}


# -- 1. an ACL never refuses a subscription -----------------------------------------------------------------


async def test_an_acl_that_grants_nothing_subscribes_and_receives_only_what_it_may_read(
        make_server: ServerFactory) -> None:
    server = await make_server(api_keys=KEYS)
    acme = OriginalListener(server.url, {"Order": {}}, header("k-acme"))
    carol = OriginalListener(server.url, {"Order": {}, "Customer": {}}, header("k-cust"))
    nothing = OriginalListener(server.url, {"Order": {}, "Customer": {}}, header("k-none"))
    writer = OriginalListener(server.url, {"Order": {}}, header("k-write"))
    root = OriginalListener(server.url, {"Order": {}}, header("k-root"))
    for listener in (acme, carol, nothing, writer, root):
        confirmation = await listener.connect()
        assert "Order" in confirmation
    publish = server.service.publish_nowait
    seqs = [publish("Order", "I", order(i, customer=c)) for i, c in enumerate(["acme", "globex", "acme"])]
    sentinel = publish("Order", "I", order(99, customer="acme"))
    assert [m["seq"] for m in await acme.until("O-000099")] == [seqs[0], seqs[2], sentinel]
    assert [m["seq"] for m in await root.until("O-000099")] == [*seqs, sentinel]
    # carol reads no Order: a Customer change published after the Orders is the first thing she gets
    cseq = publish("Customer", "I", {"_id": "c1", "customer_id": "c1", "name": "Ann"})
    assert (await carol.next())["seq"] == cseq
    # an empty ACL and a write-only ACL read nothing: a graceful shutdown flushes what was queued for them
    # before it closes (1001), and that is nothing
    await server.shutdown()
    for listener in (nothing, writer):
        assert listener.ws is not None
        messages, code, _ = await read_until_closed(listener.ws)
        assert (messages, code) == ([], 1001)
    for listener in (acme, carol, nothing, writer, root):
        await listener.close()


# -- 2. catalogs as xia-engine writes them ------------------------------------------------------------------


async def test_catalogs_with_lazy_flags_undeclared_names_and_sub_catalogs_on_plain_fields(
        make_server: ServerFactory) -> None:
    server = await make_server(classes=CLASSES_WITH_SHIPMENT)
    catalog = {"status": True, "tags": False, "ship_to": {"city": True, "planet": None},
               "lines": {"sku": False, "qty": None}, "colour": None, "ref": {"x": None}}
    listener = OriginalListener(server.url, {"Shipment": {"catalog": catalog}})
    confirmation = await listener.connect()
    assert confirmation["Shipment"]["catalog"] == catalog  # echoed as given, as the original
    server.service.publish_nowait("Shipment", "I", shipment("S-1"))
    msg = await listener.next()
    assert msg["message"] == {"_id": "S-1", "status": "new", "tags": ["a", "b"], "ship_to": {"city": "Paris"},
                              "lines": [{"sku": "pen", "qty": 2}, {"sku": "ink", "qty": 10}], "ref": "S-1"}
    await listener.close()
    # strict checking is there for clients that ask for it
    code, reason, _ = await refused(server.url, json.dumps({"Shipment": {"catalog": catalog},
                                                            "_options": {"strict": True}}))
    assert code == 4421 and "has no field" in reason


async def test_a_catalog_of_only_undeclared_names_gives_the_id_never_everything(make_server: ServerFactory) -> None:
    server = await make_server(classes=CLASSES_WITH_SHIPMENT)
    listener = OriginalListener(server.url, {"Shipment": {"catalog": {"colour": None}}})
    await listener.connect()
    server.service.publish_nowait("Shipment", "I", shipment("S-1"))
    assert (await listener.next())["message"] == {"_id": "S-1"}
    await listener.close()


# -- 3. extra keys ------------------------------------------------------------------------------------------


async def test_extra_keys_are_accepted_and_echoed_and_server_keys_are_never_taken_from_the_client(
        make_server: ServerFactory) -> None:
    server = await make_server(api_keys=KEYS)
    listener = OriginalListener(server.url, {
        "Order": {"lazy": True, "id_only": False, "acl": None, "user_name": "mallory", "start_time": 1.0,
                  "catalog": {"customer": None}},
        "_trace": {"id": 7},
    }, header("k-acme"))
    confirmation = await listener.connect()
    params = confirmation["Order"]
    assert {"data_scope", "catalog", "show_hidden", "start_seq", "acl", "user_name", "start_time"} <= set(params)
    assert params["lazy"] is True and params["id_only"] is False
    assert params["user_name"] == "alice" and params["acl"] == KEYS["k-acme"].acl
    assert params["start_time"] > 1_000_000_000  # the server's clock, not the client's 1.0
    assert not {"control", "exits", "strict", "hidden_allowed"} & set(params)
    # the client's "acl": null did not lift its ACL
    server.service.publish_nowait("Order", "I", order(1, customer="globex"))
    server.service.publish_nowait("Order", "I", order(2, customer="acme"))
    assert [m["message"]["_id"] for m in await listener.until("O-000002")] == ["O-000002"]
    await listener.close()


# -- 4. data scopes as xia-engine evaluates them ------------------------------------------------------------


async def test_scopes_as_the_original_reads_them(make_server: ServerFactory) -> None:
    server = await make_server(classes=CLASSES_WITH_SHIPMENT)
    cases = {
        "substring": [{"fn": "status", "op": "in", "val": "new or late"}],
        "whole-list": [{"fn": "tags", "op": "==", "val": ["a", "b"]}],
        "undeclared": [{"fn": "colour", "op": "==", "val": None}],
        "extra-key": [{"fn": "status", "op": "==", "val": "late", "comment": "x"}],
    }
    listeners = {name: OriginalListener(server.url, {"Shipment": {"data_scope": scope}})
                 for name, scope in cases.items()}
    for listener in listeners.values():
        await listener.connect()
    publish = server.service.publish_nowait
    publish("Shipment", "I", shipment("S-1"))  # status new, tags [a, b]
    publish("Shipment", "I", shipment("S-2", status="late", tags=["b", "a"]))
    publish("Shipment", "I", shipment("S-3", status="gone", tags=["a", "b"]))
    publish("Shipment", "I", shipment("S-9", status="late", tags=["a", "b"]))  # in every scope: a sentinel
    got = {name: [m["message"]["_id"] for m in await listener.until("S-9")] for name, listener in listeners.items()}
    assert got == {"substring": ["S-1", "S-2", "S-9"], "whole-list": ["S-1", "S-3", "S-9"],
                   "undeclared": ["S-1", "S-2", "S-3", "S-9"], "extra-key": ["S-2", "S-9"]}
    for listener in listeners.values():
        await listener.close()
    # an unknown operator is still refused at subscribe (the original crashed at delivery)
    code, _, _ = await refused(server.url, json.dumps({"Shipment": {"data_scope": [{"fn": "status", "op": "like",
                                                                                    "val": "x"}]}}))
    assert code == 4420


# -- 5. show_hidden -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("flag", "shown"), [(1, True), ("yes", True), (True, True), (0, False), ("no", False),
                                             (None, False), ("false", False)])
async def test_show_hidden_takes_the_values_the_original_took(
        make_server: ServerFactory, flag: Any, shown: bool) -> None:
    server = await make_server()
    listener = OriginalListener(server.url, {"Order": {"show_hidden": flag}})
    await listener.connect()
    server.service.publish_nowait("Order", "I", order(1))
    assert ("margin" in (await listener.next())["message"]) is shown
    await listener.close()


async def test_hidden_fields_need_a_grant_on_an_authenticated_server_unless_the_setting_restores_the_original(
        make_server: ServerFactory) -> None:
    strict_server = await make_server(api_keys=KEYS)
    code, reason, _ = await refused(strict_server.url, json.dumps({"Order": {"show_hidden": 1},
                                                                   "_header": header("k-acme")}))
    assert code == 4403 and "show_hidden not permitted" in reason
    code, reason, _ = await refused(strict_server.url, json.dumps({
        "Order": {"data_scope": [{"fn": "margin", "op": ">", "val": 0.2}]}, "_header": header("k-acme")}))
    assert code == 4403 and "'margin' is hidden" in reason
    open_server = await make_server(api_keys=KEYS, show_hidden_requires_grant=False)
    listener = OriginalListener(open_server.url, {"Order": {"show_hidden": 1, "data_scope": [
        {"fn": "margin", "op": ">", "val": 0.2}]}}, header("k-acme"))
    await listener.connect()
    open_server.service.publish_nowait("Order", "I", order(1, margin=0.1))
    open_server.service.publish_nowait("Order", "I", order(2, margin=0.3))
    msg = await listener.next()
    assert msg["message"]["_id"] == "O-000002" and msg["message"]["margin"] == 0.3
    await listener.close()


# -- 6. start_seq keeps its meaning -------------------------------------------------------------------------


async def test_start_seq_skips_older_live_changes_and_a_reconnect_replays_nothing(make_server: ServerFactory) -> None:
    server = await make_server()
    publish = server.service.publish_nowait
    first = publish("Order", "I", order(1))
    publish("Order", "I", order(2))
    listener = OriginalListener(server.url, {"Order": {"start_seq": first}})
    await listener.connect()
    third = publish("Order", "I", order(3))
    assert [m["seq"] for m in await listener.until("O-000003")] == [third]  # nothing replayed
    await listener.reconnect()  # the original resends the same start_seq
    fourth = publish("Order", "I", order(4))
    assert [m["seq"] for m in await listener.until("O-000004")] == [fourth]  # no duplicate of 1, 2, 3
    await listener.close()


async def test_replay_is_asked_for_explicitly(make_server: ServerFactory) -> None:
    server = await make_server()
    seqs = [server.service.publish_nowait("Order", "I", order(i)) for i in range(3)]
    after, _ = await subscribe(server.url, {"Order": {"after_seq": seqs[0]}})
    from_, _ = await subscribe(server.url, {"Order": {"from_seq": seqs[1]}})
    async with after, from_:
        assert [json.loads(await after.recv())["seq"] for _ in range(2)] == seqs[1:]
        assert json.loads(await from_.recv())["seq"] == seqs[1]


# -- 7. scope exits only for clients that ask ---------------------------------------------------------------


async def test_exits_reach_only_clients_that_ask_for_them(make_server: ServerFactory) -> None:
    server = await make_server()
    scope = [{"fn": "region", "op": "==", "val": "EU"}]
    original = OriginalListener(server.url, {"Order": {"data_scope": scope}})
    await original.connect()
    asking, _ = await subscribe(server.url, {"Order": {"data_scope": scope}, "_options": {"exits": True}})
    publish = server.service.publish_nowait
    publish("Order", "I", order(1, region="EU"))
    publish("Order", "U", order(1, region="US"))  # leaves the scope
    publish("Order", "D", order(1, region="US"))  # deleted while out of the scope
    publish("Order", "I", order(9, region="EU"))
    assert [m["op"] for m in await original.until("O-000009")] == ["I", "I"]
    async with asking:
        ops = [json.loads(await asking.recv())["op"] for _ in range(3)]
    assert ops == ["I", "X", "I"]
    await original.close()


# -- the original's close codes ------------------------------------------------------------------------------


async def test_the_original_close_codes(make_server: ServerFactory) -> None:
    server = await make_server(api_keys=KEYS)
    assert (await refused(server.url, "not json"))[:2] == (4400, "Connection information should be a Json string")
    assert (await refused(server.url, json.dumps({"Order": {}})))[:2] == (
        4401, "App Name or API Key missing for authentication")
    assert (await refused(server.url, json.dumps({"Invoice": {}, "_header": header("k-acme")})))[:2] == (
        4404, "Class requested Not Found")
