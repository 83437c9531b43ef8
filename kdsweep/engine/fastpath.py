"""The speed switches of a student group, resolved once per process for its device.

Each switch is `auto`, `on` or `off` (precision: `auto`, `bf16` or `fp32`). `auto` turns a fast path on only where it
pays and is safe to leave on: on CUDA. On the CPU every fast path still runs when asked for (that is how the tests
exercise them), but `auto` keeps the CPU on the exact path, where a student trains to bitwise-identical weights
alone, in a group, from the teacher cache or resumed.

    precision      bf16: student and teacher forwards under bf16 autocast. BatchNorm keeps fp32 weights and running
                   statistics, losses are taken in fp32 (teacher targets are handed out as fp32), no loss scaling is
                   needed for bf16. Not bit-exact against fp32 (bf16 keeps 8 mantissa bits).
    channels_last  NHWC memory layout for the student, the teacher and the inputs (faster cuDNN convolutions).
                   Numerically the same convolutions, but a different kernel choice: not guaranteed bit-exact.
    compile        torch.compile of the student's forward + loss, one compiled graph per (architecture, method
                   structure and batch shape) per process, reused by every student of that structure (nn.Module
                   parameters are graph inputs, not constants). Errors during compilation fall back to eager with a
                   warning. Inductor keeps compiled kernels in its on-disk cache, so later processes on the same
                   machine (the other groups of a sweep) compile in seconds rather than minutes.
    fuse_students  horizontal fusion of same-structure students with torch.func (stack_module_state + vmap):
                   one kernel launch per layer for all K students. See `fused.py`. The one switch whose default is
                   `off` on every device: opt-in until it has been measured on a GPU.

The optimizer is torch's SGD in its fused kernel on CUDA and its single-tensor loop on the CPU (the bitwise
reference every equality test compares against); both implement the same update.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import asdict, dataclass

import torch

SWITCH_VALUES = ("auto", "on", "off")
PRECISIONS = ("auto", "bf16", "fp32")
# torch.compile backend; the tests swap in aot_eager, which traces the same graphs without a C++/Triton toolchain.
COMPILE_BACKEND = "inductor"


@dataclass(frozen=True)
class FastPath:
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False
    fuse_students: bool = False
    fused_sgd: bool = False  # torch.optim.SGD(fused=True): CUDA only

    def autocast(self, device: torch.device):
        """The forward-pass context: bf16 autocast or nothing."""
        if self.bf16:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def layout(self, tensor_or_module):
        """A module or a 4-d batch in this path's memory format (a no-op for the default layout)."""
        if not self.channels_last:
            return tensor_or_module
        if isinstance(tensor_or_module, torch.Tensor):
            return tensor_or_module.contiguous(memory_format=torch.channels_last)
        return tensor_or_module.to(memory_format=torch.channels_last)

    def as_record(self) -> dict:
        return asdict(self)


def _switch(name: str, value: str, device: torch.device) -> bool:
    if value not in SWITCH_VALUES:
        raise ValueError(f"execution.{name} must be one of {', '.join(SWITCH_VALUES)}, got {value!r}")
    return device.type == "cuda" if value == "auto" else value == "on"


def resolve_fast_path(device: torch.device, *, precision: str = "auto", channels_last: str = "auto",
                      compile: str = "auto", fuse_students: str = "off") -> FastPath:
    """The fast paths this group uses on `device` (see the module docstring for what `auto` means)."""
    if precision not in PRECISIONS:
        raise ValueError(f"execution.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return FastPath(
        bf16=bf16,
        channels_last=_switch("channels_last", channels_last, device),
        compile=_switch("compile", compile, device),
        fuse_students=_switch("fuse_students", fuse_students, device),
        fused_sgd=device.type == "cuda",
    )


def compiled(fn):
    """`fn` under torch.compile with this module's backend, created once per process (and backend) per `fn`."""
    return _compile(fn, COMPILE_BACKEND)


# Graphs one compiled function may hold: one per (student structure, batch shape). A group of the full grid mixes
# up to 8 method configs, each with a full and a short last batch; dynamo's default of 8 would send the rest eager.
RECOMPILE_LIMIT = 64


@functools.cache
def _compile(fn, backend):
    import torch._dynamo

    # A graph that fails to compile runs eagerly (dynamo warns) instead of killing a many-hour sweep:
    # correctness never depends on compilation.
    torch._dynamo.config.suppress_errors = True
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    return torch.compile(fn, backend=backend, dynamic=False)
