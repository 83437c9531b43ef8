"""Loading a frozen teacher from a RepDistiller/SimKD checkpoint, with answers instead of tracebacks."""

from __future__ import annotations

import os
import pickle
import stat

import torch

from kdsweep.engine.checkpoint import from_bytes, sha256
from kdsweep.errors import UserError
from kdsweep.models import FeatureModel, create_model
from kdsweep.storage import Store, is_uri

_MAX_LISTED = 5


# The largest teacher file read: CIFAR teachers are 1-30 MB, an ImageNet ResNet-50 ~100 MB. Bounds what a wrong path
# (a disk image, /dev/zero) can make kdsweep read into memory.
MAX_CHECKPOINT_BYTES = 4 * 2**30


def read_checkpoint_bytes(location: str) -> bytes:
    if not is_uri(location):
        _check_local_checkpoint(location)
    parent, _, name = location.rstrip("/").rpartition("/")
    store = Store(parent or "/")
    if not store.exists(name):
        raise UserError(
            f"teacher checkpoint {location} does not exist. Point `teacher.checkpoint` at a RepDistiller/SimKD "
            f"checkpoint (a file holding {{'model': state_dict}} or a bare state_dict), or replace it with a "
            f"`teacher.train` section so that kdsweep trains the teacher."
        )
    return store.read_bytes(name)


def _check_local_checkpoint(location: str) -> None:
    """A local teacher checkpoint must be a regular file of at most MAX_CHECKPOINT_BYTES: a device would be read
    without end and a FIFO would block the driver. Checked with stat, which neither reads nor blocks."""
    try:
        info = os.stat(location)
    except FileNotFoundError:
        return  # read_checkpoint_bytes names the missing file
    except OSError as err:
        raise UserError(f"teacher checkpoint {location} cannot be read: {err.strerror}.") from None
    if not stat.S_ISREG(info.st_mode):
        kind = ("a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode)
                else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "a socket")
        raise UserError(f"teacher checkpoint {location} is {kind}, not a regular file. Point `teacher.checkpoint` "
                        f"at a file written by torch.save.")
    if info.st_size > MAX_CHECKPOINT_BYTES:
        raise UserError(f"teacher checkpoint {location} is {info.st_size / 2**30:.1f} GiB, over the "
                        f"{MAX_CHECKPOINT_BYTES // 2**30} GiB kdsweep reads for a teacher: is it the right file?")


def state_dict_from_checkpoint(data: bytes, location: str) -> dict[str, torch.Tensor]:
    """The state_dict inside a checkpoint file: `{"model": sd}` (RepDistiller/SimKD/kdsweep) or a bare sd."""
    try:
        obj = from_bytes(data)
    except pickle.UnpicklingError as err:
        if "Unsupported global" not in str(err):
            raise UserError(
                f"teacher checkpoint {location} is not a PyTorch checkpoint (torch.load cannot read it). Expected a file "
                f"written by torch.save holding {{'model': state_dict}} or a bare state_dict."
            ) from err
        raise UserError(
            f"teacher checkpoint {location} was refused: it is not a plain weights file (loading it would need "
            f"to run code or build objects that `torch.load(weights_only=True)` does not allow: {_refusal(err)}). "
            f"Save the teacher as `torch.save({{'model': model.state_dict()}}, path)`."
        ) from err
    except Exception as err:
        raise UserError(
            f"teacher checkpoint {location} is not a PyTorch checkpoint ({_first_line(err)}). Expected a file "
            f"written by torch.save holding {{'model': state_dict}} or a bare state_dict."
        ) from err
    sd = obj.get("model", obj) if isinstance(obj, dict) else obj
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(
            f"teacher checkpoint {location} holds no state_dict (found {type(sd).__name__}); expected "
            f"{{'model': state_dict}} or a bare state_dict of tensors."
        )
    return sd


def load_teacher(arch: str, location: str, num_classes: int, device: torch.device,
                 image_size: int = 32) -> tuple[FeatureModel, str]:
    """The frozen teacher (eval mode, no gradients) for `image_size` px inputs, and the checkpoint's sha256."""
    data = read_checkpoint_bytes(location)
    sd = state_dict_from_checkpoint(data, location)
    model = create_model(arch, num_classes=num_classes, image_size=image_size)
    mismatch = describe_mismatch(model.state_dict(), sd)
    if mismatch:
        raise UserError(
            f"teacher checkpoint {location} does not match architecture '{arch}' with {num_classes} classes: "
            f"{mismatch}. Check `teacher.arch` (and the dataset's number of classes) against the checkpoint."
        )
    model.load_state_dict(sd, strict=True)
    return freeze(model).to(device), sha256(data)


def freeze(model: FeatureModel) -> FeatureModel:
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def describe_mismatch(expected: dict, found: dict) -> str:
    """'' when the keys and shapes agree, else the first few differences in one line."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k} {tuple(found[k].shape)} vs expected {tuple(expected[k].shape)}"
        for k in expected if k in found and tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    parts = []
    for label, items in (("shape mismatches", shapes), ("missing keys", missing), ("unexpected keys", unexpected)):
        if items:
            more = f" (+{len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
            parts.append(f"{len(items)} {label}: {', '.join(items[:_MAX_LISTED])}{more}")
    return "; ".join(parts)


def _refusal(err: Exception) -> str:
    """The line of torch's weights-only refusal that names what was refused."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    named = [line for line in lines if "Unsupported global" in line or "WeightsUnpickler error" in line]
    return (named or lines or [type(err).__name__])[0].split(" Please use", 1)[0].rstrip(".")


def _first_line(err: Exception) -> str:
    """The error's first sentence: torch follows it with advice (e.g. to load with weights_only=False, which would
    let the file run code) that kdsweep must not pass on."""
    text = str(err).strip().splitlines()
    return text[0].split(". ", 1)[0].rstrip(".") if text else type(err).__name__


