"""The fast paths through their CPU fallbacks: fixed-chunk teacher forwards, the exact teacher cache and its sizing,
bf16 autocast, channels_last and torch.compile (traced with aot_eager: no C++/Triton toolchain needed)."""

from __future__ import annotations

import pytest
import torch

from kdsweep.data import CIFAR100_GEOMETRY, ImageData, augment
from kdsweep.data.synthetic import synthetic_split
from kdsweep.engine import fastpath
from kdsweep.engine import teacher_source as source_module
from kdsweep.engine.fastpath import FastPath, resolve_fast_path
from kdsweep.engine.memory import budget_bytes
from kdsweep.engine.student import StudentTrainer, StudentUnit, student_losses
from kdsweep.engine.teacher import freeze
from kdsweep.engine.teacher_cache import TeacherCache, cache_bytes
from kdsweep.engine.teacher_runner import TeacherRunner
from kdsweep.engine.teacher_source import open_teacher_source
from kdsweep.errors import UserError
from kdsweep.methods import StepContext, TargetKey, TeacherNeeds, build_method, compute_teacher_targets
from kdsweep.methods.taps import FeatureRef
from kdsweep.models import create_model
from kdsweep.storage import Store
from helpers import method_spec, run_spec

CONTEXT = StepContext(epoch=0, epochs=1)

CPU = torch.device("cpu")
# What multi-tap resnet8 students of a resnet8 teacher need (L2, and gated KL): two pooled stage maps and the logits.
NEEDS = TeacherNeeds(frozenset({TargetKey(FeatureRef("stage", 3), 8), TargetKey(FeatureRef("stage", 2), 16)}), True)
GATED_KL = {"taps": "multi", "loss": "kl", "gate": "teacher_correct"}

NUM_VIEWS = CIFAR100_GEOMETRY.num_views  # 162: 32 px with padding 4


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return freeze(create_model("resnet8", num_classes=10))


def tiny_data(n: int) -> ImageData:
    images, labels = synthetic_split(0, "train", n, 10)
    return ImageData(images, labels, images[:0], labels[:0], 10, CIFAR100_GEOMETRY)


def assert_targets_equal(a, b):
    assert a.features.keys() == b.features.keys()
    for key in a.features:
        assert a.features[key].dtype == b.features[key].dtype
        assert torch.equal(a.features[key], b.features[key]), key
    assert torch.equal(a.logits, b.logits)


def test_a_teacher_target_does_not_depend_on_its_batch_mates(teacher):
    """The construction behind cached == uncached on the CPU: at one chunk size, a sample's targets are the same
    whatever its position and companions, and a short batch is padded to that size."""
    runner = TeacherRunner(teacher, NEEDS, chunk=8, fast=FastPath())
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    others = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    mixed = torch.cat([others[:5], x[[6, 2, 0]]])  # x's samples 6, 2, 0 at positions 5, 6, 7 among strangers
    full, shuffled, short = runner(x), runner(mixed), runner(x[:3])
    for key in NEEDS.features:
        assert torch.equal(shuffled.features[key][5:], full.features[key][[6, 2, 0]])
        assert torch.equal(short.features[key], full.features[key][:3])
    assert torch.equal(shuffled.logits[5:], full.logits[[6, 2, 0]]) and torch.equal(short.logits, full.logits[:3])


def test_students_need_what_the_tests_cache(teacher):
    needs = student(teacher, taps="multi").method.teacher_needs() | student(teacher, **GATED_KL).method.teacher_needs()
    assert needs == NEEDS


def test_cached_targets_equal_the_teacher_run_on_the_fly(teacher):
    data = tiny_data(3)
    runner = TeacherRunner(teacher, NEEDS, chunk=8, fast=FastPath())
    cache = TeacherCache.build(runner, data.train_images, data.geometry)
    assert cache.nbytes == cache_bytes(NEEDS, teacher.feature_info, 10, 3, NUM_VIEWS, bf16=False)
    g = torch.Generator().manual_seed(0)
    for size in (8, 8, 3):  # full training batches and a short last one
        indices = torch.randint(0, 3, (size,), generator=g)
        views = torch.randint(0, NUM_VIEWS, (size,), generator=g)
        on_the_fly = source_module.OnTheFlyTeacher(runner).targets(
            indices, views, augment(data.train_images[indices], views, data.geometry))
        assert_targets_equal(cache.lookup(indices, views), on_the_fly)


