"""The client's pure parts, without sockets: message parsing, reconnection delays, the handshake it sends."""

from __future__ import annotations

import random
from typing import Any

import pytest

from xia_broadcast.client import (
    Backoff,
    Control,
    DocumentMessage,
    Exit,
    HistoryGone,
    Listener,
    ProtocolError,
    ReplayDone,
    parse_message,
)


def test_document_messages_exits_and_control_messages_parse_to_their_types() -> None:
    doc = {"doc_class": "Order", "op": "U", "seq": "1-1", "message": {"_id": "A", "amount": 3.0}}
    assert parse_message(doc) == DocumentMessage("Order", "U", "1-1", {"_id": "A", "amount": 3.0})
    assert parse_message(doc).to_wire() == doc
    assert parse_message({"doc_class": "Order", "op": "X", "seq": "1-2", "message": {"_id": "A"}}) == \
        Exit("Order", "1-2", "A")
    assert parse_message({"_control": "replay_done", "class": "Order", "seq": "1-3"}) == ReplayDone("Order", "1-3")
    gone = {"_control": "history_gone", "class": "Order", "seq": "1-0", "oldest_seq": None}
    assert parse_message(gone) == HistoryGone("Order", "1-0", None)
    assert parse_message(gone).to_wire() == gone
    assert parse_message({"_control": "token_expiring", "expires_at": 12}) == Control("token_expiring",
                                                                                      {"expires_at": 12})


@pytest.mark.parametrize("bad", [
    [], "text", {"doc_class": "Order", "op": "I", "seq": 5, "message": {}},
    {"doc_class": "Order", "op": "I", "seq": "1", "message": []}, {"_control": 3},
    {"_control": "history_gone", "class": "Order", "seq": "1", "oldest_seq": 7},
])
def test_malformed_server_messages_are_protocol_errors(bad: object) -> None:
    with pytest.raises(ProtocolError):
        parse_message(bad)


def test_backoff_grows_exponentially_up_to_its_bound_with_full_jitter() -> None:
    b = Backoff(initial=0.5, factor=2.0, max_delay=4.0, rng=random.Random(7))
    assert [b.bound(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.bound(10_000) == 4.0  # no overflow however long it failed
    delays = [b.delay(3) for _ in range(2000)]
    assert all(0.0 <= d <= 2.0 for d in delays)
    assert min(delays) < 0.1 and max(delays) > 1.9  # spread over the whole range: full jitter
    with pytest.raises(ValueError):
        Backoff(factor=0.5)


async def test_the_handshake_asks_for_control_and_resumes_after_the_last_seq() -> None:
    lst = Listener("ws://127.0.0.1:1/ws", {"Order": {"data_scope": [], "after_seq": "5-0"}, "Customer": None,
                                           "Item": {"start_seq": "9-0"}},
                   api_key="k", app_name="shop", header={"X-Extra": "1"})
    assert await lst.handshake() == {
        "Order": {"data_scope": [], "after_seq": "5-0"},
        "Customer": {},
        "Item": {},  # start_seq is a filter the listener applies itself
        "_header": {"X-Extra": "1", "X-Api-Key": "k", "X-App-Name": "shop"},
        "_options": {"control": True, "strict": True},  # strict checking unless turned off
    }
    lst.last_seq.update({"Customer": "3-0", "Item": "8-0"})
    hello = await lst.handshake()
    assert hello["Customer"] == {"after_seq": "3-0"} and hello["Item"] == {"after_seq": "8-0"}
    lenient = Listener("ws://127.0.0.1:1/ws", {"Order": {}}, strict=False)
    assert (await lenient.handshake())["_options"] == {"control": True}


async def test_a_token_source_is_called_for_every_handshake() -> None:
    tokens = iter(["t1", "t2"])

    async def fresh() -> str:
        return next(tokens)

    lst = Listener("ws://127.0.0.1:1/ws", {"Order": {}}, token=fresh)
    assert (await lst.handshake())["_header"] == {"Authorization": "Bearer t1"}
    assert (await lst.handshake())["_header"] == {"Authorization": "Bearer t2"}


@pytest.mark.parametrize(("url", "subs"), [
    ("http://127.0.0.1/ws", {"Order": {}}),
    ("ws://127.0.0.1/ws", {}),
    ("ws://127.0.0.1/ws", {"_header": {}}),
    ("ws://127.0.0.1/ws", {"Order": {"colour": 1}}),
])
def test_bad_arguments_are_refused_at_construction(url: str, subs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Listener(url, subs)  # type: ignore[arg-type]


@pytest.mark.parametrize("options", [{"strict": "yes"}, {"strict": None}, {"connect_attempts": 0}])
def test_bad_options_are_refused_at_construction(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Listener("ws://127.0.0.1/ws", {"Order": {}}, **options)
