"""`kdsweep bench`: training throughput of the reference-style loop and of kdsweep's paths, side by side.

All paths run in one process on one device, on synthetic CIFAR-shaped data (offline). They take turns: after a
warm-up, each round times `steps` steps of every path in turn, and a path's time is its median round, so that a
load that drifts during the run (a shared machine) hits every path alike rather than the last ones:

  reference  the reference-style loop (bench_reference.py): PIL transforms in a DataLoader, fp32, eager, the
             teacher run once per student per step, three .item() per step
  single     one kdsweep student: on-device data and augmentation, shared-teacher source, the device's fast paths
  group      K kdsweep students sharing one teacher forward per batch
  cache      the same K students on the exact teacher cache (built for `cache_images` images; build timed apart)
  fused      the K cached students fused with vmap (`engine/fused.py`)

For each it reports student-steps/s, student images/s (x batch), student-epochs/s (images/s / `epoch_images`), the
ratio to the reference loop, the FLOP rate and its fraction of the device's peak (the FLOP limit), and the time the
full grid (120 students x 240 epochs) would take at that rate. FLOPs per student step are counted from the models
(torch's FlopCounterMode on forwards only, which counts grouped and depthwise forwards correctly; a training step
is taken as 3 forwards): teacher forward / students sharing it + 3 x student forward (+ projector).
"""

from __future__ import annotations

import copy
import dataclasses
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from kdsweep.data import CIFAR100_GEOMETRY, CIFAR100_MEAN, CIFAR100_STD, ImageData
from kdsweep.data.synthetic import synthetic_split
from kdsweep.engine.device import describe_device, resolve_device
from kdsweep.engine.fastpath import FastPath, resolve_fast_path
from kdsweep.engine.fused import student_steppers
from kdsweep.engine.group import train_batch
from kdsweep.engine.recipe import Recipe
from kdsweep.bench_reference import ReferenceStudent, reference_loader
from kdsweep.engine.specs import RunSpec
from kdsweep.engine.student import StudentTrainer, student_losses
from kdsweep.engine.teacher import freeze
from kdsweep.engine.teacher_runner import as_float
from kdsweep.engine.teacher_source import TeacherSource, open_teacher_source
from kdsweep.methods import MethodSpec, StepContext, TeacherNeeds, compute_teacher_targets
from kdsweep.methods.simkd import SimKDConfig
from kdsweep.models import create_model
from kdsweep.storage import Store

PATHS = ("reference", "single", "group", "cache", "fused")
GRID_STUDENTS, GRID_EPOCHS = 120, 240  # the full seed grid: 4 variants x 2 losses x 5 lrs x 3 seeds, 240 epochs
BF16_PEAK = {"H100": 989e12, "H200": 989e12}  # dense bf16 tensor-core FLOP/s by card name (docs/cost-model.md)

NUM_VIEWS = CIFAR100_GEOMETRY.num_views  # the bench measures CIFAR-sized inputs (32 px, padding 4): 162


@dataclass
class BenchOptions:
    device: str = "auto"
    teacher: str = "resnet32x4"
    student: str = "MobileNetV2_1_0"
    k: int = 8  # students in the group paths
    steps: int = 5  # timed steps per path and round (each path first runs `warmup` untimed steps)
    warmup: int = 1
    rounds: int = 3  # the paths take turns `rounds` times; each path's time is its median round (load drifts)
    batch_size: int = 64
    num_classes: int = 100
    epoch_images: int = 50000  # images per student-epoch (CIFAR-100's training set)
    cache_images: int = 16  # images whose 162 views the bench's teacher cache holds
    reference_workers: int | None = None  # DataLoader workers; None: 0 on the CPU (they would steal its cores), else 8
    threads: int | None = None
    paths: tuple[str, ...] = ("reference", "single", "group", "cache")
    precision: str = "auto"
    channels_last: str = "auto"
    compile: str = "auto"


@dataclass
class PathResult:
    path: str
    students: int
    student_steps: int  # per round
    flops_per_student_step: float
    note: str = ""
    round_seconds: list[float] = field(default_factory=list)  # wall time of each round's timed steps

    @property
    def steps_per_s(self) -> float:
        """Student-steps per second in the median round."""
        return self.student_steps / statistics.median(self.round_seconds)


@dataclass
class _Prepared:
    result: PathResult
    step: Callable[[int], None]  # runs global step i of this path


