"""`kdsweep bench`: throughput of the training paths side by side (to be written)."""

from __future__ import annotations

import argparse


def add_command(sub: argparse._SubParsersAction) -> None:
    """Register the bench subcommand on the `kdsweep` parser."""
