"""Shared helpers: atomic file writes, hashing, JSON."""
