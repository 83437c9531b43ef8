"""kdsweep: SimKD knowledge-distillation ablation sweeps.

Layers, bottom up (each imports only the ones above it in this list):
  models/   reference-compatible CIFAR architectures with one feature interface
  data/     CIFAR-100 on disk, a synthetic dataset, seeded on-device augmentation
  methods/  SimKD and its ablation knobs (taps, losses, gate, auxiliary terms), plain CE/KD
  engine/   a student group: one teacher, one data stream, K students; checkpoints; progress
  config    the search-space schema (pydantic), YAML loading and expansion into cells and groups
  tune      the only module that imports Ray
  report/   tables and plots from the tidy result files
"""

__version__ = "0.1.0"
