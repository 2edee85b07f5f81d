"""The last version seen of each document, bounded, to find scope exits when a publisher gives no
previous state."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: default bound of remembered versions per class
DEFAULT_MAX_TRACKED_IDS = 100_000


class LastVersions:
    """``_id`` -> last published data of one class, keeping at most ``max_ids`` (least recently
    published dropped first). Memory: one reference per id to data the journal usually holds anyway."""

    __slots__ = ("_data", "max_ids")

    def __init__(self, max_ids: int) -> None:
        self.max_ids = max_ids
        self._data: dict[Any, Mapping[str, Any]] = {}

    def get(self, doc_id: Any) -> Mapping[str, Any] | None:
        return self._data.get(doc_id)

    def record(self, op: str, doc_id: Any, data: Mapping[str, Any]) -> None:
        """Remember ``data`` as the current version (forget it on a delete)."""
        d = self._data
        d.pop(doc_id, None)
        if op == "D" or self.max_ids <= 0:
            return
        d[doc_id] = data
        if len(d) > self.max_ids:
            del d[next(iter(d))]

    def __len__(self) -> int:
        return len(self._data)
