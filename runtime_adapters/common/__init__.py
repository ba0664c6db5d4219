"""Helpers shared by the runtime adapters."""
