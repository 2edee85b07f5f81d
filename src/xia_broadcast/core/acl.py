"""Access-control lists and the subjects a document yields.

An ACL is ``{"content": [{"obj": "Order/key/123", "act": "read"}, {"obj": "Customer/*", "act": "read,write"}]}``.
A document yields one subject per key set: ``Class/key/<values of its key fields>`` and, for each privilege
key, ``Class/<privilege key name>/<values>``; several values are joined by ``/``; a class without key
fields uses its ``_id`` as key. An item grants an action on a document when its ``obj`` pattern matches one
of the document's subjects and its comma-separated ``act`` list holds that action; ``*`` is a wildcard
(any run of characters, ``/`` included) in both. ``acl=None`` is unrestricted; an ACL with empty content
grants nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

from ..errors import InvalidAclError
from .schema import DocSchema


@cache
def _pattern_regex(pattern: str) -> str:
    return ".*".join(re.escape(part) for part in pattern.split("*"))


def act_grants(act: str, action: str) -> bool:
    for item in act.split(","):
        item = item.strip()
        if item and re.fullmatch(_pattern_regex(item), action):
            return True
    return False


class _Matcher:
    """The ``obj`` patterns granting one action, compiled: literal patterns are a set lookup, patterns with
    one trailing ``*`` a ``str.startswith`` over a tuple, anything else one regular expression."""

    __slots__ = ("exact", "prefixes", "regex")

    def __init__(self, patterns: Iterable[str]) -> None:
        exact, prefixes, other = set(), set(), set()
        for p in patterns:
            star = p.find("*")
            if star < 0:
                exact.add(p)
            elif star == len(p) - 1:
                prefixes.add(p[:-1])
            else:
                other.add(_pattern_regex(p))
        self.exact = frozenset(exact)
        self.prefixes = tuple(sorted(prefixes))
        self.regex = re.compile("|".join(f"(?:{r})" for r in sorted(other))).fullmatch if other else None

    def any_of(self, subjects: Sequence[str]) -> bool:
        exact, prefixes, regex = self.exact, self.prefixes, self.regex
        for s in subjects:
            if s in exact or (prefixes and s.startswith(prefixes)) or (regex is not None and regex(s)):
                return True
        return False

    def __bool__(self) -> bool:
        return True


def may_match_class(pattern: str, class_name: str) -> bool:
    """Whether an ``obj`` pattern can match some subject of a document of ``class_name`` (a string that
    begins with ``<class_name>/``): its literal text before the first ``*`` (all of it, without one) must
    agree with that beginning as far as either goes. Never False for a pattern that can match."""
    prefix = class_name + "/"
    star = pattern.find("*")
    if star < 0:
        return pattern.startswith(prefix)
    literal = pattern[:star]
    return literal.startswith(prefix) or prefix.startswith(literal)


@dataclass(frozen=True)
class AclItem:
    """One grant: an object pattern and a comma-separated list of actions (patterns too)."""

    obj: str
    act: str

    def get_display_data(self) -> dict[str, str]:
        return {"obj": self.obj, "act": self.act}


class Acl:
    """An access-control list. Immutable; hashable by content so that equal ACLs share one view.

    Matching compiles each action's grants into one regular expression, once per ACL and action.
    """

    __slots__ = ("_matchers", "content", "key")

    def __init__(self, content: Iterable[AclItem] = ()) -> None:
        self.content: tuple[AclItem, ...] = tuple(content)
        self.key: tuple[tuple[str, str], ...] = tuple(sorted({(i.obj, i.act) for i in self.content}))
        self._matchers: dict[str, _Matcher] = {}

    @classmethod
    def from_display(cls, content: Any = None, **_ignored: Any) -> Acl:
        """Build an ACL from its display form, as the original does: ``Acl.from_display(content=[...])``."""
        if content is None:
            content = []
        if not isinstance(content, (list, tuple)):
            raise InvalidAclError("ACL content must be a list of {obj, act} items")
        items = []
        for i, item in enumerate(content):
            if isinstance(item, AclItem):
                items.append(item)
                continue
            if isinstance(item, Mapping):
                obj, act = item.get("obj"), item.get("act")
            else:
                obj, act = getattr(item, "obj", None), getattr(item, "act", None)
            if not isinstance(obj, str) or not isinstance(act, str):
                raise InvalidAclError(f"ACL content[{i}] needs string 'obj' and 'act'")
            items.append(AclItem(obj, act))
        return cls(items)

    @classmethod
    def coerce(cls, acl: Any) -> Acl | None:
        """Accept ``None``, an :class:`Acl`, a display dict, or any object with a ``content`` list."""
        if acl is None or isinstance(acl, Acl):
            return acl
        if isinstance(acl, Mapping):
            extra = set(acl) - {"content"}
            if extra:
                raise InvalidAclError(f"unknown ACL entries {sorted(extra)}")
            return cls.from_display(acl.get("content"))
        content = getattr(acl, "content", None)
        if content is not None:
            return cls.from_display(list(content))
        raise InvalidAclError(f"not an ACL: {type(acl).__name__}")

    def get_display_data(self) -> dict[str, list[dict[str, str]]]:
        return {"content": [i.get_display_data() for i in self.content]}

    def _matcher(self, action: str) -> _Matcher:
        try:
            return self._matchers[action]
        except KeyError:
            m = self._matchers[action] = _Matcher(i.obj for i in self.content if act_grants(i.act, action))
            return m

    def for_class(self, class_name: str) -> Acl:
        """This ACL less the items that can grant nothing on a document of ``class_name`` (whose subjects all
        begin with ``<class_name>/``): for such documents it decides exactly as this ACL does. ACLs that differ
        only in grants on other classes (every user's own record elsewhere) become equal, so views can share
        their decisions (see :class:`~xia_broadcast.fanout.SharedAcl`)."""
        return Acl(i for i in self.content if may_match_class(i.obj, class_name))

    def allows(self, subjects: Sequence[str], action: str = "read") -> bool:
        """True when some item grants ``action`` on one of ``subjects``."""
        m = self._matchers.get(action) or self._matcher(action)
        return m.any_of(subjects)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Acl) and other.key == self.key

    def __hash__(self) -> int:
        return hash(self.key)

    def __repr__(self) -> str:
        return f"Acl({[i.get_display_data() for i in self.content]!r})"


def _join(values: Iterable[Any]) -> str:
    return "/".join("" if v is None else str(v) for v in values)


def subjects_of(class_name: str, data: Mapping[str, Any], schema: DocSchema | None) -> tuple[str, ...]:
    """The ACL subjects a document yields (see the module docstring)."""
    if schema is None or not schema.key_fields:
        subjects = [f"{class_name}/key/{_join([data.get('_id')])}"]
    else:
        subjects = [f"{class_name}/key/{_join(data.get(k) for k in schema.key_fields)}"]
    if schema is not None:
        for pname, fields in schema.privilege_keys.items():
            subjects.append(f"{class_name}/{pname}/{_join(data.get(k) for k in fields)}")
    return tuple(subjects)


def check_acl(acl: Acl | None, subjects: Sequence[str], action: str = "read") -> bool:
    """``acl=None`` is unrestricted; otherwise :meth:`Acl.allows`."""
    return True if acl is None else acl.allows(subjects, action)
