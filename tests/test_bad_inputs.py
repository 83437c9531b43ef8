"""Bad input always gets a clear answer: exit code 2, one paragraph naming the file, the key and what is expected,
no traceback, and no Ray started. The corpus lives in tests/bad_inputs/; checkpoints are generated here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from helpers import RunsCode, save_teacher

CORPUS = Path(__file__).parent / "bad_inputs"
# The corpus's "GPU asked for where there is none" must hold on a GPU machine too, and nothing may join a cluster.
NO_GPU_NO_CLUSTER = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "CUDA_VISIBLE_DEVICES": ""}

# file -> substrings the message must contain (besides the file name, checked for every case)
EXPECTED = {
    "malformed.yaml": ["is not valid YAML at line 4, column 1", "expected ',' or ']'"],
    "empty.yaml": ["is empty", "Expected a YAML mapping with `experiment`"],
    "comments_only.yaml": ["is empty"],
    "wrong_types.yaml": ["student: Input should be a mapping; got ['resnet8']",
                         "recipe.epochs: expected an integer, got 'ten'",
                         "recipe.batch_size: expected an integer, got 32.5"],
    "unknown_keys.yaml": ["recipe.epoch: unknown key 'epoch' (did you mean 'epochs'?); recipe has: epochs",
                          "varaints: unknown key (did you mean 'variants'?)",
                          "(3 problems)"],  # no axis problem while the variants, whose knobs axes are, are invalid
    "unknown_names.yaml": ["student.arch: unknown model 'resnet32x8' (did you mean 'resnet32x4'?); known: MobileNetV2",
                           "variants.multi.method.taps: expected one of last, multi, all_blocks "
                           "(did you mean 'multi'?), got 'mutli'",
                           "axes.loss[1]: expected one of l2, kl, kl_raw (did you mean 'kl'?), got 'kld'",
                           # a cross-section problem, reported beside the schema's
                           "baseline.variant: unknown variant 'simdk' (did you mean 'simkd'?); known: multi, simkd",
                           "is invalid (4 problems)"],
    "nonpositive_lr.yaml": ["axes.lr[0]: Input should be greater than 0; got -0.01",
                            "axes.lr[1]: Input should be greater than 0; got 0"],
    "numbers_not_finite.yaml": ["teacher.train.lr: expected a finite number, got inf",
                                "recipe.weight_decay: expected a finite number, got nan",
                                "variants.simkd.method.temperature: expected a finite number, got -inf",
                                "axes.lr[0]: Input should be a finite number; got inf",
                                "axes.lr[1]: expected a value within float32's range (at most 3.4e+38 in size), got 1e+300"],
    "sizes_out_of_range.yaml": ["group.max_students: Input should be less than or equal to 1024; got 100000000",
                                "execution.threads: Input should be less than or equal to 1024; got 5000",
                                "dataset.train_size: expected a value <= 1e+06, got 1000000000000000",
                                "dataset.seed: expected a value >= 0, got -1",
                                "recipe.epochs: expected a value <= 100000, got 1000000000000",
                                "recipe.batch_size: expected a value <= 65536, got 1000000000000"],
    "lr_string.yaml": ["axes.lr[0]: Input should be a valid number; got '0.01'"],
    "empty_axes.yaml": ["axes.loss: List should have at least 1 item", "axes.seed: List should have at least 1 item"],
    "duplicate_variants.yaml": ["duplicate key 'simkd' (first at line 8)"],
    "rule_with_unknown_key.yaml": ["exclude[0].taps_unused: unknown rule key 'taps_unused'; known: loss, lr, seed, variant"],
    "rules_remove_all_cells.yaml": ["include/exclude: these rules remove every cell: nothing would run"],
    "baseline_variant_missing.yaml": ["baseline.variant: unknown variant 'labels'; known: multi, simkd"],
    "seeds_not_integers.yaml": ["axes.seed[0]: Input should be a valid integer; got 0.5",
                                "axes.seed[1]: Input should be a valid integer; got 'one'",
                                "axes.seed[2]: Input should be a valid integer; got True"],
    "milestones_past_epochs.yaml": ["recipe.milestones: [150, 180, 210] not below recipe.epochs (2), so they would "
                                    "never take effect; omit `milestones` to scale"],
    "seed_out_of_range.yaml": ["axes.seed[1]: Input should be less than or equal to 4294967295; "
                               "got 18446744073709551616", "axes.seed[2]: Input should be greater than or equal to 0"],
    # Hostile documents: refused while composing, before any value is built or printed.
    "alias_bomb.yaml": ["is refused at line 16, column 5: more than 20,000 values once its aliases are expanded"],
    "alias_loop.yaml": ["is refused at line 11, column 7: an alias refers to the value that contains it"],
    "deep_nesting.yaml": ["is refused at line 12, column 45: nested deeper than 32 levels of lists and mappings"],
    "unsupported_scheme.yaml": ["teacher.checkpoint: unsupported scheme 'http://'; use a local path (one every node "
                                "sees, on a cluster) or a URI starting with s3://, gs://, gcs://, file://"],
    "python_tag.yaml": ["could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'"],
    # Valid files that `kdsweep run` must still refuse before anything starts:
    "gpu_without_gpu.yaml": ["resources.gpu is 1 but this machine has no usable CUDA GPU", "--set resources.gpu=0"],
    "dataset_missing.yaml": ["dataset.root: CIFAR-100 not found: the directory /nonexistent/kdsweep-data does not exist",
                             "/nonexistent/kdsweep-data/cifar-100-python/train, test and meta", "download: true"],
}

# Runs every case in one interpreter: exit code, stderr, how far the process's peak memory grew in it (MiB; torch
# and the space machinery are imported first), and whether Ray was ever imported.
DRIVER = r"""
import contextlib, io, json, resource, sys
from kdsweep.cli import main
import kdsweep.space, kdsweep.sweep.driver, kdsweep.sweep.preflight, kdsweep.engine.teacher, torch
def peak_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux gives KiB
out = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    before = peak_mib()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    out.append({"argv": argv, "code": code, "stderr": err.getvalue(), "grew_mib": peak_mib() - before})
print(json.dumps({"cases": out, "ray_imported": "ray" in sys.modules}))
"""
# A hostile file may make kdsweep read and refuse it, not hold it: before the YAML limits, an alias bomb grew to 4 GB.
MAX_GROWTH_MIB = 100


def run_cases(cases: list[list[str]], cwd: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", DRIVER, json.dumps(cases)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, env=NO_GPU_NO_CLUSTER)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    grew = {" ".join(c["argv"][:2]): round(c["grew_mib"]) for c in result["cases"] if c["grew_mib"] > MAX_GROWTH_MIB}
    assert not grew, f"refusing these grew the process by more than {MAX_GROWTH_MIB} MiB: {grew}"
    return result


def test_the_bad_input_corpus(tmp_path):
    files = sorted(p.name for p in CORPUS.glob("*.yaml"))
    assert set(files) == set(EXPECTED), "every corpus file has expectations, and every expectation a file"
    cases = [["run", str(CORPUS / name), "--set", f"storage={tmp_path}"] for name in files]
    cases += [["validate", str(CORPUS / name)] for name in files if name not in ("gpu_without_gpu.yaml", "dataset_missing.yaml")]
    result = run_cases(cases, tmp_path)
    assert not result["ray_imported"], "a bad input must be answered before Ray is started (or even imported)"
    for case in result["cases"]:
        name = Path(case["argv"][1]).name
        message = case["stderr"]
        assert case["code"] == 2, (case["argv"], message)
        assert message.startswith("kdsweep: error: ") and "Traceback" not in message, message
        assert str(CORPUS / name) in message
        for expected in EXPECTED[name]:
            assert expected in message, f"{name}: {expected!r} not in {message!r}"
    assert not Path("/tmp/kdsweep-yaml-pwned").exists()
    assert not list(tmp_path.iterdir()), "nothing is written for a refused input"


def test_bad_teacher_checkpoints_are_refused_before_ray_starts(tmp_path):
    good = save_teacher(tmp_path / "resnet8.pth")
    wrong_arch = save_teacher(tmp_path / "resnet20.pth", arch="resnet20")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00\x01 definitely not a checkpoint")
    evil = tmp_path / "evil.pth"
    torch.save({"model": RunsCode(tmp_path / "checkpoint-pwned")}, evil)
    fifo = tmp_path / "fifo.pth"
    os.mkfifo(fifo)  # opened for reading, it would block the driver until someone writes
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(Path(good).read_bytes()[:-5000])
    expected = {
        str(tmp_path / "missing.pth"): "teacher checkpoint {} does not exist",
        wrong_arch: "teacher.checkpoint {} does not match teacher.arch 'resnet8' with 10 classes: ",
        str(junk): "teacher checkpoint {} is not a PyTorch checkpoint",
        # torch's own sentence only, not its advice that follows (to load with weights_only=False)
        str(truncated): "teacher checkpoint {} is not a PyTorch checkpoint (PytorchStreamReader failed reading zip "
                        "archive: failed finding central directory). Expected a file written by torch.save",
        str(evil): "teacher checkpoint {} was refused: it is not a plain weights file",
        "/dev/zero": "teacher checkpoint {} is a device, not a regular file",  # read, it would never end
        str(fifo): "teacher checkpoint {} is a FIFO, not a regular file",
        str(tmp_path): "teacher checkpoint {} is a directory, not a regular file",
    }
    spaces = []
    for i, checkpoint in enumerate(expected):
        space = (CORPUS / "gpu_without_gpu.yaml").read_text().replace("gpu: 1", "gpu: 0").replace(
            "train: {epochs: 1}", f"checkpoint: {checkpoint}")
        path = tmp_path / f"space{i}.yaml"
        path.write_text(space + f"storage: {tmp_path / 'results'}\n")
        spaces.append(path)
    result = run_cases([["run", str(p)] for p in spaces], tmp_path)
    assert not result["ray_imported"]
    for case, (checkpoint, message) in zip(result["cases"], expected.items()):
        assert case["code"] == 2 and "Traceback" not in case["stderr"]
        assert message.format(checkpoint) in case["stderr"], case["stderr"]
    mismatch = result["cases"][1]["stderr"]
    assert "unexpected keys: layer1.1.conv1.weight, layer1.1.bn1.weight" in mismatch  # the first mismatched keys
    assert not (tmp_path / "checkpoint-pwned").exists()
    # The same space with a good checkpoint passes every check (the refusals above are the checkpoints' doing).
    from kdsweep.space import load_space
    from kdsweep.sweep.preflight import preflight

    good_space = tmp_path / "good.yaml"
    good_space.write_text(spaces[0].read_text().replace(str(tmp_path / "missing.pth"), good))
    preflight(load_space(good_space), address=None)


def test_a_partial_or_truncated_dataset_is_refused_before_ray_starts(tmp_path):
    """CIFAR-100 folders with a file missing, or with a truncated training file: one message naming what is wrong
    and the layout expected, before Ray starts."""
    from cifar_files import write_cifar100_archive

    images = torch.zeros(20, 3, 32, 32, dtype=torch.uint8)
    labels = torch.arange(20) % 100
    partial, truncated = tmp_path / "partial", tmp_path / "truncated"
    for root in (partial, truncated):
        write_cifar100_archive(root, images[:10], labels[:10], images[10:], labels[10:])
    (partial / "cifar-100-python" / "test").unlink()
    train = truncated / "cifar-100-python" / "train"
    train.write_bytes(train.read_bytes()[:1000])
    space = CORPUS / "dataset_missing.yaml"
    result = run_cases([["run", str(space), "--set", f"dataset.root={root}", "--set", f"storage={tmp_path / 'out'}"]
                        for root in (partial, truncated)], tmp_path)
    assert not result["ray_imported"]
    (missing, cut) = (case["stderr"] for case in result["cases"])
    assert all(case["code"] == 2 for case in result["cases"]) and "Traceback" not in missing + cut
    assert f"dataset.root: CIFAR-100 not found: missing {partial}/cifar-100-python/test." in missing
    assert "cifar-100-python/train, test and meta" in missing  # the layout expected
    assert f"{space}: dataset.root: " in cut and str(train) in cut, cut
    assert not (tmp_path / "out").exists()


def test_huge_documents_and_values_are_refused_with_a_short_message(tmp_path):
    """What a file in the corpus would be too big for: a 200,000-element list, a 2 MB file, and 500 levels of
    nesting in a --set value. Each is exit 2 with a message of a few lines that quotes at most an excerpt."""
    space = CORPUS.parent.parent / "search_spaces" / "smoke.yaml"
    huge_list = tmp_path / "huge_list.yaml"
    huge_list.write_text(space.read_text() + "description: [" + ", ".join(["x"] * 200_000) + "]\n")
    too_long = tmp_path / "too_long.yaml"
    too_long.write_text(space.read_text() + "description: " + "x" * 2_000_000 + "\n")
    deep = "[" * 500 + "]" * 500
    cases = [["validate", str(huge_list)], ["validate", str(too_long)],
             ["validate", str(space), "--set", f"axes.seed={deep}"],
             ["train", "--student", "resnet8", "--method", f"kind={deep}"]]
    result = run_cases(cases, tmp_path)
    expected = [f"search space {huge_list} is refused at line ", "more than 20,000 values. kdsweep reads at most",
                f"search space {too_long} is refused: 2,001,",
                "--set axes.seed: the value '[[[[", "... (1,000 characters) is not valid YAML: nested deeper than 32",
                "--method kind: the value '[[[[", "... (1,000 characters) is not valid YAML: nested deeper than 32"]
    messages = [case["stderr"] for case in result["cases"]]
    for case, message in zip(cases, messages):
        assert message.startswith("kdsweep: error: ") and "Traceback" not in message, (case, message)
        assert len(message) < 800, (case[:2], len(message))
    assert [case["code"] for case in result["cases"]] == [2] * 4
    text = "\n".join(messages)
    for fragment in expected:
        assert fragment in text, (fragment, messages)


def test_storage_on_an_unsupported_scheme_is_refused_by_every_command(tmp_path):
    """validate, run, status and report name the scheme (pyarrow would fail with a traceback inside the trials)."""
    space = str(CORPUS.parent.parent / "search_spaces" / "smoke.yaml")
    cases = [["validate", space, "--set", "storage=hdfs://namenode/kd"], ["run", space, "--set", "storage=foo://x"],
             ["status", "foo://bucket/exp"], ["report", "http://example.invalid/exp"]]
    result = run_cases(cases, tmp_path)
    assert not result["ray_imported"] and [case["code"] for case in result["cases"]] == [2] * 4
    messages = [case["stderr"] for case in result["cases"]]
    assert "  - storage: unsupported scheme 'hdfs://'; use a local path" in messages[0]
    assert "  - storage: unsupported scheme 'foo://'" in messages[1]
    assert messages[2].startswith("kdsweep: error: storage foo://bucket/exp: unsupported scheme 'foo://'")
    assert messages[3].startswith("kdsweep: error: storage http://example.invalid/exp: unsupported scheme 'http://'")
    assert not any("Traceback" in m for m in messages)
