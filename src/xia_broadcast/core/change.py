"""A published change, as the Hub and the journal see it, and the check of one given as data."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from ..errors import DocumentError, XiaBroadcastError
from .acl import subjects_of
from .nesting import MAX_NESTING, nested_deeper_than
from .schema import OPS, DocSchema


class ChangeNotSerialisable(XiaBroadcastError, TypeError):
    """A change cannot be written as a record: it carries only a Python object (``doc``), no ``data``,
    or its data is not JSON-ready. Such a change can be journaled in memory but cannot cross to another
    node (e.g. through Redis): publish the document's data instead."""


class BadChangeRecord(XiaBroadcastError, ValueError):
    """Bytes that are not a change record written by :meth:`Change.to_record`."""


@dataclass(slots=True)
class Change:
    """One published change.

    ``data`` is the document's stored, JSON-ready data (fast path); ``doc`` is the original object, used
    through its own ``check_scope``/``get_display_data``/``check_acl`` when the Hub cannot read it as
    data (slow path). ``prev`` is the document's state before the change (given by the publisher, or the
    last version the server saw of that ``_id``); it decides scope exits.
    """

    class_name: str
    op: str
    seq: str
    data: Mapping[str, Any] | None = None
    schema: DocSchema | None = None
    doc: Any = None
    prev: Mapping[str, Any] | None = None
    _subjects: tuple[str, ...] | None = None
    _prev_subjects: tuple[str, ...] | None = None
    #: the epoch of the journal that assigned ``seq`` ("" before it was journaled by a backend); with
    #: ``seq`` it is the change's position (see ``journal.base.Position``)
    epoch: str = ""
    #: the change's place in the journal when it differs from ``seq`` ("" otherwise): a seq chosen by the
    #: caller that is not after the last of its class is journaled after it, at ``<last>~``
    pos: str = ""
    #: ``prev`` was decided by the backend's document store (None then means: no stored version before this
    #: change), so the Hub does not look for one elsewhere
    prev_stored: bool = False
    #: cache of :meth:`encoded_size` (not part of the change's value)
    _size: int | None = field(default=None, compare=False, repr=False)

    @property
    def place(self) -> str:
        """Where the change stands in its journal: ``pos``, else ``seq``."""
        return self.pos or self.seq

    @property
    def subjects(self) -> tuple[str, ...]:
        """The ACL subjects of the document (computed once per change)."""
        if self._subjects is None:
            assert self.data is not None
            self._subjects = subjects_of(self.class_name, self.data, self.schema)
        return self._subjects

    @property
    def prev_subjects(self) -> tuple[str, ...]:
        """The ACL subjects of the previous state (computed once per change)."""
        if self._prev_subjects is None:
            assert self.prev is not None
            self._prev_subjects = subjects_of(self.class_name, self.prev, self.schema)
        return self._prev_subjects

    @property
    def doc_id(self) -> Any:
        return None if self.data is None else self.data.get("_id")

    # -- serialisation: how a change crosses a process boundary (e.g. a Redis Stream entry) --

    def to_record(self, *, with_seq: bool = True) -> bytes:
        """The change as JSON bytes: ``{"class", "op", "id", "seq", "data", "prev", "subjects",
        "prev_subjects"}`` (``prev``/``prev_subjects`` only when there is a previous state; ``seq`` only
        when ``with_seq`` and set). ``subjects`` ride along so that a node reading the record checks ACLs
        without recomputing them; the schema does not (a reader finds it by class name).

        Cost: one ``orjson.dumps`` of the data (and the previous data). Raises
        :class:`ChangeNotSerialisable` for a change with only a ``doc`` object, or non-JSON data.
        """
        if self.data is None:
            raise ChangeNotSerialisable(
                f"{self.class_name}: a change carrying only a Python object ({type(self.doc).__name__}) "
                "cannot be serialised; publish the document's data")
        record: dict[str, Any] = {"class": self.class_name, "op": self.op, "id": self.doc_id}
        if with_seq and self.seq:
            record["seq"] = self.seq
        record["data"] = self.data
        record["subjects"] = self.subjects
        if self.prev is not None:
            record["prev"] = self.prev
            record["prev_subjects"] = self.prev_subjects
        try:
            return orjson.dumps(record)
        except TypeError as exc:
            raise ChangeNotSerialisable(f"{self.class_name}: data is not JSON-ready: {exc}") from None

    def stored_record(self, record: bytes) -> bytes:
        """What a document store keeps of this change: ``record`` (its :meth:`to_record`), without the previous
        state a publisher gave (the store never needs it, and it would be journaled again with the next
        change as that one's previous state)."""
        if self.prev is None:
            return record
        return replace(self, prev=None, _prev_subjects=None, _size=None).to_record(with_seq=False)

    @classmethod
    def from_record(cls, record: bytes | str, *, seq: str | None = None, epoch: str = "",
                    schema: DocSchema | None = None, stored_prev: bytes | str | None = None) -> Change:
        """The change written by :meth:`to_record`. ``seq`` (e.g. from the stream entry id) overrides the
        record's; ``schema`` is the reader's schema of the class (not part of the record). ``stored_prev``:
        what the document store held before the change, journaled beside the record (the record of the
        document's last change, which then is the previous state; empty: there was none, and the publisher
        gave no previous state either). Raises
        :class:`BadChangeRecord` when the bytes are not such a record."""
        try:
            obj = orjson.loads(record)
            class_name, op, data = obj["class"], obj["op"], obj["data"]
            if not (isinstance(obj, dict) and isinstance(class_name, str) and isinstance(op, str)
                    and isinstance(data, dict)):
                raise TypeError("wrong types")
            prev = obj.get("prev")
            subjects = obj.get("subjects")
            prev_subjects = obj.get("prev_subjects")
            change = cls(class_name, op, seq if seq is not None else str(obj.get("seq") or ""), data, schema,
                         prev=prev if isinstance(prev, dict) else None,
                         _subjects=tuple(subjects) if isinstance(subjects, list) else None,
                         _prev_subjects=tuple(prev_subjects) if isinstance(prev_subjects, list) else None,
                         epoch=epoch)
            if stored_prev:  # the version the store held: it wins over a previous state the publisher gave
                old = orjson.loads(stored_prev)["data"]
                if not isinstance(old, dict):
                    raise TypeError("wrong types")
                change.prev, change._prev_subjects, change.prev_stored = old, None, True
            elif stored_prev is not None and change.prev is None:  # the store held nothing before it
                change.prev_stored = True
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise BadChangeRecord(f"not a change record: {exc}") from None
        return change

    def encoded_size(self) -> int:
        """Bytes of the change as a record (:meth:`to_record`), computed once: the unit of the journals'
        byte bounds. A change that cannot be a record (only a ``doc`` object, or data that is not JSON) is
        measured by the ``repr`` of its data or object (an estimate)."""
        if self._size is None:
            try:
                self._size = len(self.to_record(with_seq=False)) + 24  # + the seq, as a record would hold it
            except ChangeNotSerialisable:
                self._size = len(repr(self.data if self.data is not None else self.doc)) + 64
        return self._size