@dataclass
class BenchResult:
    options: BenchOptions
    device: str
    fast: dict
    peak_flops: float
    peak_source: str
    results: list[PathResult] = field(default_factory=list)
    cache_build_s: float | None = None
    cache_views: int = 0
    load_average: tuple[float, float, float] | None = None
    torch_version: str = torch.__version__
    date: str = field(default_factory=lambda: time.strftime("%Y-%m-%d"))

    def as_record(self) -> dict:
        record = asdict(self)
        record["results"] = [{**asdict(r), "steps_per_s": r.steps_per_s} for r in self.results]
        return record


def run_bench(options: BenchOptions, log=print) -> BenchResult:
    if options.threads:
        torch.set_num_threads(options.threads)
    unknown = set(options.paths) - set(PATHS)
    if unknown:
        raise ValueError(f"unknown bench path(s) {sorted(unknown)}; known: {', '.join(PATHS)}")
    device = resolve_device(options.device)
    fast = resolve_fast_path(device, precision=options.precision, channels_last=options.channels_last,
                             compile=options.compile)  # fusion: only on the `fused` path
    torch.manual_seed(0)
    teacher = freeze(create_model(options.teacher, num_classes=options.num_classes))
    images_needed = max(options.batch_size * _total_steps(options), options.cache_images)
    images, labels = synthetic_split(0, "train", images_needed, options.num_classes)
    data = ImageData(images, labels, images[:0], labels[:0], options.num_classes, CIFAR100_GEOMETRY)
    peak, peak_source = peak_flops(device, fast.bf16, fast.layout(copy.deepcopy(teacher).to(device)),
                                   options.batch_size)
    result = BenchResult(options, describe_device(device), fast.as_record(), peak, peak_source,
                         load_average=os.getloadavg())
    log(f"kdsweep bench on {result.device}; fast paths {fast.as_record()}; peak {peak / 1e12:.3g} TFLOP/s "
        f"({peak_source})")
    with tempfile.TemporaryDirectory(prefix="kdsweep-bench-") as scratch:
        bench = _Bench(options, device, fast, teacher, data, Store(scratch), log)
        paths = [p for p in (bench.prepare(name) for name in options.paths) if p is not None]
        for path in paths:
            for i in range(options.warmup):
                path.step(i)
        for r in range(options.rounds):
            for path in paths:
                start = options.warmup + r * options.steps
                path.result.round_seconds.append(bench.timed(path.step, range(start, start + options.steps)))
        for path in paths:
            result.results.append(path.result)
            log(f"  {path.result.path:<9} {path.result.steps_per_s:8.3f} student-steps/s  {path.result.note}")
        result.cache_build_s, result.cache_views = bench.cache_build_s, bench.cache_views
    return result


def _total_steps(o: BenchOptions) -> int:
    return o.warmup + o.rounds * o.steps


