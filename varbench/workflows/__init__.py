"""Workflows that compose the rooms: TOML suites and the demo."""
