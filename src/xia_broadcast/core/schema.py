"""Document class schemas: the fields a class has, which are hidden, which are keys, what is embedded.

A schema is what lets the core validate a subscription at subscribe time (unknown catalog fields, unknown
scope paths), drop hidden fields at every depth, and name the ACL subjects of a document. It comes from a
:class:`xia_broadcast.document.Document` subclass or from a plain mapping (dict, JSON or TOML), so that a
server can carry classes without Python code::

    {"name": "Order", "key": ["order_id"], "privilege_keys": {"customer": ["customer"]},
     "fields": {"order_id": {"type": "str"}, "margin": {"type": "float", "hidden": true},
                "lines": {"many": true, "fields": {"sku": {"type": "str"}, "cost": {"hidden": true}}}}}
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DocumentError, SchemaError

#: Field types a schema may name. ``any`` accepts every JSON value, ``dict`` a free-form object.
FIELD_TYPES = frozenset({"any", "str", "int", "float", "bool", "list", "dict", "embedded"})
OPS = frozenset({"I", "U", "D"})


@dataclass(frozen=True, eq=False)
class FieldSpec:
    """One field of a document class.

    ``embedded`` is the schema of an embedded document (``many`` when the field holds a list of them).
    """

    name: str
    type: str = "any"
    hidden: bool = False
    key: bool = False
    many: bool = False
    embedded: DocSchema | None = None

    @property
    def free_form(self) -> bool:
        """True when anything below this field is allowed (no schema describes it)."""
        return self.embedded is None and self.type in ("any", "dict")


@dataclass(frozen=True, eq=False)
class DocSchema:
    """The schema of a document class (or of an embedded document when ``embedded`` is true)."""

    name: str
    fields: Mapping[str, FieldSpec]
    key_fields: tuple[str, ...] = ()
    privilege_keys: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    embedded: bool = False

    @property
    def hidden_fields(self) -> frozenset[str]:
        return frozenset(n for n, f in self.fields.items() if f.hidden)

    def has_hidden(self) -> bool:
        """True when a hidden field exists at this level or at any depth below."""
        return any(f.hidden or (f.embedded is not None and f.embedded.has_hidden()) for f in self.fields.values())

    # -- construction -------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any], name: str | None = None, *, embedded: bool = False) -> DocSchema:
        """Build a schema from a plain mapping (see the module docstring). Raises :class:`SchemaError`."""
        if not isinstance(spec, Mapping):
            raise SchemaError(f"schema of {name!r} must be a mapping, not {type(spec).__name__}")
        unknown = set(spec) - {"name", "fields", "key", "privilege_keys"}
        if unknown:
            raise SchemaError(f"schema of {name!r}: unknown entries {sorted(unknown)}")
        class_name = spec.get("name", name)
        if not isinstance(class_name, str) or not class_name:
            raise SchemaError("a schema needs a non-empty string name")
        raw_fields = spec.get("fields", {})
        if not isinstance(raw_fields, Mapping):
            raise SchemaError(f"{class_name}: 'fields' must be a mapping of field name to field spec")
        key_fields = _name_list(spec.get("key", []), f"{class_name}: 'key'")
        fields: dict[str, FieldSpec] = {}
        for fname, fspec in raw_fields.items():
            fields[fname] = _field_from_dict(class_name, fname, fspec, fname in key_fields)
        for k in key_fields:
            if k not in fields:
                raise SchemaError(f"{class_name}: key field {k!r} is not a declared field")
        raw_priv = spec.get("privilege_keys", {})
        if not isinstance(raw_priv, Mapping):
            raise SchemaError(f"{class_name}: 'privilege_keys' must map a key name to a list of fields")
        privilege_keys: dict[str, tuple[str, ...]] = {}
        for pname, pfields in raw_priv.items():
            names = _name_list(pfields, f"{class_name}: privilege key {pname!r}")
            if not names:
                raise SchemaError(f"{class_name}: privilege key {pname!r} names no field")
            for n in names:
                if n not in fields:
                    raise SchemaError(f"{class_name}: privilege key {pname!r} names unknown field {n!r}")
            privilege_keys[pname] = names
        if embedded and (key_fields or privilege_keys):
            raise SchemaError(f"{class_name}: an embedded document has no key fields nor privilege keys")
        return cls(class_name, fields, key_fields, privilege_keys, embedded)

    # -- validation of published data ---------------------------------------------------------------------

    def validate(self, data: Any, path: str = "") -> dict[str, Any]:
        """Check a published document against the schema; returns it. Raises :class:`DocumentError`.

        Every field is optional and may be null; a field the schema does not declare is refused, so that
        nothing unknown (and so nothing unmarked as hidden) can reach a subscriber.
        """
        where = path or self.name
        if not isinstance(data, dict):
            raise DocumentError(f"{where}: a document must be a JSON object, not {type(data).__name__}")
        if not self.embedded and path == "":
            _id = data.get("_id")
            if not isinstance(_id, (str, int)) or isinstance(_id, bool) or _id == "":
                hint = ""
                if "_id" not in data and self.key_fields:  # say where an _id usually comes from
                    values = [data.get(k) for k in self.key_fields]
                    example = "/".join(str(v) for v in values) if all(v is not None for v in values) else "..."
                    hint = (f" (every document carries its own '_id'; this class's key is "
                            f"{', '.join(self.key_fields)}: e.g. \"_id\": \"{example}\")")
                raise DocumentError(f"{where}: '_id' must be a non-empty string or an integer{hint}")
        for k, v in data.items():
            if k == "_id":
                continue
            spec = self.fields.get(k)
            if spec is None:
                raise DocumentError(f"{where}: unknown field {k!r}")
            if v is not None:
                _check_value(spec, v, f"{where}.{k}")
        return data


def _name_list(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise SchemaError(f"{what} must be a field name or a list of field names")
    return tuple(value)


def _field_from_dict(class_name: str, fname: str, fspec: Any, is_key: bool) -> FieldSpec:
    if not isinstance(fname, str) or not fname or "." in fname or fname == "_id":
        raise SchemaError(f"{class_name}: invalid field name {fname!r} ('_id' is implicit, no dots)")
    if fspec is None:
        fspec = {}
    if isinstance(fspec, str):
        fspec = {"type": fspec}
    if not isinstance(fspec, Mapping):
        raise SchemaError(f"{class_name}.{fname}: a field spec is a mapping or a type name")
    unknown = set(fspec) - {"type", "hidden", "many", "fields"}
    if unknown:
        raise SchemaError(f"{class_name}.{fname}: unknown entries {sorted(unknown)}")
    embedded = None
    ftype = fspec.get("type", "embedded" if "fields" in fspec else "any")
    if ftype not in FIELD_TYPES:
        raise SchemaError(f"{class_name}.{fname}: unknown type {ftype!r}, expected one of {sorted(FIELD_TYPES)}")
    if "fields" in fspec:
        if ftype != "embedded":
            raise SchemaError(f"{class_name}.{fname}: 'fields' is only for embedded documents")
        embedded = DocSchema.from_dict({"fields": fspec["fields"]}, f"{class_name}.{fname}", embedded=True)
    elif ftype == "embedded":
        raise SchemaError(f"{class_name}.{fname}: an embedded field needs 'fields'")
    hidden, many = fspec.get("hidden", False), fspec.get("many", False)
    if not isinstance(hidden, bool) or not isinstance(many, bool):
        raise SchemaError(f"{class_name}.{fname}: 'hidden' and 'many' are booleans")
    return FieldSpec(fname, ftype, hidden, is_key, many, embedded)


_PY_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "list": (list,),
    "dict": (dict,),
}


def _check_value(spec: FieldSpec, value: Any, where: str) -> None:
    if spec.many:
        if not isinstance(value, list):
            raise DocumentError(f"{where}: expected a list")
        for i, item in enumerate(value):
            _check_one(spec, item, f"{where}[{i}]")
    else:
        _check_one(spec, value, where)


def _check_one(spec: FieldSpec, value: Any, where: str) -> None:
    if spec.embedded is not None:
        spec.embedded.validate(value, where)
        return
    allowed = _PY_TYPES.get(spec.type)
    if allowed is None:  # any
        return
    if not isinstance(value, allowed) or (spec.type != "bool" and isinstance(value, bool)):
        raise DocumentError(f"{where}: expected {spec.type}, got {type(value).__name__}")


def load_schemas(source: Mapping[str, Any] | str | Path) -> dict[str, DocSchema]:
    """Load document classes from a mapping ``{class_name: spec}`` or a JSON / TOML file holding one.

    A file may hold the classes at its top level or under a ``classes`` table (as the server's config
    file does). Returns ``{class_name: DocSchema}``.
    """
    if isinstance(source, (str, Path)):
        p = Path(source)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise SchemaError(f"cannot read schema file {p}: {exc}") from exc
        try:
            loaded: Any = tomllib.loads(text) if p.suffix == ".toml" else json.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise SchemaError(f"{p}: not valid {'TOML' if p.suffix == '.toml' else 'JSON'}: {exc}") from exc
        source = loaded
    if not isinstance(source, Mapping):
        raise SchemaError("document classes must be given as a mapping of class name to schema")
    classes = source.get("classes", source)
    if not isinstance(classes, Mapping):
        raise SchemaError("'classes' must be a mapping of class name to schema")
    return {name: DocSchema.from_dict(spec, name) for name, spec in classes.items()}
