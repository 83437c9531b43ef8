"""`kdsweep bench`: throughput of the training paths side by side (kdsweep/bench.py). Needs neither Ray nor pydantic.

    kdsweep bench                                  # resnet32x4 -> MobileNetV2_1_0, batch 64, K = 8, this device
    kdsweep bench --device cuda --k 16 --steps 50 --cache-images 50000 --paths reference single group cache fused
"""

from __future__ import annotations

import argparse
import json

from kdsweep.errors import UserError
from kdsweep.speed_flags import add_speed_flags, speed_switches


def add_command(sub: argparse._SubParsersAction) -> None:
    """Register the bench subcommand on the `kdsweep` parser."""
    p = sub.add_parser("bench", help="measure training throughput: reference-style loop vs kdsweep's paths")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--teacher", default="resnet32x4", help="teacher architecture (random weights)")
    p.add_argument("--student", default="MobileNetV2_1_0", help="student architecture")
    p.add_argument("--k", type=int, default=8, help="students in the group paths (default 8)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per path and round (default 5)")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds in which the paths take turns; each path reports its median round (default 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps of each path before the rounds (default 1)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--classes", type=int, default=100, help="classes of the synthetic CIFAR-shaped data")
    p.add_argument("--cache-images", type=int, default=16,
                   help="images whose 162 views the bench's teacher cache holds (default 16)")
    p.add_argument("--reference-workers", type=int,
                   help="DataLoader workers of the reference loop (default: 0 on the CPU, 8 on CUDA)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--paths", nargs="+", default=["reference", "single", "group", "cache"],
                   help="which of reference single group cache fused to run (default: all but fused, "
                        "the vmap-fused students being opt-in: see engine/fused.py)")
    add_speed_flags(p, fusion=False)  # fusion: the `fused` path
    p.add_argument("--json", metavar="FILE", help="also write the measurements as JSON")
    p.set_defaults(handler=cmd_bench)


def cmd_bench(args) -> int:
    from kdsweep.bench import PATHS, BenchOptions, format_table, run_bench

    if min(args.k, args.steps, args.rounds, args.cache_images) < 1 or args.warmup < 0 or args.batch_size < 2:
        raise UserError("--k, --steps, --rounds and --cache-images must be >= 1, --warmup >= 0 and "
                        "--batch-size >= 2.")
    unknown = sorted(set(args.paths) - set(PATHS))
    if unknown:
        raise UserError(f"unknown --paths {', '.join(unknown)}; choose from {', '.join(PATHS)}.")
    options = BenchOptions(
        device=args.device, teacher=args.teacher, student=args.student, k=args.k, steps=args.steps,
        rounds=args.rounds, warmup=args.warmup, batch_size=args.batch_size, num_classes=args.classes,
        cache_images=args.cache_images, reference_workers=args.reference_workers, threads=args.threads,
        paths=tuple(args.paths), **speed_switches(args),
    )
    result = run_bench(options)
    print()
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result.as_record(), f, indent=2)
    return 0
