"""The journal contract's fixtures (defined in ``journal_helpers``): ``redis_url``, ``own_redis``,
``make_backend``."""

from .journal_helpers import make_backend, own_redis, redis_url

__all__ = ["make_backend", "own_redis", "redis_url"]
