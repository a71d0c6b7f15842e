"""Train every method on one wall-clock budget and tabulate kNN top-1 at initialisation and after.

Each method runs `train.py --config configs/methods/<name>.yaml` (its CPU recipe) on the dataset,
backbone and budget given here; the default is docs/methods.md's real-data table:

    python benchmarks/recipes.py                     # 10 methods x 8 min on ../shared/data/cifar10-12k
    python benchmarks/recipes.py --seeds 0,1         # each method twice: the mean and both values
    python benchmarks/recipes.py --minutes 4 --seeds 0,1   # half the budget: docs/methods.md's table
    python benchmarks/recipes.py --methods simclr,byol --minutes 2 -- --batch_size 128

Arguments after `--` go to every train.py run. Each run is a separate process, so one method's
memory or threads never affect the next. After training, `evaluate.py --protocol linear` probes the
final backbone (papers report linear top-1, and it can rank methods differently from kNN).
A method whose run directory already holds a finished run (summary.json) with the same settings
is not trained again; a run of other settings (an edited config, say) is reported, not
overwritten: delete runs/recipes/<name> to redo it (seed 0's run is <name>, seed s's <name>-seed<s>).
Each budget has its own table: the 8-minute one (`recipes`: runs/recipes, benchmarks/recipes.md
and docs/methods.md) and any other (`recipes-<minutes>min`: runs/recipes-4min,
benchmarks/recipes-4min.md and docs/methods.md for 4 minutes). Writes the markdown table to --out
and between the table's markers of the --docs pages (by default the budget's file and pages, but
only when every method ran on the default backbone and photos with nothing after `--`: a narrower
run's rows would replace the whole table), and ends with a one-line JSON summary of all runs;
exits 1 if a run failed (and then writes no table).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cli import (  # noqa: E402
    at_defaults,
    command_stamp,
    listed,
    method_name,
    output_arguments,
    publish,
    run_arguments,
    seed_list,
    split_at_dashes,
    table_writers,
)
from ssl_zoo.config import TrainConfig, parse_config  # noqa: E402
from ssl_zoo.methods import METHODS  # noqa: E402

# The pages whose table this benchmark writes, by budget in minutes (tests/test_benchmarks.py
# checks them): the 8-minute table, and half the budget beside it, since machines differ in the
# steps they make in 8 minutes.
DOCS = {8.0: "docs/methods.md", 4.0: "docs/methods.md"}


def table_name(minutes: float) -> str:
    """The name of a budget's table, its docs markers, runs folder and table file."""
    return "recipes" if minutes == 8 else f"recipes-{minutes:g}min"


def run_dir_of(method: str, seed: int, args: argparse.Namespace) -> Path:
    return Path(args.runs) / (method if seed == 0 else f"{method}-seed{seed}")


def data_args(args: argparse.Namespace) -> list[str]:
    return ["--dataset", args.dataset, *(["--data_dir", args.data_dir] if args.data_dir else [])]


def train_method(method: str, seed: int, args: argparse.Namespace, extra: list[str]) -> dict:
    """Trains (or reuses) one method's run of one seed (cost.py's runs too): its summary, or
    {"method", "seed", "error"}."""
    run_dir, data = run_dir_of(method, seed, args), data_args(args)
    train_args = ["--config", str(ROOT / "configs" / "methods" / f"{method}.yaml"), *data,
                  "--backbone", args.backbone, "--max_time", str(args.minutes), "--max_epochs", "1000",
                  "--seed", str(seed), "--output_dir", str(run_dir), *extra]  # fmt: skip
    failed = {"method": method, "seed": seed}
    if (run_dir / "summary.json").exists():
        differing = changed_settings(run_dir, train_args)
        if differing:
            error = (f"{run_dir} holds a run with other settings ({', '.join(differing)}: the "
                     "recipe changed since?); delete it or pass --runs DIR")  # fmt: skip
            print(f"{method}: {error}", file=sys.stderr)
            return {**failed, "error": error}
        print(f"{method}: finished run found in {run_dir}, not trained again", file=sys.stderr)
        summary = json.loads((run_dir / "summary.json").read_text())
    else:
        summary = last_json(["train.py", *train_args], method)
        if "error" in summary:
            return {**failed, **summary}
    return with_rates({**summary, "seed": seed})


def run_method(method: str, seed: int, args: argparse.Namespace, extra: list[str]) -> dict:
    """train_method, then a linear probe of the run's backbone: the summary with `linear_top1`."""
    summary = train_method(method, seed, args, extra)
    if "error" in summary:
        return summary
    probe = evaluate_backbone(run_dir_of(method, seed, args), "linear", seed, args, extra, method)
    if "error" in probe:
        return {"method": method, "seed": seed, **probe}
    return {**summary, "linear_top1": probe["top1"]}


