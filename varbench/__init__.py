"""varbench: profile, benchmark and guard VAR / VARiant visual autoregressive models."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
