"""Session fixtures for the data stage."""

from __future__ import annotations
