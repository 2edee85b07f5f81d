"""How deeply a JSON value nests: a bound every document and catalog must keep.

orjson encodes at most 254 levels of nesting; a value deeper than that could be accepted and then never
delivered. :data:`MAX_NESTING` keeps a margin below that for the envelope a message is wrapped in.
"""

from __future__ import annotations

from typing import Any

#: deepest nesting of objects and arrays accepted in a published document or a catalog (the value itself
#: is level 1); deeper is refused where it enters (422 at publish, 4421 at subscribe)
MAX_NESTING = 200


def nested_deeper_than(value: Any, limit: int = MAX_NESTING) -> bool:
    """True when ``value`` has more than ``limit`` levels of dicts and lists (and tuples).

    Iterative, so that no depth can exhaust the interpreter's stack; visits each container once (cost
    linear in the value's size) and stops at the first container past ``limit``.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list, tuple)))
    return False