def test_cache_size_of_the_study_matches_the_performance_notes():
    teacher = create_model("resnet32x4").feature_info
    last_tap = TeacherNeeds(frozenset({TargetKey(FeatureRef("stage", 3), 2)}))  # 256 x 2 x 2 per view
    assert cache_bytes(last_tap, teacher, 100, 50000, NUM_VIEWS, bf16=True) == 50000 * 162 * 1024 * 2  # 16.6 GB
    assert cache_bytes(last_tap, teacher, 100, 50000, NUM_VIEWS, bf16=False) == 50000 * 162 * 1024 * 4  # 33 GB
    gated = TeacherNeeds(last_tap.features, logits=True)
    assert cache_bytes(gated, teacher, 100, 1, NUM_VIEWS, bf16=False) == 162 * (1024 + 100) * 4


def test_teacher_cache_modes_choose_and_refuse(teacher, monkeypatch):
    data = tiny_data(1)
    fast = FastPath()
    need = cache_bytes(NEEDS, teacher.feature_info, 10, 1, NUM_VIEWS, bf16=False)

    def choose(mode, epochs_left=200, needs=NEEDS):
        return open_teacher_source(mode, teacher, needs, data, 54, epochs_left, fast).kind

    assert choose("off") == "shared"
    assert choose("auto") == "cache"
    assert choose("auto", epochs_left=NUM_VIEWS) == "shared"  # building would cost as much as it saves
    assert choose("on", epochs_left=1) == "cache"
    assert choose("on", needs=TeacherNeeds()) == "shared"  # nothing to cache
    monkeypatch.setattr(source_module, "available_bytes", lambda device: int(1.5 * need))
    assert choose("auto") == "shared"  # over CACHE_MEMORY_FRACTION of the free memory
    assert choose("on") == "cache"  # fits in the free memory
    monkeypatch.setattr(source_module, "available_bytes", lambda device: need - 1)
    with pytest.raises(UserError, match=r"teacher_cache: on needs 0\.01 GiB for 1 images x 162 views"):
        choose("on")
    with pytest.raises(ValueError, match="teacher_cache must be one of"):
        choose("sometimes")


def test_auto_switches_are_on_for_cuda_and_off_on_the_cpu():
    assert resolve_fast_path(CPU) == FastPath()
    cuda = resolve_fast_path(torch.device("cuda"))
    assert cuda.bf16 and cuda.channels_last and cuda.compile and cuda.fused_sgd and not cuda.fuse_students
    forced = resolve_fast_path(CPU, precision="bf16", channels_last="on", compile="on", fuse_students="on")
    assert forced.bf16 and forced.channels_last and forced.compile and forced.fuse_students and not forced.fused_sgd
    with pytest.raises(ValueError, match="execution.compile must be one of"):
        resolve_fast_path(CPU, compile="yes")


def student(teacher, seed=0, **knobs) -> StudentUnit:
    torch.manual_seed(seed)
    model = create_model("resnet8", num_classes=10)
    return StudentUnit(model, build_method(method_spec(**knobs), model, teacher))


