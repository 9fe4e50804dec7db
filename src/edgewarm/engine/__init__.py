"""The warming engine: the scheduler (claims, tiers, retries, leases) and the fetcher (HTTP to nodes)."""

from .fetch_process import ProcessFetcher, open_fetcher
from .fetcher import Fetcher, FetchResult, NodeClient
from .node_health import NodeHealth
from .scheduler import Engine

__all__ = ["Engine", "FetchResult", "Fetcher", "NodeClient", "NodeHealth", "ProcessFetcher", "open_fetcher"]
