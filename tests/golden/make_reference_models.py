"""Regenerates tests/golden/reference_models.json from the SimKD reference model definitions.

    git clone https://github.com/DefangChen/SimKD /tmp/SimKD   # the file was made at commit 2b389c3
    python tests/golden/make_reference_models.py /tmp/SimKD [--check]

The script imports the reference's own `models/{resnet,mobilenetv2,vgg,ShuffleNetv2}.py` from the clone given as
the argument (nothing of them is copied into kdsweep) and records, per model of kdsweep's zoo, what
`tests/test_models.py` compares kdsweep against:
- `params`: the number of parameters; `state_dict`: every key with its shape, in order;
- `init_seed0_sum_abssum`: sum and sum of |x| over the state_dict of a model built after `torch.manual_seed(0)`
  (equal only if modules are created and initialised in the same order), 12 significant digits;
- `is_feat_shapes` and `logits`: `model(x, is_feat=True)` of a model filled by `model_fill.filled_state_dict`
  (values depend only on each key, so kdsweep's model gets the same weights) in eval mode on `golden_input()`,
  logits to 7 significant digits.
With `--check` it compares against the stored file byte for byte instead of writing it (exit 1 on a difference).
The logits depend on torch's CPU kernels; `generated_with` records the torch that made the file.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for model_fill
from model_fill import GOLDEN_INPUT_SEED, GOLDEN_INPUT_SHAPE, filled_state_dict, golden_input  # noqa: E402

from kdsweep.models import list_models  # noqa: E402

GOLDEN = Path(__file__).with_name("reference_models.json")
REFERENCE_FILES = ("resnet", "mobilenetv2", "vgg", "ShuffleNetv2")
# kdsweep's zoo name -> the reference's constructor, where they differ (the reference's `model_dict` keys).
REFERENCE_NAMES = {"MobileNetV2": "mobile_half", "MobileNetV2_1_0": "mobile_half_double",
                   "vgg8": "vgg8_bn", "vgg13": "vgg13_bn"}
NUM_CLASSES = 100  # CIFAR-100


def _significant(x: float, digits: int) -> float:
    return float(f"{x:.{digits}g}")


def reference_constructors(clone: Path) -> dict:
    """{function name: constructor} from the reference's model files, each loaded as a standalone module."""
    found = {}
    for stem in REFERENCE_FILES:
        spec = importlib.util.spec_from_file_location(f"simkd_reference_{stem}", clone / "models" / f"{stem}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        found.update({name: getattr(module, name) for name in dir(module) if callable(getattr(module, name))})
    return found


def describe(constructor) -> dict:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        init = constructor(num_classes=NUM_CLASSES).state_dict()
    model = constructor(num_classes=NUM_CLASSES)
    model.load_state_dict(filled_state_dict(model), strict=True)
    with torch.no_grad():
        feats, logits = model.eval()(golden_input(), is_feat=True)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "state_dict": [[k, list(v.shape)] for k, v in model.state_dict().items()],
        "is_feat_shapes": [list(f.shape) for f in feats],
        "init_seed0_sum_abssum": [_significant(sum(v.double().sum().item() for v in init.values()), 12),
                                  _significant(sum(v.double().abs().sum().item() for v in init.values()), 12)],
        "logits": [[_significant(v, 7) for v in row] for row in logits.tolist()],
    }


def golden_json(clone: Path) -> str:
    commit = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    constructors = reference_constructors(clone)
    x = golden_input()
    models = {}
    for name in sorted(list_models()):
        reference_name = REFERENCE_NAMES.get(name, name)
        with contextlib.redirect_stdout(sys.stderr):  # the reference's ShuffleNetV2 prints its block configs
            models[name] = {"reference_name": reference_name, **describe(constructors[reference_name])}
    doc = {
        "made_by": "python tests/golden/make_reference_models.py <clone of DefangChen/SimKD>",
        "source": f"DefangChen/SimKD@{commit} models/{{{','.join(REFERENCE_FILES)}}}.py",
        "generated_with": f"torch {torch.__version__}",
        "input": {"seed": GOLDEN_INPUT_SEED, "shape": list(GOLDEN_INPUT_SHAPE),
                  "sum": _significant(x.double().sum().item(), 12),
                  "first": [_significant(v, 7) for v in x.flatten()[:4].tolist()]},
        "models": models,
    }
    return json.dumps(doc, separators=(",", ":")) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("clone", type=Path, help="a git clone of DefangChen/SimKD")
    parser.add_argument("--check", action="store_true", help="compare with the stored file instead of writing it")
    args = parser.parse_args()
    text = golden_json(args.clone)
    if args.check:
        same = GOLDEN.read_text() == text
        print(f"{GOLDEN}: {'identical' if same else 'DIFFERS'}")
        return 0 if same else 1
    GOLDEN.write_text(text)
    print(f"wrote {GOLDEN}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
