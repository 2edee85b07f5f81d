"""docs/semantics.md is executable: every example block and every table row is checked against the code."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from helpers import fresh
from xia_broadcast.core.acl import Acl, check_acl, subjects_of
from xia_broadcast.core.schema import DocSchema
from xia_broadcast.core.scope import compile_scope
from xia_broadcast.errors import SubscriptionError

DOC_PATH = Path(__file__).resolve().parents[1] / "docs" / "semantics.md"
TEXT = DOC_PATH.read_text(encoding="utf-8")


def blocks(kind: str) -> list[Any]:
    return [json.loads(b) for b in re.findall(rf"```json {kind}\n(.*?)```", TEXT, re.S)]


def table(header: str) -> list[list[str]]:
    """The rows of the markdown table whose header line starts with ``header``, as lists of cells."""
    lines = TEXT[TEXT.index(header):].splitlines()[2:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))])
    assert rows, header
    return rows


def code(cell: str) -> str:
    match = re.fullmatch(r"`(.*)`.*", cell)
    assert match, cell
    return match.group(1)


(SCHEMA_SPEC,) = blocks("schema")
SCHEMA = DocSchema.from_dict(SCHEMA_SPEC)
(DOCUMENT,) = blocks("document")
EXAMPLES = blocks("example")


def resolve(doc: Any) -> dict[str, Any]:
    if doc == "o-1":
        return dict(DOCUMENT)
    if isinstance(doc, dict) and list(doc) == ["o-1"]:
        return {**DOCUMENT, **doc["o-1"]}
    assert isinstance(doc, dict)
    return doc


def test_the_running_document_fits_its_schema() -> None:
    assert SCHEMA.name == "Order"
    SCHEMA.validate(DOCUMENT)
    assert len(EXAMPLES) >= 10


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"example-{i + 1}" for i in range(len(EXAMPLES))])
async def test_each_example_delivers_exactly_what_the_doc_says(example: dict[str, Any]) -> None:
    b = fresh(SCHEMA)
    ws = object()
    await b.subscribe(ws, "Order", **example["subscribe"])
    for change in example["publish"]:
        assert b.publish("Order", change["op"], resolve(change["doc"]), seq=change["seq"]) == change["seq"]
    assert await b.flush()
    assert [json.loads(m) for _, m in b.sent] == example["delivered"]


def value_at(doc: Any, path: str) -> Any:
    values = [doc]
    for part in path.split("."):
        nxt = []
        for v in values:
            for item in v if isinstance(v, list) else [v]:
                if isinstance(item, dict) and part in item:
                    nxt.append(item[part])
        values = nxt
    if not values:
        return "missing"
    return values[0] if len(values) == 1 else values


@pytest.mark.parametrize("row", table("| field value | condition | in scope |"), ids=lambda r: r[1])
def test_each_scope_table_row(row: list[str]) -> None:
    value, condition, verdict = row
    cond = json.loads(code(condition))
    shown = "missing" if value == "missing" else json.loads(code(value))
    assert value_at(DOCUMENT, cond["fn"]) == shown
    assert verdict.split()[0] in ("yes", "no")
    assert compile_scope([cond])(DOCUMENT) is (verdict.split()[0] == "yes")


@pytest.mark.parametrize("row", table("| ACL content | reads `o-1` |"), ids=lambda r: r[0])
def test_each_acl_table_row(row: list[str]) -> None:
    content, verdict = row
    acl = Acl.coerce({"content": json.loads(code(content))})
    assert check_acl(acl, subjects_of("Order", DOCUMENT, SCHEMA)) is (verdict.split()[0] == "yes")


def test_the_subjects_the_doc_names() -> None:
    assert subjects_of("Order", DOCUMENT, SCHEMA) == ("Order/key/A-1", "Order/customer/acme")


REFUSED_WHEN = {"always": {}, "strict": {"strict": True}, "without hidden permission": {"hidden_allowed": False}}


@pytest.mark.parametrize("row", table("| request | refused | error | code | message |"), ids=lambda r: r[0])
async def test_each_refusal_table_row(row: list[str]) -> None:
    request, when, error, close_code, message = row
    name, _, value = code(request).partition(": ")
    b = fresh(SCHEMA)
    if when != "always":  # accepted unless asked for
        await b.subscribe(object(), "Order", **{name: json.loads(value)})
    with pytest.raises(SubscriptionError) as info:
        await b.subscribe(object(), "Order", **{name: json.loads(value)}, **REFUSED_WHEN[when])
    assert type(info.value).__name__ == code(error)
    assert info.value.code == int(close_code)
    expected = code(message)
    assert str(info.value).startswith(expected.split("[...]")[0]), (str(info.value), expected)
