"""Typed documents on pydantic v2.

:class:`Document` is a pydantic model with an ``_id`` (attribute ``id``), key fields, privilege keys,
hidden fields, embedded documents (:class:`EmbeddedDocument`) and lists of them. It offers the original
document protocol (``check_scope``, ``get_display_data``, ``check_acl``) so that it works wherever an
original document does, and a :class:`~xia_broadcast.core.schema.DocSchema` derived from its fields so that
the broadcaster can compile scopes and catalogs once per view::

    class Line(EmbeddedDocument):
        sku: str
        cost: float = field(0.0, hidden=True)

    class Order(Document):
        privilege_keys: ClassVar[dict[str, list[str]]] = {"customer": ["customer"]}
        order_id: str = field(key=True)
        customer: str = ""
        margin: float = field(0.0, hidden=True)
        lines: list[Line] = []
"""

from __future__ import annotations

import types
import typing
import uuid
from collections.abc import Mapping
from functools import cache, lru_cache
from typing import Any, ClassVar

import orjson
from pydantic import BaseModel, ConfigDict, Field

from .core.acl import Acl, subjects_of
from .core.catalog import compile_catalog
from .core.schema import DocSchema, FieldSpec
from .core.scope import compile_scope
from .errors import AuthorizationError, OutOfScopeError, SchemaError

_MARK = "xia"


def field(default: Any = ..., *, hidden: bool = False, key: bool = False, **kwargs: Any) -> Any:
    """A pydantic ``Field`` that may be marked ``hidden`` (left out unless show_hidden) or ``key``."""
    extra = dict(kwargs.pop("json_schema_extra", None) or {})
    extra[_MARK] = {"hidden": hidden, "key": key}
    return Field(default, json_schema_extra=extra, **kwargs)


_SIMPLE_TYPES = {str: "str", int: "int", float: "float", bool: "bool", dict: "dict", list: "list"}


def _strip_optional(ann: Any) -> Any:
    """``Optional[X]`` -> ``X``; any other union -> ``Any`` (no one schema describes it)."""
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        return args[0] if len(args) == 1 else Any
    return ann


def _is_model(ann: Any) -> bool:
    return isinstance(ann, type) and issubclass(ann, BaseModel)


def _models_in(ann: Any) -> list[type[BaseModel]]:
    """Every pydantic model named anywhere in a type annotation."""
    if _is_model(ann):
        return [ann]
    return [m for arg in typing.get_args(ann) for m in _models_in(arg)]


def _field_spec(owner: str, name: str, annotation: Any, extra: Any) -> FieldSpec:
    marks = extra.get(_MARK, {}) if isinstance(extra, dict) else {}
    hidden, key = bool(marks.get("hidden", False)), bool(marks.get("key", False))
    ann = _strip_optional(annotation)
    origin = typing.get_origin(ann)
    if origin in (list, tuple, set, frozenset):
        inner = {_strip_optional(a) for a in typing.get_args(ann) if a is not Ellipsis}
        (element,) = inner if len(inner) == 1 else (Any,)
        if _is_model(element):
            return FieldSpec(name, "embedded", hidden, key, True, schema_of_model(element, embedded=True))
        ftype = "list"
    elif _is_model(ann):
        return FieldSpec(name, "embedded", hidden, key, False, schema_of_model(ann, embedded=True))
    else:
        ftype = _SIMPLE_TYPES.get(origin or ann, "any") if isinstance(origin or ann, type) else "any"
    # Below a free-form field nothing is described, so nothing hidden could be left out there: refuse a
    # model with hidden fields in a place no schema describes (a dict of models, a union of models...).
    for model in _models_in(annotation):
        if schema_of_model(model, embedded=True).has_hidden():
            raise SchemaError(f"{owner}.{name}: {model.__name__} has hidden fields, which cannot be left out "
                              f"inside {annotation!r}; use {model.__name__} or list[{model.__name__}]")
    return FieldSpec(name, ftype, hidden, key)


_IN_PROGRESS: set[type[BaseModel]] = set()


@cache
def schema_of_model(model: type[BaseModel], embedded: bool = False) -> DocSchema:
    """The :class:`DocSchema` of a pydantic model (cached per class).

    Raises :class:`SchemaError` for a recursive model (its hidden fields could not be found at every depth)
    and for a model with hidden fields used where no schema describes it (``dict[str, Model]``, unions).
    """
    if model in _IN_PROGRESS:
        raise SchemaError(f"{model.__name__} contains itself: recursive documents are not supported")
    _IN_PROGRESS.add(model)
    fields: dict[str, FieldSpec] = {}
    try:
        for name, info in model.model_fields.items():
            # the name the field has in stored_data() (model_dump(by_alias=True) uses the serialization alias)
            out_name = info.serialization_alias or info.alias or name
            if out_name == "_id":
                continue
            fields[out_name] = _field_spec(model.__name__, out_name, info.annotation, info.json_schema_extra)
    finally:
        _IN_PROGRESS.discard(model)
    keys = tuple(n for n, f in fields.items() if f.key)
    priv = {k: tuple(v) for k, v in (getattr(model, "privilege_keys", None) or {}).items()}
    for pname, pfields in priv.items():
        for n in pfields:
            if n not in fields:
                raise SchemaError(f"{model.__name__}: privilege key {pname!r} names unknown field {n!r}")
    return DocSchema(model.__name__, fields, keys, priv, embedded)


