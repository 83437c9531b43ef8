"""The knobs of a distillation method, as one flat, frozen record.

Every variant of the seed report is a combination of these knobs (see `search_spaces/`), not a class of its own:

  SimKD                    kind=simkd, taps=last
  Multiple projectors      taps=multi (last + previous stage, weights 2/3 : 1/3)
  All-layer projectors     taps=all_blocks (one projector per block pair, uniform weights)
  Teacher-correct labels   gate=teacher_correct
  the authors' KL rows     loss=kl_raw, ce_weight=1, kd_weight=1, eval_head=student

`None` for ce_weight / kd_weight / eval_head means "the default of this kind"; `resolved()` fills those in, and only
resolved configs are trained and recorded, so every number in a results table comes with the values that made it.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, fields, replace

KINDS = ("simkd", "vanilla", "kd")
TAPS = ("last", "multi", "all_blocks")
PAIRINGS = ("index", "relative_depth")
LOSSES = ("l2", "kl", "kl_raw")
GATES = ("none", "teacher_correct")
GATE_NORMALISATIONS = ("kept", "all")
EVAL_HEADS = ("teacher_classifier", "student")

# Per kind: (ce_weight, kd_weight, eval_head). kd follows RepDistiller's KD defaults (-r 0.1 -a 0.9).
_KIND_DEFAULTS = {
    "simkd": (0.0, 0.0, "teacher_classifier"),
    "vanilla": (1.0, 0.0, "student"),
    "kd": (0.1, 0.9, "student"),
}


@dataclass(frozen=True)
class MethodConfig:
    kind: str = "simkd"
    # Which (student, teacher) feature pairs get a projector.
    taps: str = "last"
    multi_weights: tuple[float, float] = (2 / 3, 1 / 3)  # (last pair, previous-stage pair)
    pairing: str = "index"  # all_blocks: student block k + (n_s - n_t) <-> teacher block k, or by relative depth
    last_weight: float | None = None  # all_blocks: weight of the classifier-feeding pair; None = uniform 1/n
    factor: int = 2  # projector bottleneck: t_C -> t_C / factor
    # Feature loss on every pair.
    loss: str = "l2"
    temperature: float = 4.0  # kl: softmax temperature, loss scaled by T^2
    feature_weight: float = 1.0
    # Per-sample gate on every feature-loss term.
    gate: str = "none"
    gate_normalise: str = "kept"  # kept: average over kept samples; all: over the whole batch (the authors' code)
    # Auxiliary terms on the student's own classifier head.
    ce_weight: float | None = None
    kd_weight: float | None = None
    kd_temperature: float = 4.0
    # Which head scores test accuracy.
    eval_head: str | None = None

    def resolved(self) -> MethodConfig:
        ce, kd, head = _KIND_DEFAULTS[self.kind]
        return replace(
            self,
            ce_weight=ce if self.ce_weight is None else self.ce_weight,
            kd_weight=kd if self.kd_weight is None else self.kd_weight,
            eval_head=head if self.eval_head is None else self.eval_head,
        )

    def problems(self) -> list[tuple[str, str]]:
        """(knob, expectation) for every invalid value; empty when the config is valid."""
        out = []
        for name, allowed in (
            ("kind", KINDS), ("taps", TAPS), ("pairing", PAIRINGS), ("loss", LOSSES), ("gate", GATES),
            ("gate_normalise", GATE_NORMALISATIONS),
        ):
            if getattr(self, name) not in allowed:
                out.append((name, f"one of {', '.join(allowed)}"))
        if self.eval_head is not None and self.eval_head not in EVAL_HEADS:
            out.append(("eval_head", f"one of {', '.join(EVAL_HEADS)}"))
        if self.factor < 1:
            out.append(("factor", "an integer >= 1"))
        for name in ("temperature", "kd_temperature"):
            if not getattr(self, name) > 0:
                out.append((name, "a number > 0"))
        for name in ("feature_weight", "ce_weight", "kd_weight"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                out.append((name, "a number >= 0"))
        if len(self.multi_weights) != 2 or any(not w >= 0 for w in self.multi_weights):
            out.append(("multi_weights", "two numbers >= 0: [last pair, previous-stage pair]"))
        if self.last_weight is not None and not 0 <= self.last_weight <= 1:
            out.append(("last_weight", "a number between 0 and 1, or null for uniform weights"))
        return out

    def as_record(self) -> dict:
        """Flat, JSON- and parquet-friendly values (tuples become lists)."""
        record = asdict(self)
        record["multi_weights"] = list(self.multi_weights)
        return record

    @classmethod
    def from_record(cls, record: dict) -> MethodConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in record.items() if k in known}
        if "multi_weights" in values:
            values["multi_weights"] = tuple(values["multi_weights"])
        return cls(**values)


KNOBS = tuple(f.name for f in fields(MethodConfig))

KL_RAW_WARNING = (
    "loss 'kl_raw' is the seed report's KLDivLoss applied to raw feature maps, kept to replicate its KL rows: it is "
    "unbounded below (the authors logged losses near -1.6e6) and is not a divergence between distributions; use "
    "'kl' for the principled temperature-softmax KL"
)


def warn_if_replication_only(configs) -> None:
    """Warn once when any of `configs` uses the replication-only raw-feature KL."""
    if any(c.loss == "kl_raw" for c in configs):
        warnings.warn(KL_RAW_WARNING, stacklevel=2)
