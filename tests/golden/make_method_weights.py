"""Regenerates tests/golden/method_weights.json: the digest of every student's final weights after two CPU epochs.

    python tests/golden/make_method_weights.py

Each case trains one student group of the engine on tiny synthetic data from a seeded random teacher and records
the SHA-256 of every student's final state (backbone + method extras, `kdsweep/ids.py:state_dict_digest`).
The file was made with the code before methods became plug-ins (commit d4eb3e2), so `tests/test_methods.py`
proves that SimKD, its ablations, KD and vanilla still train to bitwise the same weights on the CPU. Regenerate it
only for a change that is meant to move those weights, and say so in the commit.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

from kdsweep.engine import GroupSpec, run_group
from kdsweep.ids import state_dict_digest
from kdsweep.models import create_model

GOLDEN = Path(__file__).with_name("method_weights.json")
DATA = {"name": "synthetic", "num_classes": 10, "train_size": 160, "test_size": 32, "seed": 0}
RECIPE = {"epochs": 2, "batch_size": 32, "momentum": 0.9, "weight_decay": 5e-4, "milestones": [1], "gamma": 0.1,
          "checkpoint_every": 1}
# Each case: the method's kind and the knobs that differ from the kind's defaults.
CASES = {
    "simkd_last_l2": {"kind": "simkd"},
    "simkd_multi_kl": {"kind": "simkd", "taps": "multi", "loss": "kl"},
    "simkd_all_blocks_gate": {"kind": "simkd", "taps": "all_blocks", "gate": "teacher_correct",
                              "pairing": "relative_depth", "last_weight": 0.5},
    "simkd_kl_raw_authors": {"kind": "simkd", "loss": "kl_raw", "ce_weight": 1.0, "kd_weight": 1.0,
                             "eval_head": "student", "gate": "teacher_correct", "gate_normalise": "all"},
    "kd": {"kind": "kd"},
    "vanilla": {"kind": "vanilla"},
}


def train_cases(root: Path, method_record) -> dict[str, str]:
    """{case: digest of the final student weights}; `method_record(knobs)` turns a case into a stored record."""
    torch.manual_seed(0)
    teacher = create_model("resnet8", num_classes=10)
    checkpoint = root / "teacher.pt"
    torch.save({"model": teacher.state_dict()}, checkpoint)
    out = {}
    for name, knobs in CASES.items():
        run = {"run_id": name, "student_arch": "resnet8", "method": method_record(knobs), "lr": 0.05, "seed": 3,
               "recipe": RECIPE, "labels": {"variant": name, "title": name, "cell_id": name}}
        spec = GroupSpec.from_dict({
            "group_id": f"g-{name}", "seed": 1, "data": DATA,
            "teacher": None if knobs["kind"] == "vanilla" else {"arch": "resnet8", "checkpoint": str(checkpoint)},
            "runs": [run], "storage": str(root / name), "device": "cpu", "threads": 1, "teacher_cache": "off",
        })
        run_group(spec)
        state = torch.load(root / name / "runs" / name / "checkpoints" / "epoch-0002.pt", map_location="cpu")
        out[name] = state_dict_digest(state["unit"])
    return out


def method_record(knobs: dict) -> dict:
    """The stored record of a case's method: its kind's config with the case's knobs."""
    from kdsweep.methods import MethodSpec

    return MethodSpec.from_record(knobs).as_record()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        digests = train_cases(Path(tmp), method_record)
    GOLDEN.write_text(json.dumps(digests, indent=2) + "\n")
    json.dump(digests, sys.stdout, indent=2)


if __name__ == "__main__":
    main()