def test_bf16_autocast_on_the_cpu_stays_close_to_fp32_and_halves_the_cache(teacher):
    """bf16 keeps 8 mantissa bits (relative rounding 2^-9 = 0.2% per op): a loss through a network agrees with fp32
    to a few percent, and nothing more may be asked of it."""
    data = tiny_data(1)
    bf16 = FastPath(bf16=True)
    runner = TeacherRunner(teacher, NEEDS, chunk=54, fast=bf16)
    cache = TeacherCache.build(runner, data.train_images, data.geometry)
    assert cache.nbytes == cache_bytes(NEEDS, teacher.feature_info, 10, 1, NUM_VIEWS, bf16=True)
    indices, views = torch.tensor([0, 0, 0, 0]), torch.tensor([0, 5, 161, 80])
    targets = cache.lookup(indices, views)
    assert all(t.dtype == torch.float32 for t in targets.features.values())  # losses are taken in fp32
    exact = TeacherRunner(teacher, NEEDS, chunk=8, fast=FastPath())(augment(data.train_images[indices], views,
                                                                             data.geometry))
    for key in NEEDS.features:
        torch.testing.assert_close(targets.features[key], exact.features[key], rtol=0.05, atol=0.05)
    unit = student(teacher, **GATED_KL)
    images = augment(data.train_images[indices], views, data.geometry)
    labels = torch.tensor([0, 1, 2, 3])
    with bf16.autocast(CPU):
        low, _, _ = student_losses(unit, images, labels, exact, CONTEXT)
    high, _, _ = student_losses(unit, images, labels, exact, CONTEXT)
    torch.testing.assert_close(low.float(), high, rtol=0.05, atol=1e-3)


def test_channels_last_gives_the_same_gradients_to_rounding(teacher):
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    labels = torch.arange(8)
    targets = TeacherRunner(teacher, NEEDS, 8, FastPath())(images)
    grads = []
    for fast in (FastPath(), FastPath(channels_last=True)):
        unit = fast.layout(student(teacher, **GATED_KL))
        x = fast.layout(images)
        assert x.is_contiguous(memory_format=torch.channels_last) == fast.channels_last
        assert unit.model.conv1.weight.is_contiguous(memory_format=torch.channels_last) == fast.channels_last
        loss, _, _ = student_losses(unit, x, labels, targets, CONTEXT)
        loss.backward()
        grads.append({n: p.grad for n, p in unit.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:  # fp32 convolutions in another memory order: summation order differs, ~1e-6 relative
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6)


@pytest.fixture
def counting_compiler(monkeypatch):
    """torch.compile with aot_eager (dynamo + AOT autograd, no code generation), counting the graphs it gets."""
    import torch._dynamo
    from torch._dynamo.backends.registry import lookup_backend

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return lookup_backend("aot_eager")(gm, example_inputs)

    torch._dynamo.reset()
    monkeypatch.setattr(fastpath, "COMPILE_BACKEND", backend)
    yield graphs
    torch._dynamo.reset()


@pytest.mark.parametrize("knobs, epochs, graphs", [
    ({"kind": "dkd", "warmup_epochs": 5}, 8, 1),  # the warm-up weight changes every epoch: a tensor, one graph
    ({"kind": "fitnet", "schedule": "two_stage", "hint_epochs": 2}, 5, 2),  # hint-only, then CE: two graphs
])
def test_a_methods_schedule_does_not_rebuild_the_compiled_step_every_epoch(teacher, counting_compiler, knobs, epochs,
                                                                          graphs):
    """A compiled step that read `context.epoch` would be traced anew every epoch (and fall back to eager after
    fastpath.RECOMPILE_LIMIT graphs); schedules reach `losses` through `Method.schedule` instead."""
    images, labels = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(4)), torch.arange(8)
    torch.manual_seed(0)
    model = create_model("resnet8", num_classes=10)
    unit = StudentUnit(model, build_method(method_spec(**knobs), model, teacher))
    targets = compute_teacher_targets(teacher, images, unit.method.teacher_needs())
    step = fastpath.compiled(student_losses)
    for epoch in range(epochs):
        context = unit.method.scheduled(StepContext(epoch, epochs), CPU)
        got, parts, _ = step(unit, images, labels, targets, context)
        expected, expected_parts, _ = student_losses(unit, images, labels, targets, context)
        assert list(parts) == list(expected_parts)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
    assert len(counting_compiler) == graphs


