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
* ``in`` / ``not in`` take a list of scalars (or an object: its keys, as Python's ``in`` on a dict); the
  field value is looked up among the elements of its own
  kind. When the list is not empty and holds no element of the value's kind, nor ``None`` (which is
  comparable with anything), that is a type mismatch: ``"5" in [5, 6]`` is out, ``"x" not in [None]`` is in.
  With a string value they are a substring test, as Python's ``in`` (the original's meaning): ``"ab" in
  "abc"``; a field that is not a string is a mismatch.
* ``==`` / ``!=`` with a list or an object compare the whole value (``tags == ["a", "b"]``), as the original.
* A ``datetime`` or ``date`` value (given through the library) compares with datetimes and dates, and with
  strings in ISO 8601 form (how documents store them as JSON); naive against aware is a mismatch.
* Lenient by default, as the original: a field the class does not declare reads as None, extra keys in a
  condition are ignored. ``strict`` refuses both.

An invalid scope raises :class:`~xia_broadcast.errors.InvalidScopeError` at compile time, never at delivery; so
does a scope over the bounds of :class:`~.limits.SubscriptionLimits`.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from typing import Any

import orjson

from ..errors import HiddenFieldError, InvalidScopeError
from .limits import DEFAULT_LIMITS, SubscriptionLimits
from .schema import DocSchema, FieldSpec

Predicate = Callable[[Mapping[str, Any]], bool]

OPERATORS = ("==", "!=", "<", "<=", ">", ">=", "in", "not in")
_ORDERING = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}
_NEGATIVE = frozenset({"!=", "not in"})
#: (in)equality of two values of one kind, for the compiled conditions' shortcut (``bool`` results)
_EQUALITY = {"==": operator.eq, "!=": operator.ne}
#: the exact value types of a kind the shortcut compares at once (``bool`` is not a number here)
_SAME_KIND: dict[str, tuple[type, ...]] = {"num": (int, float), "str": (str,)}
_SCALARS = (str, int, float, bool, type(None))
_TEMPORAL_KINDS = frozenset({"datetime", "date"})


def kind(value: Any) -> str:
    """The comparison kind of a value: ``none``, ``bool``, ``num``, ``str``, ``datetime``, ``date`` or
    ``other``."""
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
    if isinstance(value, datetime):
        return "datetime"
    if isinstance(value, date):
        return "date"
    return "other"


def _always(_data: Mapping[str, Any]) -> bool:
    return True


def validate_scope(data_scope: Any, schema: DocSchema | None = None, *, strict: bool = False,
                   limits: SubscriptionLimits = DEFAULT_LIMITS, hidden_allowed: bool = True) -> list[dict[str, Any]]:
    """Check a scope's shape and cost (and its paths against ``schema`` when one is known); return it as a
    list of ``{fn, op, val}``.

    Lenient by default, as the original: extra keys in a condition are ignored and a path the schema does
    not declare reads as None. ``strict`` refuses both. A path through a hidden field is refused
    (:class:`HiddenFieldError`, 4403) unless ``hidden_allowed``: otherwise the scope is a question about a
    value the subscriber may not see.
    """
    if data_scope is None:
        return []
    if not isinstance(data_scope, (list, tuple)):
        raise InvalidScopeError(f"data_scope must be a list of conditions, not {type(data_scope).__name__}")
    if len(data_scope) > limits.max_conditions:
        raise InvalidScopeError(f"data_scope has {len(data_scope)} conditions, more than max_conditions "
                                f"({limits.max_conditions})")
    out = []
    for i, cond in enumerate(data_scope):
        where = f"data_scope[{i}]"
        if not isinstance(cond, Mapping):
            raise InvalidScopeError(f"{where} must be an object {{fn, op, val}}")
        if strict:
            extra = set(cond) - {"fn", "op", "val"}
            if extra:
                raise InvalidScopeError(f"{where}: unknown keys {sorted(map(str, extra))}")
        if "fn" not in cond or "op" not in cond or "val" not in cond:
            raise InvalidScopeError(f"{where}: needs 'fn', 'op' and 'val'")
        fn, op, val = cond["fn"], cond["op"], cond["val"]
        if not isinstance(fn, str) or not fn or len(fn) > limits.max_value_length \
                or any(not part for part in fn.split(".")):
            raise InvalidScopeError(f"{where}: 'fn' must be a field name or dotted path, got {str(fn)[:40]!r}")
        if fn.count(".") >= limits.max_path_depth:
            raise InvalidScopeError(f"{where}: path has more than max_path_depth ({limits.max_path_depth}) parts")
        if op not in OPERATORS:
            raise InvalidScopeError(f"{where}: unknown operator {str(op)[:20]!r}, expected one of {list(OPERATORS)}")
        _check_value(where, op, val, limits)
        if schema is not None:
            target = _check_path(schema, fn, where, strict, hidden_allowed)
            if (not hidden_allowed and isinstance(val, (list, tuple, dict)) and target is not None
                    and target.embedded is not None and target.embedded.has_hidden()):
                # comparing the whole embedded document (or list of them) is a question about its hidden
                # fields too: only the right guess would match
                raise HiddenFieldError(f"{where}: {fn!r} holds hidden fields; comparing it whole needs permission "
                                       "to see hidden fields")
        out.append({"fn": fn, "op": op, "val": list(val) if isinstance(val, tuple) else val})
    return out


