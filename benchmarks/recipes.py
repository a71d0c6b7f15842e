"""Train every method on one wall-clock budget and tabulate kNN top-1 at initialisation and after.

Each method runs `train.py --config configs/methods/<name>.yaml` (its CPU recipe) on the dataset,
backbone and budget given here; the default is the README's real-data table:

    python benchmarks/recipes.py                     # 10 methods x 8 min on ../shared/data/cifar10-12k
    python benchmarks/recipes.py --methods simclr,byol --minutes 2 -- --batch_size 128

Arguments after `--` go to every train.py run. Each run is a separate process, so one method's
memory or threads never affect the next. A method whose run directory already holds a finished
run (summary.json) with the same settings is not trained again; a run of other settings (an
edited config, say) is reported, not overwritten: delete runs/recipes/<name> to redo it. Writes the
markdown table to --out and between the `recipes` markers of the --docs pages (by default README.md
and docs/methods.md when every method ran, none for a subset of --methods, whose rows would
replace the whole table), and ends with a one-line JSON summary of all rows; exits 1 if a run failed
(and then writes no table).
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
    command_stamp,
    docs_argument,
    docs_writers,
    listed,
    method_name,
    publish,
    run_arguments,
)
from ssl_zoo.config import TrainConfig, parse_config  # noqa: E402
from ssl_zoo.methods import METHODS  # noqa: E402

# The pages whose `recipes` table this benchmark writes (tests/test_benchmarks.py checks them).
DOCS = "README.md,docs/methods.md"


def run_method(method: str, args: argparse.Namespace, extra: list[str]) -> dict:
    run_dir = Path(args.runs) / method
    train_args = ["--config", str(ROOT / "configs" / "methods" / f"{method}.yaml"),
                  "--dataset", args.dataset, "--backbone", args.backbone,
                  "--max_time", str(args.minutes), "--max_epochs", "1000",
                  "--output_dir", str(run_dir), *extra]  # fmt: skip
    if args.data_dir:
        train_args[2:2] = ["--data_dir", args.data_dir]
    if (run_dir / "summary.json").exists():
        differing = changed_settings(run_dir, train_args)
        if differing:
            error = (f"{run_dir} holds a run with other settings ({', '.join(differing)}: the "
                     "recipe changed since?); delete it or pass --runs DIR")  # fmt: skip
            print(f"{method}: {error}", file=sys.stderr)
            return {"method": method, "error": error}
        print(f"{method}: finished run found in {run_dir}, not trained again", file=sys.stderr)
        return with_rates(json.loads((run_dir / "summary.json").read_text()))
    command = [sys.executable, str(ROOT / "train.py"), *train_args]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        error = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        print(f"{method}: {error}", file=sys.stderr)
        return {"method": method, "error": error}
    return with_rates(json.loads(proc.stdout.strip().splitlines()[-1]))


def changed_settings(run_dir: Path, train_args: list[str]) -> list[str]:
    """Settings in which the run saved in run_dir differs from what train_args would train now,
    so an edited method config is trained again instead of reusing the old figure. A setting
    the saved run predates counts as its default, which is what that run trained with."""
    wanted = parse_config(TrainConfig, train_args, prog="train.py").as_dict()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    default = TrainConfig().as_dict()
    return [k for k, v in wanted.items() if saved.get(k, default.get(k)) != v]


def with_rates(summary: dict) -> dict:
    summary["seconds_per_epoch"] = round(summary["seconds"] / max(summary["epochs"], 1), 1)
    return summary


def table(rows: list[dict], title: str) -> str:
    lines = [f"{title}", "", "| method | family | kNN top-1 at init | kNN top-1 | epochs | steps | s/epoch | s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        family = METHODS[r["method"]].family
        if "error" in r:
            lines.append(f"| {r['method']} | {family} | failed: {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {r['method']} | {family} | {r['knn_top1_init']:.3f} | {r['knn_top1']:.3f} | "
            f"{r['epochs']} | {r['steps']} | {r['seconds_per_epoch']} | {r['seconds']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", type=listed(method_name), default=",".join(METHODS))
    parser.add_argument("--backbone", default="timm:resnet18")
    run_arguments(parser, runs="runs/recipes", out="benchmarks/recipes.md")
    docs_argument(parser, "recipes", default=None)
    args = parser.parse_args(argv)
    if args.docs is None:
        args.docs = DOCS.split(",") if set(args.methods) == set(METHODS) else []
        if not args.docs:
            print("a subset of the methods: README's and docs/methods.md's tables are left as they "
                  "are (--docs PAGES writes them)", file=sys.stderr)  # fmt: skip
    to_docs = docs_writers(parser, args.docs, "recipes")
    methods = args.methods
    rows = []
    for method in methods:
        print(f"[{len(rows) + 1}/{len(methods)}] {method} ...", file=sys.stderr, flush=True)
        rows.append(run_method(method, args, extra))
    title = (f"{command_stamp('benchmarks/recipes.py')}: each method's configs/methods/<name>.yaml "
             f"on --dataset {args.dataset} --data_dir {args.data_dir} --backbone {args.backbone} "
             f"--max_time {args.minutes:g} {' '.join(extra)}, one at a time")  # fmt: skip
    written = publish(table(rows, title), rows, Path(args.out).write_text, *to_docs)
    print(json.dumps({"title": title, "rows": rows}))
    if not written:
        sys.exit(1)


if __name__ == "__main__":
    main()
