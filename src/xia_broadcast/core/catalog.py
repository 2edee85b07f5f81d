"""Catalogs: field projections compiled once into projectors.

A catalog is a nested dict keyed by field name: ``None`` includes the field, a dict is a sub-catalog for an
embedded document (applied to every element of a list of them). Fields not named are left out; ``_id`` is
always included; ``None`` or ``{}`` means every field. Hidden fields are left out at every depth unless
``show_hidden`` (naming a hidden field in the catalog does not reveal it). With a schema, an unknown field
name is refused at compile time with :class:`~xia_broadcast.errors.InvalidCatalogError`.

A projector never mutates its input and may return it unchanged when nothing is to be removed: its output
is only ever encoded, never modified.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import InvalidCatalogError
from .nesting import MAX_NESTING, nested_deeper_than
from .schema import DocSchema

Projector = Callable[[Mapping[str, Any]], Mapping[str, Any]]


def validate_catalog(catalog: Any, schema: DocSchema | None = None, path: str = "catalog",
                     root: str | None = None) -> dict[str, Any]:
    """Check a catalog's shape (and its names against ``schema``); return it as a plain dict.

    ``root`` is the name of the document class an error names (default: ``schema``'s).
    """
    if root is None and schema is not None:
        root = schema.name
    if path == "catalog" and nested_deeper_than(catalog):  # once, at the top: bounds the recursion below
        raise InvalidCatalogError(f"a catalog may nest at most {MAX_NESTING} levels deep")
    if catalog is None:
        return {}
    if not isinstance(catalog, Mapping):
        raise InvalidCatalogError(f"{path} must be an object of field names, not {type(catalog).__name__}")
    out: dict[str, Any] = {}
    for name, sub in catalog.items():
        where = f"{path}.{name}"
        if not isinstance(name, str) or not name:
            raise InvalidCatalogError(f"{path}: field names are non-empty strings")
        if sub is not None and not isinstance(sub, Mapping):
            raise InvalidCatalogError(f"{where}: value must be null (include) or an object (sub-catalog)")
        spec = None
        if schema is not None and name != "_id":
            spec = schema.fields.get(name)
            if spec is None:
                raise InvalidCatalogError(f"{root} has no field {where.removeprefix('catalog.')!r}")
            if sub and spec.embedded is None and not spec.free_form:
                raise InvalidCatalogError(f"{where}: field {name!r} is not an embedded document")
        if name == "_id" and sub:
            raise InvalidCatalogError(f"{where}: '_id' has no sub-fields")
        out[name] = validate_catalog(sub, spec.embedded if spec else None, where, root) if sub else None
    return out


def _identity(data: Mapping[str, Any]) -> Mapping[str, Any]:
    return data


def _apply_each(project: Projector, value: Any) -> Any:
    """Apply a sub-projector to an embedded value: a document, or every document of a list."""
    if isinstance(value, Mapping):
        return project(value)
    if isinstance(value, list):
        return [project(v) if isinstance(v, Mapping) else v for v in value]
    return value


def _compile(catalog: Mapping[str, Any], schema: DocSchema | None, show_hidden: bool, top: bool) -> Projector:
    hidden = frozenset() if (schema is None or show_hidden) else schema.hidden_fields
    subs: dict[str, Projector] = {}
    if catalog:
        names = [n for n in catalog if n not in hidden]
        if top and "_id" not in catalog:
            names.insert(0, "_id")
        for n in names:
            spec = schema.fields.get(n) if schema is not None else None
            sub_schema = spec.embedded if spec is not None else None
            if catalog.get(n):
                subs[n] = _compile(catalog[n], sub_schema, show_hidden, False)
            elif sub_schema is not None and not show_hidden and sub_schema.has_hidden():
                subs[n] = _compile({}, sub_schema, show_hidden, False)
        names_t = tuple(names)
        if not subs:
            def pick(data: Mapping[str, Any]) -> Mapping[str, Any]:
                return {n: data[n] for n in names_t if n in data}
            return pick

        def pick_nested(data: Mapping[str, Any]) -> Mapping[str, Any]:
            out = {}
            for n in names_t:
                if n in data:
                    v = data[n]
                    sub = subs.get(n)
                    out[n] = _apply_each(sub, v) if sub is not None else v
            return out
        return pick_nested
    # every field, less the hidden ones at every depth
    if schema is None or show_hidden or not schema.has_hidden():
        return _identity
    for n, spec in schema.fields.items():
        if not spec.hidden and spec.embedded is not None and spec.embedded.has_hidden():
            subs[n] = _compile({}, spec.embedded, show_hidden, False)
    if not subs:
        def drop(data: Mapping[str, Any]) -> Mapping[str, Any]:
            return {k: v for k, v in data.items() if k not in hidden}
        return drop

    def drop_nested(data: Mapping[str, Any]) -> Mapping[str, Any]:
        out = {}
        for k, v in data.items():
            if k in hidden:
                continue
            sub = subs.get(k)
            out[k] = _apply_each(sub, v) if sub is not None else v
        return out
    return drop_nested


def compile_catalog(catalog: Any, schema: DocSchema | None = None, show_hidden: bool = False) -> Projector:
    """Validate ``catalog`` and compile it into a projector of a document's stored data (a dict)."""
    return _compile(validate_catalog(catalog, schema), schema, bool(show_hidden), True)
