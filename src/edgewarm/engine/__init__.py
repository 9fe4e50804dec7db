"""The warming engine: the scheduler (claims, tiers, retries, leases) and the fetcher (HTTP to nodes)."""

from .fetcher import Fetcher, FetchResult
from .scheduler import Engine

__all__ = ["Engine", "FetchResult", "Fetcher"]
