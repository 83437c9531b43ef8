"""Checks `kdsweep run` makes before starting Ray: every answer to a bad input comes first, and fast.

GPU availability (embedded runs), the teacher checkpoint (exists, is a plain weights file, matches the declared
architecture) and the dataset (present, or downloaded once here rather than by every trial).
"""

from __future__ import annotations

import os
from pathlib import Path

from kdsweep.errors import UserError
from kdsweep.space import Space
from kdsweep.storage import is_uri


def preflight(space: Space, address: str | None) -> None:
    check_gpu(space, address)
    check_dataset(space)
    check_teacher_checkpoint(space)


def check_gpu(space: Space, address: str | None) -> None:
    gpu = space.file.resources.gpu
    if gpu > 0 and not (address or os.environ.get("RAY_ADDRESS")):
        import torch

        if not torch.cuda.is_available():
            raise UserError(
                f"{space.source}: resources.gpu is {gpu:g} but this machine has no usable CUDA GPU and no cluster "
                f"--address was given. Use --set resources.gpu=0 to run on the CPU, or pass --address of a Ray "
                f"cluster with GPU nodes."
            )


def check_dataset(space: Space) -> None:
    data = space.data
    if data.name != "cifar100" or data.root is None or is_uri(data.root):
        return
    from kdsweep.data.cifar100 import FILES, FOLDER, download_cifar100, layout_help

    root = Path(data.root)
    missing = [name for name in FILES if not (root / FOLDER / name).is_file()]
    if missing and data.download:
        print(f"kdsweep: downloading CIFAR-100 into {root} (once, before any trial starts)")
        download_cifar100(root)
        missing = [name for name in FILES if not (root / FOLDER / name).is_file()]
    if missing:
        where = (f"missing {', '.join(str(root / FOLDER / n) for n in missing)}" if root.is_dir()
                 else f"the directory {root} does not exist")
        raise UserError(f"{space.source}: dataset.root: CIFAR-100 not found: {where}. " + layout_help(root))
    # Read it once here (a second or two for CIFAR-100), so that truncated or foreign files are one message now
    # rather than every trial failing on them after Ray has started.
    from kdsweep.data import load_dataset

    try:
        load_dataset(data)
    except UserError as err:
        raise UserError(f"{space.source}: dataset.root: {err}") from None


def check_teacher_checkpoint(space: Space) -> None:
    """Load the declared teacher checkpoint on the CPU once and compare its keys and shapes with the architecture."""
    if space.teacher.training_run is not None:
        return
    from kdsweep.engine.teacher import describe_mismatch, read_checkpoint_bytes, state_dict_from_checkpoint
    from kdsweep.models import create_model

    spec = space.teacher.spec
    sd = state_dict_from_checkpoint(read_checkpoint_bytes(spec.checkpoint), spec.checkpoint)
    classes = 100 if space.data.name == "cifar100" else space.data.num_classes
    mismatch = describe_mismatch(create_model(spec.arch, num_classes=classes).state_dict(), sd)
    if mismatch:
        raise UserError(
            f"{space.source}: teacher.checkpoint {spec.checkpoint} does not match teacher.arch '{spec.arch}' with "
            f"{classes} classes: {mismatch}."
        )
