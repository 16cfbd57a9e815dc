"""Session fixtures for the model stage."""

from __future__ import annotations
