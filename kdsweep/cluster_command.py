"""`kdsweep submit`, `kdsweep jobs`, `kdsweep stop`: sweeps as Ray jobs on an existing cluster (to be written)."""

from __future__ import annotations

import argparse


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register the cluster subcommands on the `kdsweep` parser."""
