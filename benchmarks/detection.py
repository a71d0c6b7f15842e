"""Detection transfer on the street scenes: an SSL-pretrained backbone against random
initialisation, each fine-tuned as Faster R-CNN on the same fraction of labeled scenes with the
same budget (epochs over the labeled images), and both against all labels.

    python benchmarks/detection.py                        # pretrain, then 10% and 100% of the labels
    python benchmarks/detection.py --fractions 0.1 --quick

The pretraining is `train.py --config configs/detection/pretrain-scenes.yaml`, each detection run
`evaluate.py --config configs/detection/scenes.yaml`, each in a process of its own; finished runs
(summary.json, results.json) under --runs are reused. Writes the markdown table to --out and
between the `detection` markers of the --docs pages (by default benchmarks/detection.md
and docs/detection.md, only from a run at the default fractions without --quick), and ends with
one JSON line of all rows.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cli import (  # noqa: E402
    at_defaults,
    command_stamp,
    listed,
    output_arguments,
    publish,
    run_once,
    table_writers,
)
from benchmarks.cli import fraction as label_fraction  # noqa: E402

# A run of seconds that exercises every step (tests, a first look).
QUICK_PRETRAIN = ["--train_samples", "32", "--test_samples", "16", "--image_size", "32",
                  "--backbone", "timm:resnet10t", "--batch_size", "16", "--max_epochs", "1",
                  "--knn_k", "5", "--num_workers", "0"]  # fmt: skip
QUICK_DETECTION = ["--train_samples", "16", "--test_samples", "8", "--det_size", "64",
                   "--det_epochs", "1", "--num_workers", "0"]  # fmt: skip


# The pages whose `detection` table this benchmark writes (tests/test_benchmarks.py checks them).
DOCS = "docs/detection.md"


def pretrained_args(pretrain: Path) -> dict:
    """The backbone_args the pretraining built its backbone with (its run's config.yaml)."""
    return yaml.safe_load((pretrain / "config.yaml").read_text()).get("backbone_args") or {}


def table(rows: list[dict], title: str) -> str:
    lines = [title, "", "| backbone | labeled scenes | mAP@.5 | mAP@[.5:.95] | AP car | AP person "
             "| AP sign | GFLOPs | s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['init']} | {r['label_fraction']:.0%} | failed: {r['error']} "
                         "| | | | | | |")  # fmt: skip
            continue
        ap = r["map_per_class"]
        lines.append(f"| {r['init']} {r['backbone']} | {r['labeled_images']} ({r['label_fraction']:.0%}) | "
                     f"{r['map_50']:.3f} | {r['map']:.3f} | {ap['car']:.3f} | {ap['person']:.3f} | "
                     f"{ap['sign']:.3f} | {r['gflops']:.0f} | {r['seconds']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fractions", type=listed(label_fraction), default="0.1,1.0",
                        help="label fractions to fine-tune on")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="tiny sizes: seconds, not hours")
    parser.add_argument("--runs", default="runs/bench-detection")
    output_arguments(parser, "detection")
    args = parser.parse_args()
    whole = at_defaults(parser, args, "quick", "fractions")
    writers = table_writers(parser, args, "detection", whole, "benchmarks/detection.md", DOCS)
    fractions = args.fractions
    runs = Path(args.runs)
    pretrain = runs / "pretrain"
    summary = run_once("train.py", ["--config", "configs/detection/pretrain-scenes.yaml",
                                    *(QUICK_PRETRAIN if args.quick else []),
                                    "--output_dir", str(pretrain)], pretrain / "summary.json",
                       "[pretrain] SimCLR on the generated scenes")  # fmt: skip
    if "error" in summary:
        raise SystemExit(f"error: pretraining failed: {summary['error']}")
    backbone = summary["backbone"]
    # The random backbone is built as the pretrained one was (evaluate.py checks the SSL row's
    # against its checkpoint): a stride-16 last stage alone costs a detector 1.5x the FLOPs.
    spec = ["--backbone", backbone, "--backbone_args", json.dumps(pretrained_args(pretrain))]
    rows = []
    for fraction in fractions:
        for name, checkpoint in (("ssl", str(pretrain / "backbone.pt")), ("random", "random")):
            out = runs / f"{name}-{fraction:g}"
            found = run_once("evaluate.py", ["--checkpoint", checkpoint, *spec,
                                             "--config", "configs/detection/scenes.yaml",
                                             "--label_fraction", str(fraction),
                                             *(QUICK_DETECTION if args.quick else []),
                                             "--output_dir", str(out)], out / "results.json",
                             f"[detection] {name} backbone, {fraction:g} of the labels")  # fmt: skip
            rows.append({**found, "init": name, "backbone": backbone, "label_fraction": fraction})
    title = (f"{command_stamp('benchmarks/detection.py')}; pretraining: kNN "
             f"{summary['knn_top1_init']:.3f} -> {summary['knn_top1']:.3f} (largest object), "
             f"{summary['seconds']} s")  # fmt: skip
    publish(table(rows, title), rows, {"title": title, "pretrain": summary, "rows": rows},
            *writers)  # fmt: skip


if __name__ == "__main__":
    main()
