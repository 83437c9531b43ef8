"""Regenerates tests/golden/space_run_ids.json: the run ids of every shipped search space, in order.

    python tests/golden/make_space_run_ids.py

Made with the code before methods became plug-ins (commit d4eb3e2); `tests/test_plugins.py` checks that today's
code gives the same ids, so finished experiments resume instead of retraining. The teacher checkpoints the spaces
name are not in the repository, so a fixed stand-in identity takes their place (ids hash the identity only).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).with_name("space_run_ids.json")
SPACES = ("full_grid", "seed_replication", "smoke")


def run_ids() -> dict[str, list[str]]:
    from kdsweep.space.loading import load_space

    out = {}
    for name in SPACES:
        path = REPO / "search_spaces" / f"{name}.yaml"
        arch = yaml.safe_load(path.read_text())["teacher"]["arch"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # seed_replication's raw-feature KL warning
            space = load_space(path, root="/experiment", base=REPO,
                               known_teacher={"arch": arch, "content_sha256": "ab" * 32})
        out[name] = [r.run_id for r in space.runs]
    return out


if __name__ == "__main__":
    GOLDEN.write_text(json.dumps(run_ids(), indent=1) + "\n")