def evaluate_backbone(run_dir: Path, protocol: str, seed: int, args: argparse.Namespace,
                      extra: list[str], label: str) -> dict:  # fmt: skip
    """evaluate.py's `protocol` on run_dir/backbone.pt (reused while newer than the backbone):
    its results, or {"error": ...}."""
    # The evaluation sees the data the kNN monitor saw (--train_samples/--test_samples, if given).
    limits = [a for flag in ("--train_samples", "--test_samples") if flag in extra
              for a in (flag, extra[extra.index(flag) + 1])]  # fmt: skip
    results = run_dir / protocol / "results.json"
    if results.exists() and results.stat().st_mtime >= (run_dir / "backbone.pt").stat().st_mtime:
        return json.loads(results.read_text())
    return last_json(["evaluate.py", "--checkpoint", str(run_dir / "backbone.pt"), "--protocol",
                      protocol, *data_args(args), *limits, "--seed", str(seed), "--plot", "false",
                      "--track_energy", "false", "--output_dir", str(run_dir / protocol)], label)  # fmt: skip


def last_json(command: list[str], method: str) -> dict:
    """Runs an entry point of this repository in its own process: its last stdout line (the JSON
    summary), or {"error": its last stderr line}."""
    proc = subprocess.run([sys.executable, str(ROOT / command[0]), *command[1:]],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    if proc.returncode != 0:
        error = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        print(f"{method}: {command[0]}: {error}", file=sys.stderr)
        return {"error": f"{command[0]}: {error}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def changed_settings(run_dir: Path, train_args: list[str]) -> list[str]:
    """Settings in which the run saved in run_dir differs from what train_args would train now,
    so an edited method config is trained again instead of reusing the old figure. A setting
    the saved run predates counts as its default, which is what that run trained with. Where the
    run lives (output_dir) is not a setting: a finished run copied or moved into run_dir counts."""
    wanted = parse_config(TrainConfig, train_args, prog="train.py").as_dict()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    default = TrainConfig().as_dict()
    return [k for k, v in wanted.items() if k != "output_dir" and saved.get(k, default.get(k)) != v]


def with_rates(summary: dict) -> dict:
    summary["seconds_per_epoch"] = round(summary["seconds"] / max(summary["epochs"], 1), 1)
    return summary


def table(runs: list[dict], title: str) -> str:
    """One row per method; with several seeds a figure is their mean and then each seed's value."""
    lines = [f"{title}", "", "| method | family | kNN top-1 at init | kNN top-1 | linear top-1 | epochs | steps | s/epoch | s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    by_method: dict[str, list[dict]] = {}
    for r in runs:
        by_method.setdefault(r["method"], []).append(r)
    for method, seeds in by_method.items():
        family = METHODS[method].family
        failed = [r for r in seeds if "error" in r]
        if failed:
            lines.append(f"| {method} | {family} | failed: {failed[0]['error']} | | | | | | |")
            continue
        cells = [seeds_cell([r[key] for r in seeds], fmt) for key, fmt in
                 (("knn_top1_init", ".3f"), ("knn_top1", ".3f"), ("linear_top1", ".3f"),
                  ("epochs", "g"), ("steps", "g"), ("seconds_per_epoch", ".1f"), ("seconds", ".1f"))]  # fmt: skip
        lines.append(f"| {method} | {family} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seeds_cell(values: list[float], fmt: str) -> str:
    """One seed's value, or the mean of several followed by each seed's, as '0.450 (0.447, 0.453)'."""
    if len(values) == 1:
        return format(values[0], fmt)
    mean = sum(values) / len(values)
    return f"{mean:{fmt}} ({', '.join(format(v, fmt) for v in values)})"


def main() -> None:
    argv, extra = split_at_dashes(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", type=listed(method_name), default=",".join(METHODS))
    parser.add_argument("--backbone", default="timm:resnet18")
    parser.add_argument("--seeds", type=seed_list, default="0",
                        help="train every method once per seed, one run at a time")  # fmt: skip
    run_arguments(parser, runs=None)  # by default the budget's (table_name)
    output_arguments(parser, "recipes")
    args = parser.parse_args(argv)
    name = table_name(args.minutes)
    args.runs = args.runs or f"runs/{name}"
    whole = not extra and at_defaults(parser, args, "methods", "backbone", "dataset", "data_dir")
    writers = table_writers(parser, args, name, whole, f"benchmarks/{name}.md",
                            DOCS.get(args.minutes, ""))  # fmt: skip
    jobs = [(method, seed) for method in args.methods for seed in args.seeds]
    rows = []
    for method, seed in jobs:
        print(
            f"[{len(rows) + 1}/{len(jobs)}] {method}, seed {seed} ...", file=sys.stderr, flush=True
        )
        rows.append(run_method(method, seed, args, extra))
    title = (f"{command_stamp('benchmarks/recipes.py')}: each method's configs/methods/<name>.yaml "
             f"on --dataset {args.dataset} --data_dir {args.data_dir} --backbone {args.backbone} "
             f"--max_time {args.minutes:g} {' '.join(extra)}, one at a time; linear top-1: "
             "evaluate.py --protocol linear on the final backbone")  # fmt: skip
    publish(table(rows, title), rows, {"title": title, "rows": rows}, *writers)


if __name__ == "__main__":
    main()
