"""The shipped cluster manifests (docker/), parsed and checked against the code they run: the Ray and kdsweep
versions in pyproject.toml, a command line that kdsweep's own parser accepts, a search space that loads, and GPU
workers big enough for one trial. No container engine is needed: nothing here builds or runs an image."""

import json
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import ray
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from kdsweep.cli import build_parser
from kdsweep.space import load_space

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirement(name: str) -> Requirement:
    (req,) = [Requirement(r) for r in PROJECT["dependencies"] if Requirement(r).name == name]
    return req


def dockerfile_base() -> tuple[str, str]:
    """(ray version, python tag) of the Dockerfile's `FROM rayproject/ray:<version>-<python>-gpu|-cuXXX`."""
    (line,) = [line for line in (DOCKER / "Dockerfile").read_text().splitlines() if line.startswith("FROM ")]
    match = re.fullmatch(r"FROM rayproject/ray:(\d+\.\d+\.\d+)-(py3\d+)-(gpu|cu\d+)", line)
    assert match, f"the Dockerfile must start from a pinned rayproject/ray GPU image, got {line!r}"
    return match.group(1), match.group(2)


def image() -> str:
    """The image every manifest runs: <registry>/kdsweep:<kdsweep version>-ray<ray version>-gpu."""
    return f"ghcr.io/your-org/kdsweep:{PROJECT['version']}-ray{dockerfile_base()[0]}-gpu"


def full_grid_resources() -> tuple[float, float]:
    resources = load_space(ROOT / "search_spaces" / "full_grid.yaml").file.resources
    return resources.cpu, resources.gpu


def test_every_manifest_is_covered_here():
    assert sorted(p.name for p in DOCKER.iterdir()) == ["Dockerfile", "Dockerfile.dockerignore", "cluster.yaml",
                                                        "rayjob.yaml"]


def test_dockerfile_starts_from_the_pinned_ray_image_and_installs_torch_and_kdsweep():
    ray_version, python = dockerfile_base()
    assert ray_version in requirement("ray").specifier and ray_version == ray.__version__
    assert Version(f"{python[2]}.{python[3:]}") in SpecifierSet(PROJECT["requires-python"])
    text = (DOCKER / "Dockerfile").read_text()
    for name in ("torch", "torchvision"):
        pinned = re.search(rf"\b{name}==([\w.]+)", text).group(1)
        assert Version(pinned) in requirement(name).specifier, f"{name}=={pinned} is outside pyproject's range"
    assert 'pip install --no-cache-dir ".[cluster]"' in text and "COPY --chown=ray:users kdsweep ./kdsweep" in text
    assert "--shm-size" in text
    # CUDA groups compile by default (execution.compile: auto), and torch.compile needs a C compiler at run time.
    from kdsweep.space.schema import ExecutionSection

    assert ExecutionSection().compile == "auto"
    assert re.search(r"apt-get install -y --no-install-recommends gcc g\+\+", text)
    ignored = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    assert {".venv", "results", "data", ".git"} <= set(ignored)


def test_cluster_yaml_is_a_valid_launcher_config_with_an_autoscaling_gpu_worker():
    config = yaml.safe_load((DOCKER / "cluster.yaml").read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)  # what `ray up` checks first
    assert config["docker"]["image"] == image()
    assert any(option.startswith("--shm-size=") for option in config["docker"]["run_options"])

    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"].get("GPU", 0) == 0
    cpu, gpu = full_grid_resources()
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert any(t["resources"].get("GPU", 0) >= gpu and t["resources"].get("CPU", 0) >= cpu
               and t["min_workers"] == 0 < t["max_workers"] <= config["max_workers"] for t in workers)

    # Token authentication on every node, with the token of the machine that runs `ray up` and `kdsweep submit`.
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    # ... and trials at nice 0 (Ray starts workers at nice 15: docs/ray-notes.md, pitfall 9).
    assert sum("RAY_AUTH_MODE=token RAY_worker_niceness=0 ray start" in command for command in starts) == 2


def test_rayjob_runs_the_full_grid_with_kdsweep_on_a_gpu_worker_group():
    job = yaml.safe_load((DOCKER / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["rayVersion"] == dockerfile_base()[0] and cluster["authOptions"] == {"mode": "token"}

    # The entrypoint is a kdsweep command line that kdsweep's own parser accepts, on a space that loads.
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] in PROJECT["scripts"] and argv[1] == "run"
    args = build_parser().parse_args(argv[1:])
    runtime_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    workdir = re.search(r"^WORKDIR (\S+)", (DOCKER / "Dockerfile").read_text(), re.M).group(1)
    assert runtime_env["working_dir"] == workdir  # the image's copy of the repository, search_spaces/ included
    space = load_space(ROOT / args.space, [*args.overrides, f"storage={args.storage}"], base=ROOT)
    assert space.root == f"{args.storage}/{space.file.experiment}" and len(space.runs) == 120

    pods = [cluster["headGroupSpec"]["template"]["spec"]] + [g["template"]["spec"] for g in cluster["workerGroupSpecs"]]
    for pod in pods:
        (container,) = pod["containers"]
        assert container["image"] == image()
        assert {"name": "RAY_worker_niceness", "value": "0"} in container["env"]  # docs/ray-notes.md, pitfall 9
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
        shared = [path for path in mounts if args.storage.startswith(path + "/")]
        assert shared and "persistentVolumeClaim" in volumes[mounts[shared[0]]], "storage must be a shared volume"
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # trials run on GPU workers only

    cpu, gpu = full_grid_resources()
    (group,) = cluster["workerGroupSpecs"]
    (worker,) = group["template"]["spec"]["containers"]
    for side in ("limits", "requests"):
        assert int(worker["resources"][side]["nvidia.com/gpu"]) >= gpu
        assert int(worker["resources"][side]["cpu"]) >= cpu
    assert group["minReplicas"] == 0 < group["maxReplicas"] and cluster["enableInTreeAutoscaling"]
