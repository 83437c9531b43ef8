"""The speed switches (kdsweep/engine/fastpath.py) as command-line options, for `kdsweep train` and `kdsweep bench`:
the same names and values as a search space's `execution` section."""

from __future__ import annotations

import argparse

from kdsweep.engine.fastpath import PRECISIONS, SWITCH_VALUES


def add_speed_flags(p: argparse.ArgumentParser, *, fusion: bool = True) -> None:
    p.add_argument("--precision", choices=PRECISIONS, default="auto", help="auto: bf16 on CUDA, fp32 on the CPU")
    p.add_argument("--channels-last", choices=SWITCH_VALUES, default="auto", help="auto: on for CUDA")
    p.add_argument("--compile", choices=SWITCH_VALUES, default="auto",
                   help="torch.compile of the student step; auto: on for CUDA")
    if fusion:
        p.add_argument("--fuse-students", choices=SWITCH_VALUES, default="off",
                       help="vmap fusion of same-structure students (opt-in)")


def speed_switches(args: argparse.Namespace) -> dict[str, str]:
    """The parsed switches, keyed as GroupSpec's fields."""
    names = ("precision", "channels_last", "compile", "fuse_students")
    return {name: getattr(args, name) for name in names if hasattr(args, name)}
