"""Horizontal fusion: K students of one structure trained as one vmapped model, so kernel launches do not grow with K.

EXPERIMENTAL: opt-in (`execution.fuse_students: on`) until a GPU measurement shows it pays (BENCHMARKS.md).

Students fuse when they share the student architecture and the whole method config (taps, loss, gate, weights:
one module serves as the template of all of them) and the optimizer's momentum and weight decay; their learning
rates may differ. For one epoch their parameters, BatchNorm buffers and momentum buffers are stacked along a new
leading axis (`torch.func.stack_module_state`), the template student's loss is vmapped over that axis, one
backward pass gives every student its own gradient (the summed loss's gradient for student k is student k's own),
and SGD updates the stacks with a per-student lr. At the end of the epoch everything is copied back into each
student's own modules and optimizer, so evaluation, checkpoints and records are exactly the unfused ones.

What stays per student: its batch of 64 (the same batch for all, never merged into a bigger one), its BatchNorm
batch statistics and running statistics (vmap gives BN one student's slice at a time), its lr and momentum.

Exactness: vmap turns a batched conv into one grouped conv whose fp32 sums run in another order, so a fused
student is not guaranteed bitwise equal to the same student trained alone (the SGD update runs the same
element-wise ops as torch's SGD, on slices). On the CPU the weights agree to ~1e-6 relative after a few steps
(`tests/test_engine.py`) - as far as the training allows: some settings amplify any rounding difference
chaotically, fused or not. The unfused loop stays the default and the bitwise reference. A group mixing
structures fuses each structure that has 2+ students.

Speed: on a GPU the point is launch count (a batch-64 MobileNetV2 step is launch-bound). On the CPU fusion is
slower (grouped depthwise convolutions): `kdsweep bench` measured 0.3-0.5x the unfused loop (BENCHMARKS.md).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch.func import functional_call, stack_module_state, vmap

from kdsweep.engine.fastpath import FastPath, compiled
from kdsweep.engine.student import EpochTotals, StudentTrainer, StudentUnit
from kdsweep.methods import StepContext, TeacherTargets


def fusion_key(trainer: StudentTrainer) -> tuple:
    """Students with equal keys can share one vmapped model."""
    run = trainer.run
    return run.student_arch, run.method, run.recipe.momentum, run.recipe.weight_decay


def student_steppers(trainers: list[StudentTrainer], fast: FastPath) -> list:
    """What steps this epoch's students: the students themselves, or fused stacks of same-structure students."""
    if not fast.fuse_students:
        return list(trainers)
    by_key: dict[tuple, list[StudentTrainer]] = defaultdict(list)
    for t in trainers:
        by_key[fusion_key(t)].append(t)
    return [FusedStudents(members, fast) if len(members) > 1 else members[0] for members in by_key.values()]


def fused_losses(template: StudentUnit, params: dict, buffers: dict, images: torch.Tensor, labels: torch.Tensor,
                 targets: TeacherTargets, context: StepContext):
    """(total, parts, metrics) with a leading student axis: `template`'s loss under every student's weights."""

    def one(p, b):
        return functional_call(template, (p, b), (images, labels, targets, context))

    return vmap(one, randomness="error")(params, buffers)


class FusedStudents:
    def __init__(self, trainers: list[StudentTrainer], fast: FastPath):
        self.trainers, self.fast = trainers, fast
        self.device = trainers[0].device
        self.template = trainers[0].unit  # its own weights are ignored while fused and rewritten in finish()
        self.params, self.buffers = stack_module_state([t.unit for t in trainers])
        group = trainers[0].optimizer.param_groups[0]
        self.momentum, self.weight_decay = group["momentum"], group["weight_decay"]
        self.lrs = [t.optimizer.param_groups[0]["lr"] for t in trainers]
        self.velocity = {n: self._stacked_momentum(n) for n in self.params}
        self.stepped: set[str] = set()  # parameters that got a gradient this epoch (and so a momentum buffer)
        self._neg_lrs: dict[tuple, torch.Tensor] = {}
        self.totals = EpochTotals()
        self._losses = compiled(fused_losses) if fast.compile else fused_losses

    def _stacked_momentum(self, name: str) -> torch.Tensor:
        """Each student's SGD momentum buffer, zeros where it has none yet (0 * momentum + d = d exactly, which is
        what torch's SGD does on its first step)."""
        buffers = []
        for t in self.trainers:
            param = t.unit.get_parameter(name)
            state = t.optimizer.state.get(param, {})
            buf = state.get("momentum_buffer")
            buffers.append(torch.zeros_like(param) if buf is None else buf)
        return torch.stack(buffers)

    def step(self, images: torch.Tensor, labels: torch.Tensor, targets: TeacherTargets, context: StepContext) -> None:
        context = self.template.method.scheduled(context, self.device)  # one config for all: one schedule
        with self.fast.autocast(self.device):
            loss, parts, metrics = self._losses(self.template, self.params, self.buffers, images, labels, targets,
                                                context)
        loss.sum().backward()
        self._sgd()
        self.totals.add(loss, parts, metrics, labels.shape[0])

    @torch.no_grad()
    def _sgd(self) -> None:
        """torch.optim.SGD's update (dampening 0, no Nesterov) on the stacks, with a per-student lr:
        d = grad + wd * p;  v = momentum * v + d;  p = p - lr_k * v.  Parameters without a gradient are skipped,
        as torch does (the SimKD student's own classifier head). Five multi-tensor launches per step whatever K:
        the per-student lr is a (K, 1, ...) tensor broadcast over each stack."""
        names = [n for n, p in self.params.items() if p.grad is not None]
        self.stepped.update(names)
        params = [self.params[n] for n in names]
        grads = [p.grad for p in params]
        velocity = [self.velocity[n] for n in names]
        torch._foreach_add_(grads, params, alpha=self.weight_decay)
        torch._foreach_mul_(velocity, self.momentum)
        torch._foreach_add_(velocity, grads)
        torch._foreach_add_(params, torch._foreach_mul(velocity, [self._neg_lr(p) for p in params]))
        for p in params:
            p.grad = None

    def _neg_lr(self, stacked: torch.Tensor) -> torch.Tensor:
        """-lr of each student, shaped (K, 1, ..., 1) to broadcast over a stack like `stacked`."""
        shape = (len(self.lrs),) + (1,) * (stacked.dim() - 1)
        if shape not in self._neg_lrs:
            self._neg_lrs[shape] = torch.tensor([-lr for lr in self.lrs], dtype=stacked.dtype,
                                                device=stacked.device).view(shape)
        return self._neg_lrs[shape]

    @torch.no_grad()
    def finish(self) -> None:
        """Copy the stacks back into every student's modules, optimizer state and epoch totals."""
        for k, t in enumerate(self.trainers):
            for name, stacked in self.params.items():
                param = t.unit.get_parameter(name)
                param.copy_(stacked[k])
                if name in self.stepped or param in t.optimizer.state:
                    # in the parameter's own layout (channels_last on CUDA), as torch's fused SGD requires
                    t.optimizer.state[param]["momentum_buffer"] = torch.empty_like(param).copy_(self.velocity[name][k])
            for name, stacked in self.buffers.items():
                t.unit.get_buffer(name).copy_(stacked[k])
            t.totals = self.totals.select(k)
