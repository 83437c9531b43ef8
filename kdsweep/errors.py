"""User-facing errors.

Anything the user can fix (a bad file, a missing dataset, a cluster that cannot run the request) is raised as a
`UserError`. The CLI prints its message as one paragraph and exits with code 2; it never shows a traceback for
these. Bugs stay ordinary exceptions so that they do show one.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem with the user's input or environment, explained in one paragraph."""

    exit_code = 2


def closest(name: str, known: Iterable[str], cutoff: float = 0.5) -> str | None:
    """The known name most similar to `name`, or None when nothing is close (difflib's similarity < `cutoff`)."""
    known = list(known)
    lowered = {k.lower(): k for k in known}
    if name.lower() in lowered:
        return lowered[name.lower()]
    match = difflib.get_close_matches(name, known, n=1, cutoff=cutoff)
    return match[0] if match else None


def unknown_name(kind: str, name: str, known: Iterable[str]) -> str:
    """'unknown model 'resnet32x8' (did you mean 'resnet32x4'?); known: a, b, c'."""
    known = sorted(known)
    hint = closest(name, known)
    did_you_mean = f" (did you mean '{hint}'?)" if hint else ""
    return f"unknown {kind} '{name}'{did_you_mean}; known: {', '.join(known)}"
