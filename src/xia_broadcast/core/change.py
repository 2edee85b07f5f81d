"""A published change, as the engine and the journal see it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .acl import subjects_of
from .schema import DocSchema


@dataclass(slots=True)
class Change:
    """One published change.

    ``data`` is the document's stored, JSON-ready data (fast path); ``doc`` is the original object, used
    through its own ``check_scope``/``get_display_data``/``check_acl`` when the engine cannot read it as
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
