"""Data scopes: row filters compiled once, at subscribe time, into predicates.

A scope is a list of conditions ``{"fn": field, "op": operator, "val": value}``, all of which must hold.
``None`` or ``[]`` puts every document in scope.

Semantics (``docs/semantics.md`` has worked examples):

* ``fn`` is a field name or a dotted path into embedded documents (``lines.sku``). A missing field reads
  as ``None``. A path that crosses or ends in a list is tested against each element: the positive
  operators (``==  <  <=  >  >=  in``) hold when some element satisfies them, the negative ones
  (``!=  not in``) when every element does (so ``!=`` is the exact negation of ``==`` on lists too).
* Values compare only within one kind: numbers (int and float, not bool), strings, booleans. A comparison
  across kinds is a *type mismatch*, and a type mismatch is out of scope, for every operator: ``"5" == 5``
  is out, and so is ``"5" != 5``. ``None`` is comparable by ``==``/``!=``/``in``/``not in`` with anything;
  ordering against ``None`` is a mismatch.
* ``in`` / ``not in`` take a list of scalars; the field value is looked up among the elements of its own
  kind. When the list is not empty and holds no element of the value's kind, nor ``None`` (which is
  comparable with anything), that is a type mismatch: ``"5" in [5, 6]`` is out, ``"x" not in [None]`` is in.

An invalid scope raises :class:`~xia_broadcast.errors.InvalidScopeError` at compile time, never at delivery.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..errors import InvalidScopeError
from .schema import DocSchema

Predicate = Callable[[Mapping[str, Any]], bool]

OPERATORS = ("==", "!=", "<", "<=", ">", ">=", "in", "not in")
_ORDERING = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_NEGATIVE = frozenset({"!=", "not in"})
_SCALARS = (str, int, float, bool, type(None))


def kind(value: Any) -> str:
    """The comparison kind of a value: ``none``, ``bool``, ``num``, ``str`` or ``other``."""
    if value is None:
        return "none"
    t = type(value)
    if t is bool:
        return "bool"
    if t is int or t is float:
        return "num"
    if t is str:
        return "str"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "num"
    if isinstance(value, str):
        return "str"
    return "other"


def _always(_data: Mapping[str, Any]) -> bool:
    return True


def validate_scope(data_scope: Any, schema: DocSchema | None = None) -> list[dict[str, Any]]:
    """Check a scope's shape (and its paths against ``schema`` when one is known); return it as a list."""
    if data_scope is None:
        return []
    if not isinstance(data_scope, (list, tuple)):
        raise InvalidScopeError(f"data_scope must be a list of conditions, not {type(data_scope).__name__}")
    out = []
    for i, cond in enumerate(data_scope):
        where = f"data_scope[{i}]"
        if not isinstance(cond, Mapping):
            raise InvalidScopeError(f"{where} must be an object {{fn, op, val}}")
        extra = set(cond) - {"fn", "op", "val"}
        if extra:
            raise InvalidScopeError(f"{where}: unknown keys {sorted(extra)}")
        if "fn" not in cond or "op" not in cond or "val" not in cond:
            raise InvalidScopeError(f"{where}: needs 'fn', 'op' and 'val'")
        fn, op, val = cond["fn"], cond["op"], cond["val"]
        if not isinstance(fn, str) or not fn or any(not part for part in fn.split(".")):
            raise InvalidScopeError(f"{where}: 'fn' must be a field name or dotted path, got {fn!r}")
        if op not in OPERATORS:
            raise InvalidScopeError(f"{where}: unknown operator {op!r}, expected one of {list(OPERATORS)}")
        if op in ("in", "not in"):
            if not isinstance(val, (list, tuple)) or not all(isinstance(v, _SCALARS) for v in val):
                raise InvalidScopeError(f"{where}: '{op}' needs a list of scalar values")
        elif op in _ORDERING:
            if kind(val) not in ("num", "str"):
                raise InvalidScopeError(f"{where}: '{op}' needs a number or a string, got {val!r}")
        elif not isinstance(val, _SCALARS):
            raise InvalidScopeError(f"{where}: '{op}' needs a scalar value, got {type(val).__name__}")
        if schema is not None:
            _check_path(schema, fn, where)
        out.append({"fn": fn, "op": op, "val": list(val) if isinstance(val, tuple) else val})
    return out