def test_compiled_step_is_traced_once_and_reused_by_every_student(teacher, counting_compiler):
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    labels = torch.arange(8)
    targets = TeacherRunner(teacher, NEEDS, 8, FastPath())(images)
    step = fastpath.compiled(student_losses)
    assert fastpath.compiled(student_losses) is step  # one compiled function per process
    for seed in (0, 1, 2):
        eager, compiled = student(teacher, seed, **GATED_KL), student(teacher, seed, **GATED_KL)
        expected, _, _ = student_losses(eager, images, labels, targets, CONTEXT)
        got, _, _ = step(compiled, images, labels, targets, CONTEXT)
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=0)
        got.backward()
        expected.backward()
        for (name, p), q in zip(compiled.named_parameters(), eager.parameters()):
            if q.grad is not None:
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)
    assert len(counting_compiler) == 1  # three students, one graph


def test_a_resumed_optimizer_takes_its_parameters_layout(teacher, tmp_path):
    """A checkpoint saved with contiguous weights (a CPU run) resumed into a channels_last student (CUDA's
    default): the momentum buffers must take the parameters' strides, or CUDA's fused SGD refuses them."""
    run = run_spec("s", batch_size=8)
    store = Store(str(tmp_path))
    saved = StudentTrainer(run, "g", teacher, 10, CPU, store)
    saved.begin_epoch(0)
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    saved.step(images, torch.arange(8), TeacherRunner(teacher, NEEDS, 8, FastPath())(images), CONTEXT)
    saved.end_epoch(0, 0.0, 1.0, 8)
    saved.save_checkpoint()
    resumed = StudentTrainer(run, "g", teacher, 10, CPU, store, FastPath(channels_last=True))
    resumed.resume()
    assert resumed.record.epochs_done == 1
    convs = 0
    for (name, param), old in zip(resumed.unit.named_parameters(), saved.unit.parameters()):
        buf = resumed.optimizer.state[param].get("momentum_buffer")
        if buf is None:
            continue
        convs += param.dim() == 4
        assert param.dim() < 4 or param.is_contiguous(memory_format=torch.channels_last), name
        assert buf.stride() == param.stride(), name
        assert torch.equal(buf, saved.optimizer.state[old]["momentum_buffer"]), name
    assert convs > 0


def test_the_cache_budget_of_a_packed_trial_is_its_share_of_the_card(monkeypatch):
    """Two trials at resources.gpu = 0.5 that start together both see the card free: each may plan on half."""
    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (70 * gib, 80 * gib))
    cuda = torch.device("cuda")
    assert budget_bytes(cuda, 70 * gib, gpu_share=0.5) == 40 * gib
    assert budget_bytes(cuda, 30 * gib, gpu_share=0.5) == 30 * gib  # less is free than the share
    assert budget_bytes(cuda, 70 * gib, gpu_share=None) == budget_bytes(cuda, 70 * gib, gpu_share=1.0) == 70 * gib
    assert budget_bytes(CPU, 12 * gib, gpu_share=0.5) == 12 * gib  # RAM is not divided by GPU shares


def test_fused_students_compile_into_one_graph_that_steps_like_eager(teacher, tmp_path, counting_compiler):
    """fuse_students + compile (both on for a CUDA group that asks for fusion): the vmapped loss traces into one
    graph without breaks, and two compiled steps leave the stacked weights where two eager steps do."""
    from kdsweep.engine.fused import FusedStudents

    def fused(fast):
        trainers = [StudentTrainer(run_spec(f"s{i}", lr=0.05 / (i + 1), batch_size=8, **GATED_KL), "g", teacher,
                                   10, CPU, Store(str(tmp_path)), fast) for i in range(2)]
        for t in trainers:
            t.begin_epoch(0)
        return FusedStudents(trainers, fast)

    eager, compiled = fused(FastPath(fuse_students=True)), fused(FastPath(fuse_students=True, compile=True))
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(6))
    labels = torch.arange(8)
    targets = TeacherRunner(teacher, NEEDS, 8, FastPath())(images)
    for _ in range(2):
        eager.step(images, labels, targets, CONTEXT)
        compiled.step(images, labels, targets, CONTEXT)
    assert len(counting_compiler) == 1
    for name in eager.params:
        torch.testing.assert_close(compiled.params[name], eager.params[name], rtol=1e-5, atol=1e-7, msg=name)
