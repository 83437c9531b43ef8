"""Stable short ids for runs, cells and groups, and what they hash: what identifies a result, wherever files live.

A run's id hashes what determines its result and nothing about locations: the student, the method, lr, seed and
recipe, the dataset's identity (not its mount point), and the teacher's identity, which is

- for a checkpoint: the SHA-256 of its tensors (names, dtypes, shapes and bytes of the state_dict, in name order),
  so the same weights at another path, or saved as `{"model": sd}` instead of a bare state_dict, are the same
  teacher, and different weights at the same path are not;
- for a teacher trained inside the experiment: the id of its training run, which hashes that run's own spec.

An experiment folder can therefore be copied, renamed, synced to a bucket or mounted elsewhere and every run in it is
still found. kdsweep 0.1 hashed the teacher's absolute path instead; `legacy_teacher_identity` rebuilds that
identity, so that `sweep/experiment.py` can map an 0.1 experiment's run folders onto today's ids.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache

from kdsweep.storage import is_uri


def digest(value) -> str:
    """10 hex characters of the SHA-1 of `value`'s canonical JSON: equal inputs, equal ids, in any process."""
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:10]


TRAINED, CONTENT, UNREADABLE = "trained_run", "content_sha256", "unreadable_checkpoint"


def state_dict_digest(state_dict: dict) -> str:
    """SHA-256 over the tensors of a state_dict, in key order: names, dtypes, shapes and raw bytes."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        h.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        if tensor.numel():  # as bytes, so that bf16 and every other dtype hash alike
            h.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def checkpoint_digest(location: str) -> str:
    """The tensors' SHA-256 of a teacher checkpoint; raises UserError when it cannot be read as one."""
    if is_uri(location):
        return _digest_of(location)
    stat = os.stat(location)  # a changed file (size or mtime) is hashed again
    return _cached_digest(location, stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=8)
def _cached_digest(location: str, size: int, mtime_ns: int) -> str:
    return _digest_of(location)


def _digest_of(location: str) -> str:
    from kdsweep.engine.teacher import read_checkpoint_bytes, state_dict_from_checkpoint

    return state_dict_digest(state_dict_from_checkpoint(read_checkpoint_bytes(location), location))


def teacher_identity(arch: str, checkpoint: str | None, training_run_id: str | None) -> dict:
    """The teacher's part of every student's identity. A checkpoint that cannot be read yields an `unreadable`
    identity: such a space can still be validated, and `kdsweep run` refuses it in its preflight, with the reason,
    before any id is used."""
    if training_run_id is not None:
        return {"arch": arch, TRAINED: training_run_id}
    from kdsweep.errors import UserError

    try:
        return {"arch": arch, CONTENT: checkpoint_digest(checkpoint)}
    except (OSError, UserError):
        return {"arch": arch, UNREADABLE: checkpoint}


def is_resolved(identity: dict) -> bool:
    return UNREADABLE not in identity


def legacy_teacher_identity(arch: str, checkpoint_location: str) -> dict:
    """kdsweep 0.1's teacher identity: the architecture and the checkpoint's absolute location as it was then."""
    return {"arch": arch, "checkpoint": checkpoint_location}
