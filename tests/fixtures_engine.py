"""Session fixtures for the engine stage."""

from __future__ import annotations
