"""The ropepatch version: one place, imported by everything that records or prints it."""

__version__ = "0.1.0"
