"""The original ``Broadcaster`` API as an application built on it uses it: hooks it overrides, documents
of its own (xia-engine style: ``check_scope``, ``get_display_data``, ``check_acl``), values Python's
``json`` encodes."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, ClassVar

import pytest

from helpers import fresh
from xia_broadcast import Broadcaster, Document


class OutOfScopeError(Exception):
    """A document library's own out-of-scope error (xia-engine has one of this name)."""


class EngineDoc:
    """A document as xia-engine offers it: scope, display and ACL checks of its own."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def check_scope(self, data_scope: list[dict[str, Any]] | None) -> None:
        for cond in data_scope or []:
            if self.data.get(cond["fn"]) != cond["val"]:
                raise OutOfScopeError(f"{cond['fn']} is not {cond['val']}")

    def get_display_data(self, catalog: dict[str, Any] | None = None, show_hidden: bool = False,
                         **_: Any) -> dict[str, Any]:
        return {k: v for k, v in self.data.items() if not catalog or k in catalog or k == "_id"}

    def check_acl(self, acl: Any, act: str = "read", doc: Any = None, raise_error: bool = True) -> bool:
        return acl is None or any(i["obj"] in ("*", f"EngineDoc/{self.data['_id']}") and act in i["act"]
                                  for i in acl["content"])


def json_broadcaster() -> type[Any]:
    class App(Broadcaster):
        """Overrides only send_json_async, as some applications on the original did."""
        got: ClassVar[list[tuple[Any, dict[str, Any]]]] = []

        @classmethod
        async def send_json_async(cls, websocket: Any, content: dict[str, Any]) -> None:
            cls.got.append((websocket, content))

    App.got = []
    return App


async def test_a_subclass_overriding_only_send_json_async_receives_every_document_through_it() -> None:
    app = json_broadcaster()
    await app.subscribe("w", "EngineDoc")
    for i in range(3):
        await app.document_sent_async(EngineDoc({"_id": f"d{i}", "n": i}), "I", f"000{i}")
    assert await app.flush()
    assert app.got == [("w", {"doc_class": "EngineDoc", "op": "I", "seq": f"000{i}",
                              "message": {"_id": f"d{i}", "n": i}}) for i in range(3)]


async def test_a_documents_own_out_of_scope_error_skips_it_quietly(caplog: pytest.LogCaptureFixture) -> None:
    app = json_broadcaster()
    await app.subscribe("eu", "EngineDoc", data_scope=[{"fn": "region", "op": "==", "val": "EU"}])
    await app.subscribe("all", "EngineDoc")
    with caplog.at_level(logging.INFO, logger="xia_broadcast"):
        for i, region in enumerate(["US", "EU", "US"]):
            await app.document_sent_async(EngineDoc({"_id": f"d{i}", "region": region}), "I", f"000{i}")
        assert await app.flush()
    assert [c["message"]["_id"] for w, c in app.got if w == "eu"] == ["d1"]
    assert [c["message"]["_id"] for w, c in app.got if w == "all"] == ["d0", "d1", "d2"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records


async def test_values_pythons_json_encodes_are_encoded_never_dropped() -> None:
    text = fresh()
    await text.subscribe("w", "EngineDoc")
    await text.document_sent_async(EngineDoc({"_id": "big", "n": 2**70, "by_code": {1: "one"}, "s": "é"}), "I", "1")
    assert await text.flush()
    assert [m["message"] for m in text.to("w")] == [{"_id": "big", "n": 2**70, "by_code": {"1": "one"}, "s": "é"}]


async def test_an_acl_object_as_the_documents_own_check_acl_reads_it() -> None:
    app = json_broadcaster()
    await app.subscribe("d1-reader", "EngineDoc", acl={"content": [{"obj": "EngineDoc/d1", "act": "read"}]})
    await app.subscribe("nobody", "EngineDoc", acl={"content": []})
    for i in range(3):
        await app.document_sent_async(EngineDoc({"_id": f"d{i}"}), "I", f"000{i}")
    assert await app.flush()
    assert [(w, c["message"]["_id"]) for w, c in app.got] == [("d1-reader", "d1")]


class Event(Document):
    at: datetime
    title: str = ""


async def test_datetime_values_in_a_scope_work_through_the_library() -> None:
    app = json_broadcaster()
    app.register_class(Event)
    await app.subscribe("w", "Event", data_scope=[{"fn": "at", "op": ">=", "val": datetime(2024, 6, 1)}])
    await app.document_sent_async(Event(_id="e1", at=datetime(2024, 5, 1)), "I", "1")
    await app.document_sent_async(Event(_id="e2", at=datetime(2024, 7, 1, 12)), "I", "2")
    assert await app.flush()
    assert [c["message"]["_id"] for _, c in app.got] == ["e2"]
