"""What differs per cache: how it tells HIT or MISS (and, with refresh, how it purges)."""

from .signals import CacheState, age_of, asks_not_to_store, cache_state, fresh_for, vary_of

__all__ = ["CacheState", "age_of", "asks_not_to_store", "cache_state", "fresh_for", "vary_of"]
