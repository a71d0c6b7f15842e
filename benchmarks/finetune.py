"""Few-label fine-tuning against a linear probe on the same labels, on every method's backbone.

For each method's 8-minute recipes run (runs/recipes/<name>/backbone.pt, seed 0, which
benchmarks/recipes.py trains), each label fraction and each seed, `evaluate.py --protocol finetune
--seed S` draws a class-balanced subset of the training labels with that seed, fits a linear probe
on the frozen features (the baseline), then fine-tunes the whole network from it
(ssl_zoo/evaluation/finetune.py: LP-FT, reported as WiSE-FT's average of the start and the end,
with the end beside it). Each row gives the mean over the seeds and then each seed's value: with
100 labels both accuracies depend on which images are labeled, and a single draw's difference
between them can be noise (semi-supervised papers average over several label splits for the same
reason).

    python benchmarks/finetune.py     # 10 backbones x 1% and 10% of cifar10-12k's labels x 2 draws
    python benchmarks/finetune.py --methods simclr --fractions 0.01 --seeds 0 -- --finetune_steps 60

Arguments after `--` go to every evaluate.py run. Each run is kept in <run>/finetune-<fraction>
(seed 0) or <run>/finetune-<fraction>-seed<S> and reused while it is newer than the backbone and
was made by the same evaluate.py command.
Writes the table to --out and between the `finetune` markers of docs/evaluation.md (by default
benchmarks/finetune.md and that page, only when every method ran at the default fractions, seeds
and data), ends with one JSON line, and exits 1 if a run failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cli import (  # noqa: E402
    at_defaults,
    command_stamp,
    fraction,
    listed,
    method_name,
    output_arguments,
    photo_arguments,
    publish,
    seed_list,
    split_at_dashes,
    table_writers,
)
from benchmarks.recipes import data_args, last_json, seeds_cell  # noqa: E402
from ssl_zoo.methods import METHODS  # noqa: E402

DOCS = "docs/evaluation.md"
FRACTIONS = "0.01,0.1"
SEEDS = "0,1"


def finetune_run(method: str, label_fraction: float, seed: int, args: argparse.Namespace,
                 extra: list[str]) -> dict:  # fmt: skip
    """evaluate.py --protocol finetune with one seed's labels on the method's backbone (or its
    earlier identical run): the row, or the row with an "error"."""
    run_dir = Path(args.runs) / method
    name = f"finetune-{label_fraction:g}" + (f"-seed{seed}" if seed else "")
    backbone, out = run_dir / "backbone.pt", run_dir / name
    row = {"method": method, "label_fraction": label_fraction, "seed": seed}
    if not backbone.is_file():
        return {**row, "error": f"{backbone} not found (benchmarks/recipes.py trains it)"}
    # Seed 0 is evaluate.py's default and is left out, so its command is the one-draw command.
    command = ["evaluate.py", "--checkpoint", str(backbone), "--protocol", "finetune",
               "--label_fraction", str(label_fraction), *data_args(args), "--plot", "false",
               "--track_energy", "false", *extra, *(["--seed", str(seed)] if seed else []),
               "--output_dir", str(out)]  # fmt: skip
    results, made_by = out / "results.json", out / "command.json"
    if (made_by.is_file() and json.loads(made_by.read_text()) == command
            and results.stat().st_mtime >= backbone.stat().st_mtime):  # fmt: skip
        print(f"{method} at {label_fraction:g}: reused {out}", file=sys.stderr)
        found = json.loads(results.read_text())
    else:
        found = last_json(command, method)
        if "error" in found:
            return {**row, **found}
        made_by.write_text(json.dumps(command))
    tuned = found["results"]["finetune"]
    return {**row, "labels": tuned["labels"], "probe_top1": tuned["linear_same_labels"]["top1"],
            "finetune_top1": tuned["top1"], "end_top1": tuned["end_of_finetuning"]["top1"],
            "gain": tuned["top1"] - tuned["linear_same_labels"]["top1"],
            "seconds": found["seconds"]}  # fmt: skip


def table(rows: list[dict], title: str) -> str:
    """One row per method and label fraction: with several seeds each figure is the mean over
    the label draws and then each draw's value."""
    lines = [title, "", "| method | labels | linear probe, same labels | fine-tuned (WiSE-FT) | "
             "end of fine-tuning | fine-tuned - probe | s per run |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    draws: dict[tuple[str, float], list[dict]] = {}
    for r in rows:
        draws.setdefault((r["method"], r["label_fraction"]), []).append(r)
    for (method, label_fraction), runs in draws.items():
        failed = [r for r in runs if "error" in r]
        if failed:
            lines.append(
                f"| {method} | {label_fraction:g} | failed: {failed[0]['error']} | | | | |"
            )
            continue
        cells = [seeds_cell([r[key] for r in runs], fmt) for key, fmt in
                 (("probe_top1", ".3f"), ("finetune_top1", ".3f"), ("end_top1", ".3f"),
                  ("gain", "+.3f"))]  # fmt: skip
        seconds = sum(r["seconds"] for r in runs) / len(runs)
        lines.append(f"| {method} | {runs[0]['labels']} ({label_fraction:.0%}) | "
                     + " | ".join(cells) + f" | {seconds:.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    argv, extra = split_at_dashes(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", type=listed(method_name), default=",".join(METHODS))
    parser.add_argument("--fractions", type=listed(fraction), default=FRACTIONS,
                        help="label fractions, each a class-balanced seeded subset")  # fmt: skip
    parser.add_argument("--seeds", type=seed_list, default=SEEDS,
                        help="label draws: evaluate.py's --seed, one run each")  # fmt: skip
    photo_arguments(parser)
    parser.add_argument("--runs", default="runs/recipes", help="recipes.py's runs (seed 0's)")
    output_arguments(parser, "finetune")
    args = parser.parse_args(argv)
    if not args.fractions:
        parser.error("--fractions: give at least one label fraction, e.g. 0.01,0.1")
    if not args.methods:
        parser.error(f"--methods: give at least one method, e.g. {','.join(list(METHODS)[:2])}")
    whole = not extra and at_defaults(parser, args, "methods", "fractions", "seeds", "dataset",
                                      "data_dir", "runs")  # fmt: skip
    writers = table_writers(parser, args, "finetune", whole, "benchmarks/finetune.md", DOCS)
    jobs = [(m, f, s) for m in args.methods for f in args.fractions for s in args.seeds]
    rows = []
    for method, label_fraction, seed in jobs:
        print(f"[{len(rows) + 1}/{len(jobs)}] {method}, {label_fraction:g} of the labels, "
              f"seed {seed} ...", file=sys.stderr, flush=True)  # fmt: skip
        rows.append(finetune_run(method, label_fraction, seed, args, extra))
    title = (f"{command_stamp('benchmarks/finetune.py')}: evaluate.py --protocol finetune --seed "
             f"S (S in {','.join(map(str, args.seeds))}: the label draw) on each method's "
             f"{args.runs}/<name>/backbone.pt, --dataset {args.dataset} --data_dir "
             f"{args.data_dir} {' '.join(extra)}, one at a time")  # fmt: skip
    publish(table(rows, title), rows, {"title": title, "rows": rows}, *writers)


if __name__ == "__main__":
    main()
