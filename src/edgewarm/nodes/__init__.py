"""What differs per cache: how it tells HIT or MISS (and, with refresh, how it purges)."""

from .signals import (
    NUMBER_MOST,
    CacheState,
    age_of,
    asks_not_to_store,
    cache_state,
    fresh_for,
    header_number,
    retry_after_of,
    vary_of,
)

__all__ = [
    "NUMBER_MOST",
    "CacheState",
    "age_of",
    "asks_not_to_store",
    "cache_state",
    "fresh_for",
    "header_number",
    "retry_after_of",
    "vary_of",
]