@lru_cache(maxsize=4096)
def _compiled_scope(schema: DocSchema | None, scope_json: bytes) -> Any:
    return compile_scope(orjson.loads(scope_json), schema)


@lru_cache(maxsize=4096)
def _compiled_catalog(schema: DocSchema | None, catalog_json: bytes, show_hidden: bool) -> Any:
    return compile_catalog(orjson.loads(catalog_json), schema, show_hidden)


class EmbeddedDocument(BaseModel):
    """An embedded document: a typed part of a document, with no ``_id`` of its own."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")


class Document(EmbeddedDocument):
    """A typed document with an ``_id``. Subclasses declare fields; see the module docstring."""

    #: privilege key name -> the fields whose values make the subject ``Class/<name>/<values>``
    privilege_keys: ClassVar[dict[str, list[str]]] = {}

    id: str = Field(default_factory=lambda: uuid.uuid4().hex, alias="_id")

    @classmethod
    def doc_schema(cls) -> DocSchema:
        """This class's :class:`DocSchema` (hidden fields, keys, embedded documents)."""
        return schema_of_model(cls)

    def stored_data(self) -> dict[str, Any]:
        """The document as JSON-ready data, ``_id`` included and nothing left out (hidden fields too)."""
        return self.model_dump(mode="json", by_alias=True)

    # -- the original document protocol ---------------------------------------------------------------

    def _as_data(self) -> DataDocument:
        return DataDocument(type(self).__name__, self.stored_data(), self.doc_schema())

    def check_scope(self, data_scope: list[dict[str, Any]] | None) -> None:
        """Raise :class:`OutOfScopeError` unless the document is in ``data_scope``."""
        self._as_data().check_scope(data_scope)

    def get_display_data(
        self, catalog: Mapping[str, Any] | None = None, show_hidden: bool = False, **_: Any
    ) -> dict[str, Any]:
        """The document projected through ``catalog`` (hidden fields left out unless ``show_hidden``)."""
        return self._as_data().get_display_data(catalog, show_hidden)

    def check_acl(self, acl: Any, act: str = "read", doc: Any = None, raise_error: bool = True) -> bool:
        """True when ``acl`` grants ``act`` on this document; raise or return False otherwise."""
        return self._as_data().check_acl(acl, act, doc, raise_error)

    @classmethod
    def keeps_default_protocol(cls) -> bool:
        """True when the class does not override ``check_scope``, ``get_display_data`` nor ``check_acl``:
        the broadcaster may then read its stored data with compiled views instead of calling them."""
        return (cls.check_scope is Document.check_scope and cls.get_display_data is Document.get_display_data
                and cls.check_acl is Document.check_acl)


class DataDocument:
    """The original document protocol over plain stored data and its schema (None: no hidden fields, no
    key fields). What a change published as data is to hooks that expect a document object."""

    __slots__ = ("class_name", "data", "schema")

    def __init__(self, class_name: str, data: Mapping[str, Any], schema: DocSchema | None) -> None:
        self.class_name = class_name
        self.data = data
        self.schema = schema

    @property
    def id(self) -> Any:
        return self.data.get("_id")

    def check_scope(self, data_scope: list[dict[str, Any]] | None) -> None:
        if not _compiled_scope(self.schema, orjson.dumps(data_scope or []))(self.data):
            raise OutOfScopeError(f"{self.class_name} {self.id} is out of scope")

    def get_display_data(
        self, catalog: Mapping[str, Any] | None = None, show_hidden: bool = False, **_: Any
    ) -> dict[str, Any]:
        return dict(_compiled_catalog(self.schema, orjson.dumps(catalog or {}), bool(show_hidden))(self.data))

    def check_acl(self, acl: Any, act: str = "read", doc: Any = None, raise_error: bool = True) -> bool:
        acl_obj = Acl.coerce(acl)
        if acl_obj is None or acl_obj.allows(subjects_of(self.class_name, self.data, self.schema), act):
            return True
        if raise_error:
            raise AuthorizationError(f"{act} on {self.class_name} {self.id} is not granted")
        return False


def is_out_of_scope(exc: BaseException) -> bool:
    """True for an out-of-scope error of any document library: an exception whose class, or a base of
    it, is named ``OutOfScopeError`` (this package's, xia-engine's)."""
    return any(k.__name__ == "OutOfScopeError" for k in type(exc).__mro__)
