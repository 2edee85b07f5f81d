"""What one subscription may cost: bounds on its scope and catalog, checked once at subscribe time.

A change is tested against every view a subscription creates, so an expensive scope is paid on every
change of its class: these bounds keep the per-change cost of one subscription small and known. A
subscription over a bound is refused with the scope's (4420) or the catalog's (4421) close code and a
reason naming the bound. The defaults are the server's; ``docs/configuration.md`` documents each.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SubscriptionLimits:
    """Bounds on one subscription. Costs: a scope condition costs one test per change and view; an ``in``
    list is a set looked up in O(1) but held in memory; a dotted path costs one lookup per part."""

    #: conditions in one data scope
    max_conditions: int = 32
    #: parts of a dotted path (``a.b.c`` has 3)
    max_path_depth: int = 8
    #: values in one ``in`` / ``not in`` list
    max_in_values: int = 1024
    #: characters of one string value in a scope (a field name, a value, an element of a list)
    max_value_length: int = 4096
    #: nesting depth of a catalog (a top-level field is depth 1)
    max_catalog_depth: int = 8
    #: field names in a catalog, counted at every depth
    max_catalog_fields: int = 512


DEFAULT_LIMITS = SubscriptionLimits()