def valid_id(value: Any) -> bool:
    """True for a document ``_id``: a non-empty string or an integer (not a bool)."""
    return (isinstance(value, str) and value != "") or (isinstance(value, int) and not isinstance(value, bool))


def check_change(schema: DocSchema | None, class_name: str, op: Any, data: Any,
                 previous: Any = None) -> DocSchema | None:
    """Check a change given as data before it is published; returns ``schema`` (None: the class is undeclared).

    Raises :class:`DocumentError` naming the problem: an unknown op; a document (or previous state) that does
    not fit the class schema or, without a schema, is not an object with a string or integer ``_id``; a
    previous state of another ``_id``; a document nested deeper than ``MAX_NESTING``.
    """
    if not isinstance(op, str) or op not in OPS:
        raise DocumentError(f"op must be one of {sorted(OPS)}, not {op!r}"[:200])
    for state in [data] if previous is None else [data, previous]:
        if nested_deeper_than(state):  # it could not be encoded for delivery
            raise DocumentError(f"{class_name}: a document may nest at most {MAX_NESTING} levels deep")
        if schema is not None:
            schema.validate(state)
        elif not isinstance(state, Mapping) or not valid_id(state.get("_id")):
            raise DocumentError(f"{class_name}: a document must be a JSON object with an '_id' "
                                "(a non-empty string or an integer)")
    if previous is not None and previous.get("_id") != data.get("_id"):
        raise DocumentError(f"{class_name}: the previous state has another _id than the document")
    return schema
