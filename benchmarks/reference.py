"""SimCLR as ssl_zoo trains it against lightly's plain SimCLR recipe, side by side on the same
photos, backbone and wall-clock budgets: what the project's recipe and pipeline are worth.

- ssl_zoo:   `train.py --config configs/methods/simclr.yaml --max_time M` (recipes.py's run);
- reference: lightly's SimCLR example as a user would adapt it to these photos: the backbone named
             by --backbone as timm/torchvision build it, SimCLRProjectionHead(dim, 512, 128),
             NTXentLoss() (temperature 0.5), SimCLRTransform(input_size=<image size>,
             gaussian_blur=0.0) (lightly's CIFAR-10 benchmark drops the blur at 32 px) in
             DataLoader workers, SGD lr 0.06, momentum 0.9, weight decay 5e-4 (lightly's benchmark
             optimiser), batch 256, no schedule, stopped when M minutes of training are spent.

Both final backbones are scored by the same `evaluate.py --protocol knn` on the held-out photos.
Machines differ by 2x in steps per minute; this side-by-side ratio is the figure that holds on
any of them (issue #21's target: ssl_zoo >= reference + 0.05 kNN at 4 and at 8 minutes).

    python benchmarks/reference.py                   # 4 and 8 minutes on ../shared/data/cifar10-12k
    python benchmarks/reference.py --minutes 2 --dataset synthetic --data_dir ''

Finished runs in --runs are reused (delete a run's folder to redo it). Writes the table to --out
and between the `reference` markers of the --docs pages (by default benchmarks/reference.md and
docs/methods.md, only from a run of the default budgets, data and settings), and ends with one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from torch.utils.data import DataLoader
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cli import (  # noqa: E402
    at_defaults,
    at_least,
    command_stamp,
    listed,
    output_arguments,
    photo_arguments,
    positive,
    publish,
    table_writers,
)
from benchmarks.recipes import evaluate_backbone, train_method  # noqa: E402
from ssl_zoo.backbones import BackboneSpec, build_backbone, save_backbone  # noqa: E402
from ssl_zoo.data import DATASETS, Transformed, collate_views, load_splits  # noqa: E402

DOCS = "docs/methods.md"
TARGET = 0.05  # kNN points ssl_zoo must lead the reference by (issue #21)


def train_reference(run_dir: Path, minutes: float, args: argparse.Namespace) -> None:
    """The reference recipe for `minutes` of wall clock (data loading included, as for train.py's
    --max_time): writes run_dir/backbone.pt and run_dir/summary.json."""
    torch.manual_seed(args.seed)
    splits = load_splits(args.dataset, args.data_dir or None, None, args.train_samples,
                         args.test_samples, args.seed)  # fmt: skip
    spec = BackboneSpec(args.backbone)
    backbone, dim = build_backbone(spec)
    head = SimCLRProjectionHead(dim, 512, 128)
    criterion = NTXentLoss()
    # The dataset's normalisation (ImageNet's for photo folders, as lightly's default), which
    # evaluate.py applies to every backbone it scores on that dataset.
    normalize = DATASETS[args.dataset].normalize
    transform = SimCLRTransform(
        input_size=splits.image_size, gaussian_blur=0.0, normalize=normalize
    )
    loader = DataLoader(Transformed(splits.train, transform), batch_size=args.batch_size,
                        shuffle=True, drop_last=True, num_workers=args.num_workers,
                        collate_fn=collate_views, persistent_workers=args.num_workers > 0)  # fmt: skip
    if len(loader) == 0:
        raise SystemExit(f"reference: fewer training images than one batch of {args.batch_size}")
    params = [*backbone.parameters(), *head.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.06, momentum=0.9, weight_decay=5e-4)
    backbone.train()
    head.train()
    budget, steps, epochs, start = minutes * 60, 0, 0, time.perf_counter()
    with tqdm(
        desc=f"reference, {minutes:g} min", unit="step", file=sys.stderr, mininterval=10
    ) as bar:
        while time.perf_counter() - start < budget:
            for (x0, x1), _ in loader:
                loss = criterion(head(backbone(x0)), head(backbone(x1)))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
                if time.perf_counter() - start >= budget:
                    break
            epochs += 1
    seconds = time.perf_counter() - start
    save_backbone(run_dir / "backbone.pt", backbone, spec, image_size=splits.image_size,
                  normalize=normalize)  # fmt: skip
    summary = dict(steps=steps, epochs=epochs, seconds=round(seconds, 1), **settings(args, minutes))
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


def settings(args: argparse.Namespace, minutes: float) -> dict:
    keys = ("dataset", "data_dir", "backbone", "seed", "batch_size", "num_workers",
            "train_samples", "test_samples")  # fmt: skip
    return {"minutes": minutes, **{k: getattr(args, k) for k in keys}}


def reference_run(minutes: float, args: argparse.Namespace) -> dict:
    """The reference's run of one budget (trained in a process of its own, so that ssl_zoo's
    process-wide settings never touch it; reused when finished with the same settings)."""
    seed = f"-seed{args.seed}" if args.seed else ""
    run_dir = Path(args.runs) / f"reference-{minutes:g}min{seed}"
    done = run_dir / "summary.json"
    if done.exists():
        saved = json.loads(done.read_text())
        differing = [k for k, v in settings(args, minutes).items() if saved.get(k) != v]
        if differing:
            return {"error": f"{run_dir} holds a run with other settings ({', '.join(differing)}); "
                             "delete it or pass --runs DIR"}  # fmt: skip
        print(f"reference, {minutes:g} min: finished run found in {run_dir}", file=sys.stderr)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", str(run_dir),
                               "--child_minutes", str(minutes)], cwd=ROOT)  # fmt: skip
        if proc.returncode != 0 or not done.exists():
            return {"error": f"the reference's training failed (exit {proc.returncode})"}
    return {**json.loads(done.read_text()), "run_dir": str(run_dir)}


def side_by_side(minutes: float, args: argparse.Namespace) -> list[dict]:
    """Two rows for one budget: the reference's and ssl_zoo's, each with its kNN top-1."""
    limits = ["--train_samples", str(args.train_samples)] if args.train_samples else []
    limits += ["--test_samples", str(args.test_samples)] if args.test_samples else []
    extra = [*limits, "--batch_size", str(args.batch_size), "--num_workers", str(args.num_workers)]
    zoo_args = argparse.Namespace(**{**vars(args), "minutes": minutes,
                                     "runs": str(Path(args.runs) / f"ssl_zoo-{minutes:g}min")})  # fmt: skip
    rows = []
    for pipeline in ("reference", "ssl_zoo"):
        print(f"{pipeline}, {minutes:g} min ...", file=sys.stderr, flush=True)
        if pipeline == "reference":
            run = reference_run(minutes, args)
        else:
            run = train_method("simclr", args.seed, zoo_args, extra)
        row = {"pipeline": pipeline, "minutes": minutes}
        if "error" not in run:
            knn = evaluate_backbone(Path(run["run_dir"]), "knn", args.seed, args, extra, pipeline)
            run = {**run, **({"knn_top1": knn["top1"]} if "top1" in knn else knn)}
        kept = ("steps", "epochs", "knn_top1", "error")
        rows.append({**row, **{k: run[k] for k in kept if k in run}})
    return rows


def table(rows: list[dict], title: str) -> str:
    lines = [title, "", "| budget | pipeline | steps | epochs | kNN top-1 | ssl_zoo - reference |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for reference, zoo in zip(rows[::2], rows[1::2], strict=True):
        for row in (reference, zoo):
            if "error" in row:
                cells = [f"failed: {row['error']}", "", "", ""]
            else:
                cells = [f"{row['steps']}", f"{row['epochs']}", f"{row['knn_top1']:.3f}", ""]
            if row is zoo and "error" not in reference and "error" not in zoo:
                lead = zoo["knn_top1"] - reference["knn_top1"]
                verdict = "reached" if lead >= TARGET else "not reached"
                cells[3] = f"{lead:+.3f} (target +{TARGET:.2f}: {verdict})"
            lines.append(
                f"| {row['minutes']:g} min | {row['pipeline']} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=listed(positive), default="4,8",
                        help="wall-clock budgets, each trained by both pipelines")  # fmt: skip
    parser.add_argument("--backbone", default="timm:resnet18")
    photo_arguments(parser)
    parser.add_argument("--train_samples", type=at_least(1), default=None)
    parser.add_argument("--test_samples", type=at_least(1), default=None)
    parser.add_argument("--batch_size", type=at_least(2), default=256)
    parser.add_argument("--num_workers", type=at_least(0), default=2)
    parser.add_argument("--seed", type=at_least(0), default=0)
    parser.add_argument("--runs", default="runs/reference")
    output_arguments(parser, "reference")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child_minutes", type=positive, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        train_reference(Path(args.child), args.child_minutes, args)
        return
    if not args.minutes:
        parser.error("--minutes: give at least one budget")
    whole = at_defaults(parser, args, "minutes", "backbone", "dataset", "data_dir", "train_samples",
                        "test_samples", "batch_size", "num_workers", "seed")  # fmt: skip
    writers = table_writers(parser, args, "reference", whole, "benchmarks/reference.md", DOCS)
    rows = [row for minutes in args.minutes for row in side_by_side(minutes, args)]
    title = (f"{command_stamp('benchmarks/reference.py')}: SimCLR, --backbone {args.backbone} on "
             f"--dataset {args.dataset} --data_dir {args.data_dir}, batch {args.batch_size}, seed "
             f"{args.seed}, one run at a time; kNN top-1: evaluate.py --protocol knn on the final "
             "backbone")  # fmt: skip
    publish(table(rows, title), rows, {"title": title, "rows": rows}, *writers)


if __name__ == "__main__":
    main()
