"""Helpers for testing edgewarm and programs built on it, shipped with the package."""

from edgewarm.testing.lab import (
    DEFAULT_HOST,
    Lab,
    LabError,
    LabNode,
    LabRequest,
    LabResponse,
    process_group_members,
    self_signed,
)

__all__ = [
    "DEFAULT_HOST",
    "Lab",
    "LabError",
    "LabNode",
    "LabRequest",
    "LabResponse",
    "process_group_members",
    "self_signed",
]
