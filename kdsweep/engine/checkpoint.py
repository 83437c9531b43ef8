"""Checksummed, atomic checkpoints with fallback to the previous good one.

Layout under a run's folder: `checkpoints/epoch-0012.pt` plus `checkpoints/epoch-0012.pt.sha256` (a run's
`final.pt` has one too: `write_checksummed`). The checksum file is written after the checkpoint, so a checkpoint
without one (a kill between the two writes) or with a mismatching one (a truncated or corrupted file) is skipped with
a warning naming it, and the previous good one is
used. The newest `KEEP` checkpoints are kept. Loading uses `torch.load(weights_only=True)`: a checkpoint can hold
tensors and plain containers, never code.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings

import torch

from kdsweep.storage import Store

KEEP = 2
_NAME = re.compile(r"^epoch-(\d{4,})\.pt$")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def to_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def from_bytes(data: bytes, map_location="cpu"):
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)


class CheckpointDir:
    def __init__(self, store: Store, folder: str):
        self.store, self.folder = store, folder

    def save(self, epoch: int, state: dict) -> dict:
        """Write the checkpoint for `epoch` (epochs completed); returns {"file", "sha256"} for the records, the file
        relative to the store (the experiment folder), so that the records stay true when the folder moves."""
        name = f"epoch-{epoch:04d}.pt"
        digest = write_checksummed(self.store, f"{self.folder}/{name}", to_bytes(state))
        for old in self._epochs()[:-KEEP]:
            self.store.delete(f"{self.folder}/epoch-{old:04d}.pt.sha256")
            self.store.delete(f"{self.folder}/epoch-{old:04d}.pt")
        return {"file": f"{self.folder}/{name}", "sha256": digest}

    def load_latest(self, map_location="cpu") -> dict | None:
        """The newest checkpoint whose checksum verifies and which loads; None when there is none."""
        for epoch in reversed(self._epochs()):
            name = f"{self.folder}/epoch-{epoch:04d}.pt"
            problem, state = self._try_load(name, map_location)
            if problem is None:
                return state
            warnings.warn(f"checkpoint {self.store.location(name)} {problem}; using the previous good checkpoint")
        return None

    def _try_load(self, name: str, map_location):
        problem, data = verified_bytes(self.store, name)
        if problem is not None:
            return problem, None
        try:
            return None, from_bytes(data, map_location)
        except Exception as err:  # a verified file that still does not load: treat like corruption
            return f"could not be loaded ({err})", None

    def _epochs(self) -> list[int]:
        found = (_NAME.match(n) for n in self.store.list(self.folder))
        return sorted(int(m.group(1)) for m in found if m)


def write_checksummed(store: Store, rel: str, data: bytes) -> str:
    """Write `rel`, then its checksum file; returns the digest."""
    store.write_bytes(rel, data)
    return write_checksum(store, rel, data)


def write_checksum(store: Store, rel: str, data: bytes) -> str:
    """`rel.sha256` for `data`, the bytes of `rel`: `<digest>  <name>`, as sha256sum writes it."""
    digest = sha256(data)
    store.write_bytes(f"{rel}.sha256", f"{digest}  {rel.rsplit('/', 1)[-1]}\n".encode())
    return digest


def verified_bytes(store: Store, rel: str) -> tuple[str | None, bytes | None]:
    """(None, the bytes of `rel`) when its checksum file verifies them, else (what is wrong, None)."""
    if not store.exists(f"{rel}.sha256"):
        return "has no checksum file (it was being written when the process stopped)", None
    expected = _recorded_digest(store.read_bytes(f"{rel}.sha256"))
    if expected is None:  # a damaged checksum file makes its file unverifiable: a damaged file
        return "has a damaged checksum file (not `<64 hex digits>  <name>`)", None
    data = store.read_bytes(rel) if store.exists(rel) else b""
    if sha256(data) != expected:
        return "is corrupted or truncated (checksum mismatch)", None
    return None, data


def _recorded_digest(content: bytes) -> str | None:
    """The SHA-256 a `.sha256` file records (`<64 hex digits>  <name>`, as sha256sum writes), None when damaged."""
    words = content.decode("ascii", errors="replace").split()
    digest = words[0].lower() if words else ""
    return digest if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) else None