class _Bench:
    def __init__(self, options: BenchOptions, device: torch.device, fast: FastPath, teacher, data: ImageData,
                 store: Store, log):
        self.o, self.device, self.fast, self.store, self.log = options, device, fast, store, log
        self.reference_teacher = teacher.to(device)  # fp32, default layout
        self.teacher = fast.layout(copy.deepcopy(self.reference_teacher))
        self.data = data
        self.device_data = data.to(device)
        self.method = MethodSpec("simkd", SimKDConfig())  # SimKD: last-stage tap, MSE
        self.cache_source: TeacherSource | None = None
        self.cache_build_s: float | None = None
        self.cache_views = 0

    def prepare(self, path: str) -> _Prepared | None:
        """The path's students and step function, ready to be timed (None when the path cannot run here)."""
        if path == "reference":
            return self._reference()
        k = 1 if path == "single" else self.o.k
        trainers = self._students(k)
        needs = trainers[0].unit.method.teacher_needs()
        if path in ("cache", "fused"):
            source = self._cache(needs)
            pool = self.o.cache_images
        else:
            source = open_teacher_source("off", self.teacher, needs, self.device_data, self.o.batch_size, 0,
                                         self.fast)
            pool = self.data.train_images.shape[0]
        steppers = student_steppers(trainers, dataclasses.replace(self.fast, fuse_students=path == "fused"))
        draws = self._draws(pool)

        def step(i: int) -> None:
            indices, views = draws[i]
            train_batch(self.device_data, indices, views, source, steppers, self.fast, StepContext(0, 1, i, len(draws)))

        shared_by = {"single": 1, "group": k}.get(path)  # the cache paths run no teacher forward
        flops = self._student_flops(trainers[0]) + (self._teacher_flops(needs) / shared_by if shared_by else 0.0)
        note = {"single": "1 student, shared-teacher source", "group": f"K={k}, one teacher forward per batch",
                "cache": f"K={k}, teacher cache", "fused": f"K={k}, teacher cache, vmap-fused"}[path]
        return _Prepared(PathResult(path, k, k * self.o.steps, flops * self.o.batch_size, note), step)

    # The paths ----------------------------------------------------------------------------------------------------
    def _reference(self) -> _Prepared | None:
        try:
            import torchvision  # noqa: F401
        except ImportError:
            self.log("  reference skipped: torchvision is not installed")
            return None
        o = self.o
        workers = o.reference_workers if o.reference_workers is not None else (0 if self.device.type == "cpu" else 8)
        torch.manual_seed(0)
        student = ReferenceStudent(create_model(o.student, num_classes=o.num_classes),
                                   self.reference_teacher, self.device)
        batches = iter(reference_loader(self.data.train_images, self.data.train_labels, CIFAR100_MEAN,
                                        CIFAR100_STD, o.batch_size, workers))
        labels = torch.zeros(2, dtype=torch.long, device=self.device)
        teacher = _count_flops(lambda x: self.reference_teacher(x, is_feat=True), self.device)
        whole = _count_flops(lambda x: student.losses(x, labels), self.device)  # student + projector + teacher
        result = PathResult("reference", 1, o.steps, (teacher + 3 * (whole - teacher)) * o.batch_size,
                            f"DataLoader ({workers} workers), fp32, eager, teacher per student, 3 .item()/step")
        return _Prepared(result, lambda i: student.step(*next(batches)))

    def _students(self, k: int) -> list[StudentTrainer]:
        recipe = Recipe(epochs=1, batch_size=self.o.batch_size)
        trainers = []
        for i in range(k):
            run = RunSpec(f"bench-{i}", self.o.student, self.method, 0.05 * (0.5 ** i), i, recipe)
            t = StudentTrainer(run, "bench", self.teacher, self.o.num_classes, self.device, self.store, self.fast)
            t.begin_epoch(0)
            trainers.append(t)
        return trainers

    def _cache(self, needs: TeacherNeeds) -> TeacherSource:
        """The teacher cache over the first `cache_images` images, built once and timed."""
        if self.cache_source is None:
            keep = self.o.cache_images
            subset = dataclasses.replace(self.device_data, train_images=self.device_data.train_images[:keep],
                                         train_labels=self.device_data.train_labels[:keep])
            self._sync()
            started = time.perf_counter()
            self.cache_source = open_teacher_source("on", self.teacher, needs, subset, self.o.batch_size,
                                                    GRID_EPOCHS, self.fast)
            self._sync()
            self.cache_build_s = time.perf_counter() - started
            self.cache_views = self.o.cache_images * NUM_VIEWS
            self.log(f"  cache     built: {self.cache_views} views in {self.cache_build_s:.1f}s "
                     f"({self.cache_views / self.cache_build_s:.1f} views/s)")
        return self.cache_source

    # Helpers ------------------------------------------------------------------------------------------------------
    def _draws(self, pool: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(indices, views) per step, drawn up front on the CPU and moved to the device before timing."""
        g = torch.Generator().manual_seed(0)
        shape = (_total_steps(self.o), self.o.batch_size)
        indices = torch.randint(0, pool, shape, generator=g).to(self.device)
        views = torch.randint(0, NUM_VIEWS, shape, generator=g).to(self.device)
        return list(zip(indices, views))

    def timed(self, step: Callable[[int], None], steps: range) -> float:
        """Seconds for steps `steps` of a path, the device drained before and after."""
        self._sync()
        started = time.perf_counter()
        for i in steps:
            step(i)
        self._sync()
        return time.perf_counter() - started

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _teacher_flops(self, needs: TeacherNeeds) -> float:
        return _count_flops(lambda x: compute_teacher_targets(self.reference_teacher, x, needs), self.device)

    def _student_flops(self, trainer: StudentTrainer) -> float:
        """3 x the forward of the student's loss (backbone + projector), per image."""
        unit = copy.deepcopy(trainer.unit)  # a copy: the counting forward must not move BN statistics
        x = torch.zeros(2, 3, 32, 32, device=self.device)
        targets = as_float(compute_teacher_targets(self.reference_teacher, x, unit.method.teacher_needs()))
        labels = torch.zeros(2, dtype=torch.long, device=self.device)
        return 3 * _count_flops(lambda x: student_losses(unit, x, labels, targets, StepContext(0, 1)), self.device)


def peak_flops(device: torch.device, bf16: bool, teacher=None, batch_size: int = 64) -> tuple[float, str]:
    """The FLOP limit: the card's dense bf16 peak when known; else the best rate measured on the device, of a large
    matmul and of the teacher's own batch forward. The second matters on CPUs, where oneDNN's convolutions ran at
    almost twice a 2048x2048 matmul's rate counted as direct convolutions (BENCHMARKS.md): against a matmul
    alone, a conv net read over 100% of "peak"."""
    if device.type == "cuda" and bf16:
        name = torch.cuda.get_device_name(device)
        for card, peak in BF16_PEAK.items():
            if card in name:
                return peak, f"{card} dense bf16 spec"
    n = 4096 if device.type == "cuda" else 2048
    dtype = torch.bfloat16 if bf16 else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    rates = {f"{n}x{n} {str(dtype).removeprefix('torch.')} matmul": 2 * n ** 3 / _best_seconds(device, lambda: a @ a)}
    if teacher is not None:
        x = torch.randn(batch_size, 3, 32, 32, device=device)
        with torch.no_grad(), FastPath(bf16=bf16).autocast(device):
            flops = _count_flops(lambda images: teacher(images), device)
            rates[f"the teacher's batch-{batch_size} forward"] = flops * batch_size / _best_seconds(
                device, lambda: teacher(x))
    source, rate = max(rates.items(), key=lambda item: item[1])
    others = "".join(f"; {name}: {r / 1e12:.3g} TFLOP/s" for name, r in rates.items() if name != source)
    return rate, f"measured rate of {source}{others}"


def _best_seconds(device: torch.device, fn, repeats: int = 3) -> float:
    """The fastest of `repeats` timed calls of `fn`, after one untimed call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - started)
    return best


def _count_flops(forward, device: torch.device) -> float:
    """FLOPs per image of `forward` (matmuls and convolutions), counted on a batch of 2 without autograd."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(2, 3, 32, 32, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        forward(x)
    return counter.get_total_flops() / 2


def format_table(result: BenchResult) -> str:
    """The markdown table of a bench run, with the ratios to the reference loop and the projected grid time."""
    o = result.options
    reference = next((r for r in result.results if r.path == "reference"), None)
    lines = [
        "| path | students | student-steps/s | images/s | student-epochs/s | vs reference | TFLOP/s | of peak | "
        "full grid (h) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result.results:
        images_per_s = r.steps_per_s * o.batch_size
        epochs_per_s = images_per_s / o.epoch_images
        ratio = f"{r.steps_per_s / reference.steps_per_s:.2f}x" if reference else "-"
        flop_rate = r.steps_per_s * r.flops_per_student_step
        lines.append(
            f"| {r.path} | {r.students} | {r.steps_per_s:.3f} | {images_per_s:.1f} | {epochs_per_s:.2e} | {ratio} | "
            f"{flop_rate / 1e12:.3g} | {flop_rate / result.peak_flops:.1%} | {grid_hours(result, r):.3g} |"
        )
    notes = [f"- `{r.path}`: {r.note}" for r in result.results]
    if result.cache_build_s:
        notes.append(f"- teacher cache: {result.cache_views} views ({o.cache_images} images x {NUM_VIEWS}) built in "
                     f"{result.cache_build_s:.1f} s = {result.cache_views / result.cache_build_s:.1f} views/s; "
                     f"the full grid's time includes one cache build ({o.epoch_images} x {NUM_VIEWS} views) per "
                     f"group of {o.k}")
    notes.append(f"- {o.steps} timed steps per path and round, median of {o.rounds} rounds (after {o.warmup} "
                 f"warm-up steps); batch {o.batch_size}")
    notes.append(f"- full grid: {GRID_STUDENTS} students x {GRID_EPOCHS} epochs x {o.epoch_images} images at the "
                 f"path's rate; peak {result.peak_flops / 1e12:.3g} TFLOP/s ({result.peak_source})")
    return "\n".join(lines + [""] + notes)


def grid_hours(result: BenchResult, r: PathResult) -> float:
    o = result.options
    epochs_per_s = r.steps_per_s * o.batch_size / o.epoch_images
    seconds = GRID_STUDENTS * GRID_EPOCHS / epochs_per_s
    if r.path in ("cache", "fused") and result.cache_build_s:
        groups = -(-GRID_STUDENTS // o.k)
        seconds += groups * o.epoch_images * NUM_VIEWS / (result.cache_views / result.cache_build_s)
    return seconds / 3600
