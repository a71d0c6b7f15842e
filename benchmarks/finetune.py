"""Few-label fine-tuning against a linear probe on the same labels, on every method's backbone.

For each method's 8-minute recipes run (runs/recipes/<name>/backbone.pt, seed 0, which
benchmarks/recipes.py trains) and each label fraction, `evaluate.py --protocol finetune` draws a
class-balanced, seeded subset of the training labels, fits a linear probe on the frozen features
(the baseline), then fine-tunes the whole network from it (ssl_zoo/evaluation/finetune.py: LP-FT,
reported as WiSE-FT's average of the start and the end, with the end beside it):

    python benchmarks/finetune.py                  # 10 backbones x 1% and 10% of cifar10-12k's labels
    python benchmarks/finetune.py --methods simclr --fractions 0.01 -- --finetune_steps 60

Arguments after `--` go to every evaluate.py run. Each run is kept in <run>/finetune-<fraction>
and reused while it is newer than the backbone and was made by the same evaluate.py command.
Writes the table to --out and between the `finetune` markers of docs/evaluation.md (when every
method ran at the default fractions), ends with one JSON line, and exits 1 if a run failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cli import (  # noqa: E402
    command_stamp,
    docs_argument,
    docs_writers,
    fraction,
    listed,
    method_name,
    photo_arguments,
    publish,
    split_at_dashes,
)
from benchmarks.recipes import data_args, last_json  # noqa: E402
from ssl_zoo.methods import METHODS  # noqa: E402

DOCS = "docs/evaluation.md"
FRACTIONS = "0.01,0.1"


def finetune_run(method: str, label_fraction: float, args: argparse.Namespace,
                 extra: list[str]) -> dict:  # fmt: skip
    """evaluate.py --protocol finetune on the method's backbone (or its earlier identical run):
    the row, or the row with an "error"."""
    run_dir = Path(args.runs) / method
    backbone, out = run_dir / "backbone.pt", run_dir / f"finetune-{label_fraction:g}"
    row = {"method": method, "label_fraction": label_fraction}
    if not backbone.is_file():
        return {**row, "error": f"{backbone} not found (benchmarks/recipes.py trains it)"}
    command = ["evaluate.py", "--checkpoint", str(backbone), "--protocol", "finetune",
               "--label_fraction", str(label_fraction), *data_args(args), "--plot", "false",
               "--track_energy", "false", *extra, "--output_dir", str(out)]  # fmt: skip
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
            "seconds": found["seconds"]}  # fmt: skip


def table(rows: list[dict], title: str) -> str:
    lines = [title, "", "| method | labels | linear probe, same labels | fine-tuned (WiSE-FT) | "
             "end of fine-tuning | fine-tuned - probe | s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        if "error" in r:
            lines.append(
                f"| {r['method']} | {r['label_fraction']:g} | failed: {r['error']} | | | | |"
            )
            continue
        lines.append(f"| {r['method']} | {r['labels']} ({r['label_fraction']:.0%}) | "
                     f"{r['probe_top1']:.3f} | {r['finetune_top1']:.3f} | {r['end_top1']:.3f} | "
                     f"{r['finetune_top1'] - r['probe_top1']:+.3f} | {r['seconds']:.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    argv, extra = split_at_dashes(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", type=listed(method_name), default=",".join(METHODS))
    parser.add_argument("--fractions", type=listed(fraction), default=FRACTIONS,
                        help="label fractions, each a class-balanced seeded subset")  # fmt: skip
    photo_arguments(parser)
    parser.add_argument("--runs", default="runs/recipes", help="recipes.py's runs (seed 0's)")
    parser.add_argument("--out", default="benchmarks/finetune.md")
    docs_argument(parser, "finetune", default=None)
    args = parser.parse_args(argv)
    if not args.fractions:
        parser.error("--fractions: give at least one label fraction, e.g. 0.01,0.1")
    if not args.methods:
        parser.error(f"--methods: give at least one method, e.g. {','.join(list(METHODS)[:2])}")
    if args.docs is None:
        whole = set(args.methods) == set(METHODS) and args.fractions == listed(fraction)(FRACTIONS)
        args.docs = DOCS.split(",") if whole and not extra else []
    to_docs = docs_writers(parser, args.docs, "finetune")
    jobs = [(method, f) for method in args.methods for f in args.fractions]
    rows = []
    for method, label_fraction in jobs:
        print(f"[{len(rows) + 1}/{len(jobs)}] {method}, {label_fraction:g} of the labels ...",
              file=sys.stderr, flush=True)  # fmt: skip
        rows.append(finetune_run(method, label_fraction, args, extra))
    title = (f"{command_stamp('benchmarks/finetune.py')}: evaluate.py --protocol finetune on each "
             f"method's {args.runs}/<name>/backbone.pt, --dataset {args.dataset} --data_dir "
             f"{args.data_dir} {' '.join(extra)}, one at a time")  # fmt: skip
    publish(table(rows, title), rows, {"title": title, "rows": rows}, Path(args.out).write_text,
            *to_docs)  # fmt: skip


if __name__ == "__main__":
    main()
