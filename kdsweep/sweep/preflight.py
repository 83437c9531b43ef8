"""Checks `kdsweep run` makes before starting Ray: every answer to a bad input comes first, and fast.

GPU availability (embedded runs), the teacher checkpoint (exists, is a plain weights file, matches the declared
architecture) and the dataset (present, or downloaded once here rather than by every trial).
"""

from __future__ import annotations

import os

from kdsweep.errors import UserError
from kdsweep.space import Space
from kdsweep.storage import is_uri


def preflight(space: Space, address: str | None) -> None:
    check_gpu(space, address)
    classes = check_dataset(space)
    check_teacher_checkpoint(space, classes)


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


def check_dataset(space: Space) -> int | None:
    """Get the dataset's files (downloading once here rather than in every trial) and read them once (a second or
    two for CIFAR), so that missing, truncated or foreign files are one message now rather than every trial failing
    on them after Ray has started. Returns the number of classes; None for data in a bucket, which the trials read."""
    data = space.data
    locations = [getattr(data, knob) for knob in data.dataset.paths]
    if any(location is not None and is_uri(location) for location in locations):
        return None
    from kdsweep.data import load_dataset

    where = f"dataset.{data.dataset.paths[0]}" if data.dataset.paths else "dataset"
    try:
        data.dataset.prepare(data.config, announce=print)
        return load_dataset(data).num_classes
    except UserError as err:
        raise UserError(f"{space.source}: {where}: {err}") from None


def check_teacher_checkpoint(space: Space, classes: int | None) -> None:
    """Load the declared teacher checkpoint on the CPU once and compare its keys and shapes with the architecture."""
    if space.teacher.training_run is not None:
        return
    from kdsweep.engine.teacher import describe_mismatch, read_checkpoint_bytes, state_dict_from_checkpoint
    from kdsweep.models import create_model

    spec = space.teacher.spec
    sd = state_dict_from_checkpoint(read_checkpoint_bytes(spec.checkpoint), spec.checkpoint)
    if classes is None:
        sizes = space.data.dataset.sizes(space.data.config)
        if sizes is None:
            return  # the dataset is read by the trials only; load_teacher checks the pair there
        classes = sizes.num_classes
    model = create_model(spec.arch, num_classes=classes, image_size=space.data.geometry.image_size)
    mismatch = describe_mismatch(model.state_dict(), sd)
    if mismatch:
        raise UserError(
            f"{space.source}: teacher.checkpoint {spec.checkpoint} does not match teacher.arch '{spec.arch}' with "
            f"{classes} classes: {mismatch}."
        )
