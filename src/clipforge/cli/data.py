"""``clipforge data``: (being written; registers no verb yet)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Adds the verb (none yet)."""
