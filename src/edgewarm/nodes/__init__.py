"""What differs per cache: how it tells HIT or MISS (and, with refresh, how it purges)."""

from .signals import CacheState, cache_state

__all__ = ["CacheState", "cache_state"]
