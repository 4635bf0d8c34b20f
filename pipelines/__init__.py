"""Thin Ray entry points over :mod:`sscc_core`: one module per stage, plus the ``sscc`` CLI."""
