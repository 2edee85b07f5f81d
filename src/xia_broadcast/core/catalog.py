"""Catalogs: field projections compiled once into projectors.

A catalog is a nested dict keyed by field name: ``None`` (or ``true``/``false``, xia-engine's lazy-load
flags) includes the field, a dict is a sub-catalog for an embedded document (applied to every element of a
list of them). Fields not named are left out; ``_id`` is always included; ``None`` or ``{}`` means every
field. Hidden fields are left out at every depth unless ``show_hidden`` (naming a hidden field in the catalog
does not reveal it). A name the class does not declare is ignored, as the original does; with ``strict``
it is refused at compile time with :class:`~xia_broadcast.errors.InvalidCatalogError`.

A projector never mutates its input and may return it unchanged when nothing is to be removed: its output
is only ever encoded, never modified.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import Any

from ..errors import InvalidCatalogError
from .limits import DEFAULT_LIMITS, SubscriptionLimits
from .schema import DocSchema

Projector = Callable[[Mapping[str, Any]], Mapping[str, Any]]


def validate_catalog(catalog: Any, schema: DocSchema | None = None, *, strict: bool = False,
                     limits: SubscriptionLimits = DEFAULT_LIMITS) -> dict[str, Any]:
    """Check a catalog's shape and size (and its names against ``schema``); return it normalised: a dict
    whose values are None (include) or a sub-catalog dict.

    Lenient by default, as xia-engine reads catalogs: ``true``/``false`` (lazy-load flags) include the field
    like None; a name the class does not declare is kept and simply matches nothing; a sub-catalog on a
    field that is not an embedded document includes its whole value. ``strict`` refuses the last two.
    """
    counter = [0]
    return _validate(catalog, schema, "catalog", schema.name if schema is not None else None, strict, limits,
                     1, counter)


def _validate(catalog: Any, schema: DocSchema | None, path: str, root: str | None, strict: bool,
              limits: SubscriptionLimits, depth: int, counter: list[int]) -> dict[str, Any]:
    if catalog is None:
        return {}
    if not isinstance(catalog, Mapping):
        raise InvalidCatalogError(f"{path} must be an object of field names, not {type(catalog).__name__}")
    if depth > limits.max_catalog_depth:
        raise InvalidCatalogError(f"{path}: nested deeper than max_catalog_depth ({limits.max_catalog_depth})")
    out: dict[str, Any] = {}
    for name, sub in catalog.items():
        counter[0] += 1
        if counter[0] > limits.max_catalog_fields:
            raise InvalidCatalogError(f"catalog names more than max_catalog_fields ({limits.max_catalog_fields})")
        if not isinstance(name, str) or not name or len(name) > limits.max_value_length:
            raise InvalidCatalogError(f"{path}: field names are non-empty strings")
        where = f"{path}.{name}"
        if isinstance(sub, bool):
            sub = None  # xia-engine's lazy-load flags: the field is included either way
        if sub is not None and not isinstance(sub, Mapping):
            raise InvalidCatalogError(f"{where}: value must be null, true, false (include) or an object "
                                      "(sub-catalog)")
        spec = None
        if name == "_id":
            if sub and strict:
                raise InvalidCatalogError(f"{where}: '_id' has no sub-fields")
            out[name] = None
            continue
        if schema is not None:
            spec = schema.fields.get(name)
            if spec is None:
                if strict:
                    raise InvalidCatalogError(f"{root} has no field {where.removeprefix('catalog.')!r}")
                out[name] = None  # matches nothing: the class never stores it
                continue
            if sub and spec.embedded is None and not spec.free_form:
                if strict:
                    raise InvalidCatalogError(f"{where}: field {name!r} is not an embedded document")
                sub = None
        out[name] = _validate(sub, spec.embedded if spec else None, where, root, strict, limits, depth + 1,
                              counter) if sub else None
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


#: field-name tuples (document shapes) a :class:`Flat` plan keeps a getter for; past it they are made anew
MAX_SHAPES_PER_PLAN = 64
#: the keys of a document's cut-up fields (``fanout.Cut``) holding the message's head and its end
HEAD, TAIL = -1, -2


class Flat:
    """What a catalog keeps of a document when it keeps whole top-level values and nothing at a deeper level:
    ``names`` in that order (those present in the document), or with ``names`` None every field in the
    document's order less ``hidden``. A projector that is one of these (:func:`flat_plan`) lets a message be
    assembled from each field's JSON encoded once per change, whatever the catalogs (see :mod:`..fanout`).

    Memory: a getter per document shape seen (:meth:`picker`), at most :data:`MAX_SHAPES_PER_PLAN`.
    """

    __slots__ = ("_pickers", "hidden", "names")

    def __init__(self, names: tuple[str, ...] | None, hidden: frozenset[str]) -> None:
        self.names = names
        self.hidden = hidden
        self._pickers: dict[tuple[str, ...], Callable[[Mapping[Any, Any]], tuple[Any, ...]]] = {}

    def picker(self, shape: tuple[str, ...]) -> Callable[[Mapping[Any, Any]], tuple[Any, ...]]:
        """A getter of a message's pieces from a document's cut-up fields (``fanout.Cut``) when its field names
        are ``shape`` (in order): the head (:data:`HEAD`), the first field kept by its name (``"name":value``),
        every other by its position in the document (``,"name":value``), in the order of the projection, and
        the end (:data:`TAIL`). Made once per shape."""
        pick = self._pickers.get(shape)
        if pick is None:
            if self.names is not None:
                present = set(shape)
                kept = [n for n in self.names if n in present]
            else:
                kept = [n for n in shape if n not in self.hidden]
            position = {n: i for i, n in enumerate(shape)}
            keys: list[str | int] = [HEAD, *kept[:1]]
            keys += [position[n] for n in kept[1:]]
            keys.append(TAIL)
            pick = itemgetter(*keys)
            if len(self._pickers) >= MAX_SHAPES_PER_PLAN:
                self._pickers.clear()
            self._pickers[shape] = pick
        return pick


def _plan(catalog: Mapping[str, Any], schema: DocSchema | None, show_hidden: bool,
          top: bool) -> tuple[Flat, dict[str, Projector]]:
    """The fields a catalog keeps at one level (:class:`Flat`) and the sub-projectors of the embedded values
    it projects further (by field name)."""
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
        return Flat(tuple(names), hidden), subs
    # every field, less the hidden ones at every depth
    if schema is not None and not show_hidden and schema.has_hidden():
        for n, spec in schema.fields.items():
            if not spec.hidden and spec.embedded is not None and spec.embedded.has_hidden():
                subs[n] = _compile({}, spec.embedded, show_hidden, False)
    return Flat(None, hidden), subs


def flat_plan(catalog: dict[str, Any], schema: DocSchema | None, show_hidden: bool) -> Flat | None:
    """The :class:`Flat` plan of a catalog :func:`validate_catalog` returned, or None when it projects an
    embedded value further (its projector, :func:`compile_normalised`, is then the only way)."""
    plan, subs = _plan(catalog, schema, bool(show_hidden), True)
    return None if subs else plan


def _compile(catalog: Mapping[str, Any], schema: DocSchema | None, show_hidden: bool, top: bool) -> Projector:
    plan, subs = _plan(catalog, schema, show_hidden, top)
    names_t, hidden = plan.names, plan.hidden
    if names_t is not None:
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
    if not subs:
        if not hidden:
            return _identity

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


def compile_catalog(catalog: Any, schema: DocSchema | None = None, show_hidden: bool = False, *,
                    strict: bool = False, limits: SubscriptionLimits = DEFAULT_LIMITS) -> Projector:
    """Validate ``catalog`` (:func:`validate_catalog`) and compile it into a projector of a document's stored
    data (a dict)."""
    return compile_normalised(validate_catalog(catalog, schema, strict=strict, limits=limits), schema,
                              show_hidden)


def compile_normalised(catalog: dict[str, Any], schema: DocSchema | None, show_hidden: bool) -> Projector:
    """Compile a catalog :func:`validate_catalog` returned."""
    return _compile(catalog, schema, bool(show_hidden), True)
