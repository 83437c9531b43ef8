"""Stable short ids for runs, cells and groups."""

from __future__ import annotations

import hashlib
import json


def digest(value) -> str:
    """10 hex characters of the SHA-1 of `value`'s canonical JSON: equal inputs, equal ids, in any process."""
    return hashlib.sha1(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:10]
