"""The VARiant model: VAR transformer + depth supernet, usable without varbench.

``VARPipeline`` is imported lazily (module ``__getattr__``) so ``import model`` stays light (no torch) and
works while only the spec/schedule modules are present.
"""
from __future__ import annotations

from typing import Any

from . import spec
from .schedule import DepthSchedule

__all__ = ["spec", "DepthSchedule", "VARPipeline"]


def __getattr__(name: str) -> Any:
    if name == "VARPipeline":
        from .pipeline import VARPipeline

        return VARPipeline
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
