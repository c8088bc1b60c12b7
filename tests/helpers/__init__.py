"""Shared test helpers: fake models, generated images, tables and tar shards (not tests)."""