def _check_path(schema: DocSchema, path: str, where: str) -> None:
    current: DocSchema | None = schema
    parts = path.split(".")
    for i, part in enumerate(parts):
        if current is None:
            return  # below a free-form field: anything goes
        if part == "_id" and not current.embedded and i == 0:
            if len(parts) > 1:
                raise InvalidScopeError(f"{where}: '_id' has no sub-fields")
            return
        spec = current.fields.get(part)
        if spec is None:
            raise InvalidScopeError(f"{where}: {schema.name} has no field {'.'.join(parts[: i + 1])!r}")
        if spec.embedded is None and i < len(parts) - 1 and not spec.free_form:
            raise InvalidScopeError(f"{where}: field {part!r} of {schema.name} has no sub-fields")
        current = spec.embedded


# -- compiled tests ------------------------------------------------------------------------------------
# Each test returns True (holds), False (does not hold) or None (type mismatch).


def _make_test(op: str, val: Any) -> Callable[[Any], bool | None]:
    if op in ("==", "!="):
        vk = kind(val)
        want_equal = op == "=="
        if val is None:
            def t_none(v: Any) -> bool | None:
                return (v is None) == want_equal
            return t_none

        def t_eq(v: Any) -> bool | None:
            if v is None:
                return not want_equal
            if kind(v) != vk:
                return None
            return bool(v == val) == want_equal
        return t_eq
    if op in _ORDERING:
        cmp, vk = _ORDERING[op], kind(val)

        def t_ord(v: Any) -> bool | None:
            if kind(v) != vk:
                return None
            return bool(cmp(v, val))
        return t_ord
    # in / not in: group the list by kind once
    by_kind: dict[str, set[Any]] = {}
    for item in val:
        by_kind.setdefault(kind(item), set()).add(item)
    # a value is comparable with the list when it holds an element of the value's kind or a None
    mismatch_possible, want_in = bool(val) and "none" not in by_kind, op == "in"

    def t_in(v: Any) -> bool | None:
        same = by_kind.get(kind(v))
        if same is None:
            if v is None or not mismatch_possible:
                return not want_in
            return None
        return (v in same) == want_in
    return t_in


def _candidates(data: Any, parts: Sequence[str]) -> list[Any]:
    """Every value the path reaches, lists flattened (a missing field gives ``[None]``)."""
    current = [data]
    for part in parts:
        nxt: list[Any] = []
        for item in current:
            if isinstance(item, list):
                for el in item:
                    nxt.append(el.get(part) if isinstance(el, Mapping) else None)
            else:
                nxt.append(item.get(part) if isinstance(item, Mapping) else None)
        current = nxt
    out: list[Any] = []
    for item in current:
        if isinstance(item, list):
            out.extend(item)
        else:
            out.append(item)
    return out


def _compile_condition(fn: str, op: str, val: Any) -> Predicate:
    test = _make_test(op, val)
    negative = op in _NEGATIVE
    parts = fn.split(".")

    def general(data: Mapping[str, Any]) -> bool:
        values = _candidates(data, parts)
        if negative:
            return all(test(v) is True for v in values)
        return any(test(v) is True for v in values)

    if len(parts) > 1:
        return general
    key = parts[0]

    def simple(data: Mapping[str, Any]) -> bool:
        v = data.get(key)
        if type(v) is list:
            return general(data)
        return test(v) is True
    return simple


def compile_scope(data_scope: Any, schema: DocSchema | None = None) -> Predicate:
    """Validate ``data_scope`` and compile it into a predicate over a document's stored data (a dict)."""
    conditions = validate_scope(data_scope, schema)
    if not conditions:
        return _always
    preds = [_compile_condition(c["fn"], c["op"], c["val"]) for c in conditions]
    if len(preds) == 1:
        return preds[0]
    if len(preds) == 2:
        first, second = preds

        def both(data: Mapping[str, Any]) -> bool:
            return first(data) and second(data)
        return both

    def all_of(data: Mapping[str, Any]) -> bool:
        for p in preds:
            if not p(data):
                return False
        return True
    return all_of
