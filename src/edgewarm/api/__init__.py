"""HTTP API: request -> service -> store."""

from .app import create_app

__all__ = ["create_app"]
