"""How long a listener waits before it reconnects: exponential backoff with full jitter.

Pure: the random source is injected. After the ``n``-th consecutive failure the delay is drawn uniformly from
``[0, min(max_delay, initial * factor ** (n - 1))]`` ("full jitter"), so that clients dropped together by a
server restart do not all come back at the same instant, and no client waits longer than ``max_delay``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Reconnection delays, in seconds.

    ``initial``: the bound of the first delay; ``factor``: its growth per consecutive failure;
    ``max_delay``: the bound never exceeded; ``rng``: the random source (seed it for reproducible delays).
    """

    initial: float = 0.5
    factor: float = 2.0
    max_delay: float = 30.0
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        if self.initial < 0 or self.max_delay < 0 or self.factor < 1:
            raise ValueError("Backoff needs initial >= 0, max_delay >= 0 and factor >= 1")

    def bound(self, failures: int) -> float:
        """The largest delay after ``failures`` consecutive failures (``failures >= 1``)."""
        exponent = max(0, failures - 1)
        # compare exponents rather than compute a huge power: factor ** exponent may overflow a float
        if self.initial == 0:
            return 0.0
        if self.factor > 1 and exponent > 64:
            return self.max_delay
        return min(self.max_delay, self.initial * self.factor ** exponent)

    def delay(self, failures: int) -> float:
        """A delay drawn with full jitter for the ``failures``-th consecutive failure."""
        return self.rng.uniform(0.0, self.bound(failures))
