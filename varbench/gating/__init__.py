"""Gating: regression checks of results against a baseline."""