def _check_value(where: str, op: str, val: Any, limits: SubscriptionLimits) -> None:
    if isinstance(val, str) and len(val) > limits.max_value_length:
        raise InvalidScopeError(f"{where}: value longer than max_value_length ({limits.max_value_length})")
    if op in ("in", "not in"):
        if isinstance(val, str):
            return  # substring test
        # an object: membership in its keys, as Python's ``in`` on a dict (the original accepts it)
        if not isinstance(val, (list, tuple, dict)) or not all(isinstance(v, _SCALARS) for v in val):
            raise InvalidScopeError(f"{where}: '{op}' needs a list of scalar values, an object or a string")
        if len(val) > limits.max_in_values:
            raise InvalidScopeError(f"{where}: '{op}' list has more than max_in_values ({limits.max_in_values})")
        if any(isinstance(v, str) and len(v) > limits.max_value_length for v in val):
            raise InvalidScopeError(f"{where}: value longer than max_value_length ({limits.max_value_length})")
    elif op in _ORDERING:
        if kind(val) not in ("num", "str", "datetime", "date"):
            raise InvalidScopeError(f"{where}: '{op}' needs a number, a string or a date, got {repr(val)[:40]}")
    elif isinstance(val, (list, tuple, dict)):  # == / != on the whole value
        try:
            size = len(orjson.dumps(val))
        except TypeError as exc:
            raise InvalidScopeError(f"{where}: '{op}' value is not JSON") from exc
        if size > limits.max_value_length:
            raise InvalidScopeError(f"{where}: value longer than max_value_length ({limits.max_value_length})")
    elif not isinstance(val, _SCALARS) and kind(val) not in _TEMPORAL_KINDS:
        raise InvalidScopeError(f"{where}: '{op}' needs a JSON value, got {type(val).__name__}")


def _check_path(schema: DocSchema, path: str, where: str, strict: bool,
                hidden_allowed: bool) -> FieldSpec | None:
    """Check a scope path against a schema; return the spec of the field it ends on (None: not declared)."""
    current: DocSchema | None = schema
    parts = path.split(".")
    spec: FieldSpec | None = None
    for i, part in enumerate(parts):
        if current is None:
            return None  # below a free-form field: anything goes
        if part == "_id" and not current.embedded and i == 0:
            if len(parts) > 1 and strict:
                raise InvalidScopeError(f"{where}: '_id' has no sub-fields")
            return None
        spec = current.fields.get(part)
        if spec is None:
            if strict:
                raise InvalidScopeError(f"{where}: {schema.name} has no field {'.'.join(parts[: i + 1])!r}")
            return None  # an undeclared field reads as None
        if spec.hidden and not hidden_allowed:
            raise HiddenFieldError(f"{where}: {'.'.join(parts[: i + 1])!r} is hidden; a scope may name it only "
                                   "with permission to see hidden fields")
        if spec.embedded is None and i < len(parts) - 1 and not spec.free_form:
            if strict:
                raise InvalidScopeError(f"{where}: field {part!r} of {schema.name} has no sub-fields")
            return None  # reads as None below a plain value
        current = spec.embedded
    return spec


# -- compiled tests ------------------------------------------------------------------------------------
# Each test returns True (holds), False (does not hold) or None (type mismatch).


def _as_temporal(v: Any, vk: str) -> Any:
    """``v`` as a value of the temporal kind ``vk`` (a date or datetime, or its ISO string), else None."""
    k = kind(v)
    if k == vk:
        return v
    if k == "str":
        try:
            return datetime.fromisoformat(v) if vk == "datetime" else date.fromisoformat(v)
        except ValueError:
            return None
    return None


