"""The `kdsweep` command: parses arguments, validates, dispatches. No training or Ray logic lives here.

Exit codes: 0 success, 1 a sweep finished with failed runs, 2 bad input (one-paragraph message, no traceback),
130 interrupted (run the same command again to resume).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from kdsweep import __version__
from kdsweep.errors import UserError
from kdsweep.speed_flags import add_speed_flags, speed_switches


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = lambda message, category, *rest: f"kdsweep: warning: {message}\n"
    try:
        return args.handler(args) or 0
    except UserError as err:
        print(f"kdsweep: error: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:  # `kdsweep ... | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("\nkdsweep: interrupted; finished work is kept - run the same command again to resume.", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdsweep", description="SimKD knowledge-distillation ablation sweeps.")
    parser.add_argument("--version", action="version", version=f"kdsweep {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="run (or resume) a search space as a Ray Tune sweep")
    p.add_argument("space", help="search-space YAML file, or an experiment folder to resume where it lies now")
    _add_overrides(p)
    p.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else an embedded local Ray)")
    p.add_argument("--storage", help="where experiments live (path or s3:// gs:// URI); overrides `storage`")
    p.add_argument("--dry-run", action="store_true", help="print the cells, groups and a cost estimate; run nothing")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--verbose", action="store_true",
                   help="also show Ray Tune's own trial tables, checkpoint lines and warnings (hidden by default)")
    p.add_argument("--only-current", action="store_true",
                   help="the report leaves out runs outside the current space (kept from an earlier space)")
    change = p.add_mutually_exclusive_group()
    change.add_argument("--as-new-experiment", metavar="NAME",
                        help="run the space as a new experiment NAME beside the one it names (a changed recipe, "
                             "dataset or teacher)")
    change.add_argument("--replace", action="store_true",
                        help="train a space that changes the recipe, dataset or teacher in the experiment's own "
                             "folder; the earlier runs stay on disk and leave the tables")
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("validate", help="check a search space; exit 0 when valid, 2 with every problem listed")
    p.add_argument("space")
    _add_overrides(p)
    p.set_defaults(handler=cmd_validate)

    p = sub.add_parser("status", help="progress of an experiment, from its stored results (starts nothing)")
    p.add_argument("experiment", help="experiment folder <storage>/<experiment> (path or URI), or its space YAML")
    p.set_defaults(handler=cmd_status)

    p = sub.add_parser("report", help="write results.md and plots/*.png for an experiment")
    p.add_argument("experiment", help="experiment folder (path or URI)")
    p.add_argument("--select", choices=("best", "last"), help="best-epoch (default) or last-epoch accuracy")
    p.add_argument("--format", choices=("csv", "json"), help="also export the cell table in this format")
    p.add_argument("--only-current", action="store_true",
                   help="leave out runs outside the experiment's current space (kept from an earlier space)")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("train", help="train one configuration without Ray (K learning rates = K students)")
    p.add_argument("--student", required=True, help="student architecture, e.g. MobileNetV2_1_0")
    p.add_argument("--teacher", help="teacher architecture (omit to train a model alone with cross-entropy)")
    p.add_argument("--teacher-checkpoint", help="teacher weights: {'model': state_dict} or a bare state_dict")
    p.add_argument("--method", action="append", default=[], metavar="KNOB=VALUE",
                   help="the method and its knobs, repeatable: kind=dkd, beta=4; kind=simkd (the default with a "
                        "teacher), taps=multi, loss=kl, ... (`kdsweep methods` lists them)")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE",
                   help="a Python file that registers a method of your own (repeatable)")
    p.add_argument("--lr", type=float, nargs="+", default=[0.05], help="learning rate(s); default 0.05")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=240)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--milestones", type=int, nargs="*", help="default: 150 180 210 scaled to --epochs")
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--dataset", default="cifar100",
                   help="cifar100 (default), cifar10, image_folder, synthetic (`kdsweep datasets` lists them)")
    p.add_argument("--data", action="append", default=[], metavar="KNOB=VALUE",
                   help="the dataset's knobs, repeatable: image_size=64, train_subset=1000, num_classes=10, ... "
                        "(synthetic here defaults to num_classes=10 train_size=2000 test_size=500)")
    p.add_argument("--data-root", default="data", help="the dataset's root knob, for datasets read from files "
                                                         "(default: data)")
    p.add_argument("--download", action="store_true", help="the dataset's download knob: fetch CIFAR if missing")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--teacher-cache", choices=("auto", "on", "off"), default="auto",
                   help="the exact teacher cache (auto: when it pays off and fits)")
    add_speed_flags(p)
    p.add_argument("--out", default="results/train", help="where run folders are written")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("methods", help="list the distillation methods and their knobs")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE", help="also list a plug-in's methods")
    p.set_defaults(handler=cmd_methods)

    p = sub.add_parser("datasets", help="list the datasets and their knobs")
    p.add_argument("--plugin", action="append", default=[], metavar="FILE", help="also list a plug-in's datasets")
    p.set_defaults(handler=cmd_datasets)

    from kdsweep import bench_command, cluster_command

    cluster_command.add_commands(sub)
    bench_command.add_command(sub)
    return parser


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a value of the space, e.g. --set recipe.epochs=2 --set axes.seed=[0]")


def _load(args):
    """The space to run: a YAML file, or the space an experiment folder last ran, opened where the folder is."""
    from pathlib import Path

    from kdsweep.space import load_space
    from kdsweep.storage import absolute_location, is_uri

    overrides = list(args.overrides)
    new_name = getattr(args, "as_new_experiment", None)
    if new_name:
        overrides.append(f"experiment={new_name}")
    target = args.space
    if Path(target).is_dir() or (is_uri(target) and not target.endswith((".yaml", ".yml"))):
        from kdsweep.sweep.experiment import open_experiment

        if getattr(args, "storage", None):
            raise UserError(f"--storage goes with a space file; {target} is an experiment folder, which is "
                            f"resumed where it lies.")
        root = None
        if new_name:  # beside the folder: <its parent>/<NAME>
            root = f"{absolute_location(target).rsplit('/', 1)[0]}/{new_name}"
        return open_experiment(target, overrides, root=root)[0]
    if getattr(args, "storage", None):
        overrides.append(f"storage={args.storage}")
    return load_space(target, overrides)


def cmd_validate(args) -> int:
    space = _load(args)
    print(f"{args.space}: valid - {len(space.runs)} runs in {len(space.cells)} cells; experiment folder {space.root}")
    return 0


def cmd_run(args) -> int:
    space = _load(args)
    if args.dry_run:
        from kdsweep.sweep.dry_run import describe

        print(describe(space))
        return 0
    from kdsweep.sweep.driver import run_sweep

    outcome = run_sweep(space, address=args.address, report=not args.no_report, replace=args.replace,
                        only_current=args.only_current, verbose=args.verbose)
    if outcome.interrupted:
        print("kdsweep: interrupted; finished work is kept - run the same command again to resume.", file=sys.stderr)
        return 130
    counts = outcome.trials.status.value_counts().to_dict() if len(outcome.trials) else {}
    done = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    print(f"kdsweep: {space.file.experiment}: {len(outcome.trials)} runs: {done or 'none'}; tables in "
          f"{outcome.root}/trials.parquet")
    return 1 if outcome.failed else 0


def cmd_status(args) -> int:
    from kdsweep.sweep.status import status_text

    print(status_text(args.experiment))
    return 0


def cmd_report(args) -> int:
    from kdsweep.sweep.report_command import report_experiment

    print(report_experiment(args.experiment, select=args.select, fmt=args.format, only_current=args.only_current))
    return 0


def cmd_train(args) -> int:
    from kdsweep.engine.recipe import MAX_SEED
    from kdsweep.single import TrainRequest, parse_data_options, parse_knobs, parse_recipe, train
    from kdsweep.storage import absolute_location

    if not 0 <= args.seed <= MAX_SEED:
        raise UserError(f"--seed: expected an integer from 0 to {MAX_SEED}, got {args.seed}.")
    plugins = tuple(absolute_location(p) for p in args.plugin)
    data = parse_data_options(args.dataset, parse_knobs(args.data, "--data", "image_size=64"), args.data_root,
                              args.download, plugins)
    recipe = parse_recipe({"epochs": args.epochs, "batch_size": args.batch_size, "milestones": args.milestones or None,
                           "checkpoint_every": args.checkpoint_every})
    req = TrainRequest(student=args.student, teacher=args.teacher, teacher_checkpoint=args.teacher_checkpoint,
                       data=data, recipe=recipe, lrs=args.lr, seed=args.seed,
                       method=parse_knobs(args.method, "--method", "kind=dkd"), out=args.out, device=args.device,
                       threads=args.threads, execution={"teacher_cache": args.teacher_cache, **speed_switches(args)},
                       plugins=plugins)
    train(req)
    return 0


def cmd_methods(args) -> int:
    from kdsweep.methods import methods

    _list_registered(args.plugin, methods, lambda cls: "" if cls.needs_teacher else " [no teacher]")
    return 0


def cmd_datasets(args) -> int:
    from kdsweep.data import datasets

    def geometry(cls) -> str:
        try:
            g = cls.geometry(cls.Config())
        except Exception:  # a geometry that depends on required knobs
            return ""
        return f" [{g.image_size} px, padding {g.padding}: {g.num_views} views]"

    _list_registered(args.plugin, datasets, geometry)
    return 0


def _list_registered(plugins: list[str], registered, note) -> None:
    """Each registered class with its summary and every knob's type, bounds, default and meaning."""
    from kdsweep import typed_config
    from kdsweep.registry import load_plugins
    from kdsweep.storage import absolute_location

    load_plugins(absolute_location(p) for p in plugins)
    for name, cls in registered().items():
        print(f"{name}: {cls.summary}{note(cls)}")
        for k in typed_config.knobs(cls.Config):
            print(f"  {k.name:<16} {k.describe()}")


if __name__ == "__main__":
    sys.exit(main())
