"""Easel: a self-hostable image-generation task server speaking the Tripo 3D OpenAPI v2."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
