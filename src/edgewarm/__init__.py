"""edgewarm: a self-hosted CDN cache prewarm and refresh service."""

__version__ = "0.1.0"