def _make_test(op: str, val: Any) -> Callable[[Any], bool | None]:
    if op in ("==", "!="):
        vk = kind(val)
        want_equal = op == "=="
        if val is None:
            def t_none(v: Any) -> bool | None:
                return (v is None) == want_equal
            return t_none
        if isinstance(val, (list, tuple, dict)):  # the whole value, as Python's == compares it
            whole: Any = list(val) if isinstance(val, tuple) else val
            container = dict if isinstance(whole, dict) else list

            def t_whole(v: Any) -> bool | None:
                if v is None:
                    return not want_equal
                if not isinstance(v, container):
                    return None
                return bool(v == whole) == want_equal
            return t_whole
        if vk in _TEMPORAL_KINDS:
            def t_time_eq(v: Any) -> bool | None:
                if v is None:
                    return not want_equal
                t = _as_temporal(v, vk)
                if t is None:
                    return None
                try:
                    return bool(t == val) == want_equal
                except TypeError:
                    return None
            return t_time_eq

        def t_eq(v: Any) -> bool | None:
            if v is None:
                return not want_equal
            if kind(v) != vk:
                return None
            return bool(v == val) == want_equal
        return t_eq
    if op in _ORDERING:
        cmp, vk = _ORDERING[op], kind(val)
        if vk in _TEMPORAL_KINDS:
            def t_time_ord(v: Any) -> bool | None:
                t = _as_temporal(v, vk)
                if t is None:
                    return None
                try:
                    return bool(cmp(t, val))
                except TypeError:  # naive against aware
                    return None
            return t_time_ord

        def t_ord(v: Any) -> bool | None:
            if kind(v) != vk:
                return None
            return bool(cmp(v, val))
        return t_ord
    want_in = op == "in"
    if isinstance(val, str):  # substring, as Python's ``in`` on a string
        def t_sub(v: Any) -> bool | None:
            if v is None:
                return not want_in
            if kind(v) != "str":
                return None
            return (v in val) == want_in
        return t_sub
    # in / not in a list: group the list by kind once, test by set membership
    by_kind: dict[str, set[Any]] = {}
    for item in val:
        by_kind.setdefault(kind(item), set()).add(item)
    # a value is comparable with the list when it holds an element of the value's kind or a None
    mismatch_possible = bool(val) and "none" not in by_kind

    def t_in(v: Any) -> bool | None:
        same = by_kind.get(kind(v))
        if same is None:
            if v is None or not mismatch_possible:
                return not want_in
            return None
        return (v in same) == want_in
    return t_in


def _candidates(data: Any, parts: Sequence[str], flatten_last: bool = True) -> list[Any]:
    """Every value the path reaches, lists of embedded documents crossed (a missing field gives
    ``[None]``); a list at the end is flattened into its elements unless ``flatten_last``."""
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
    if not flatten_last:
        return current
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
    whole = op in ("==", "!=") and isinstance(val, (list, tuple, dict))

    def general(data: Mapping[str, Any]) -> bool:
        values = _candidates(data, parts, not whole)
        if negative:
            return all(test(v) is True for v in values)
        return any(test(v) is True for v in values)

    if len(parts) > 1:
        return general
    key = parts[0]
    if whole:
        def simple_whole(data: Mapping[str, Any]) -> bool:
            return test(data.get(key)) is True
        return simple_whole

    k = kind(val)
    cmp: Callable[[Any, Any], bool] | None = _ORDERING.get(op) or _EQUALITY.get(op)
    same = _SAME_KIND.get(k)
    if cmp is not None and same is not None:
        # a number compared with a number, or a string with a string (what scopes mostly ask), at once: what
        # ``test`` answers for a value of exactly those types
        compare, types = cmp, same

        def simple_same(data: Mapping[str, Any]) -> bool:
            v = data.get(key)
            t = type(v)
            if t in types:
                return compare(v, val)
            if isinstance(v, list):  # its elements, as ``general`` (and the view index) read a list
                return general(data)
            return test(v) is True
        return simple_same

    def simple(data: Mapping[str, Any]) -> bool:
        v = data.get(key)
        if isinstance(v, list):
            return general(data)
        return test(v) is True
    return simple


def compile_scope(data_scope: Any, schema: DocSchema | None = None, *, strict: bool = False,
                  limits: SubscriptionLimits = DEFAULT_LIMITS, hidden_allowed: bool = True) -> Predicate:
    """Validate ``data_scope`` (:func:`validate_scope`) and compile it into a predicate over a document's
    stored data (a dict)."""
    conditions = validate_scope(data_scope, schema, strict=strict, limits=limits, hidden_allowed=hidden_allowed)
    return compile_conditions(conditions)


def compile_conditions(conditions: list[dict[str, Any]]) -> Predicate:
    """Compile conditions :func:`validate_scope` returned into one predicate (AND)."""
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
