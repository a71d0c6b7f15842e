"""The edge-cost table: what each SSL method costs to learn, and which learns most per joule.

Every method trains on one wall-clock budget with its recipe (benchmarks/recipes.py runs each
train.py), on the default backbone and, for the methods an edge device would pick from, on light
backbones too. From each run's summary and metrics.csv (which logs the FLOPs and energy spent so
far beside every kNN figure) it tabulates kNN reached, GFLOPs, energy and how it was obtained,
seconds, peak memory, kNN points gained per Wh, and the cost of first reaching --target (the FLOPs
and energy at the first monitor point at or above it), and plots kNN against energy.

    python benchmarks/cost.py                      # 10 methods on resnet18 + 4 on 2 light backbones, 8 min each
    python benchmarks/cost.py --minutes 3 --methods simclr,mocov2,simsiam,barlowtwins

Finished runs under --runs with the same settings are reused (recipes.py's rule). Writes the
markdown table to --out and between the `cost` markers of the --docs pages, the plot to --plot
(by default benchmarks/cost.md, docs/cost.md and docs/images/cost.png, only from a run
of the default methods, backbones and photos), and ends with one JSON line; exits 1 if a run
failed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cli import (  # noqa: E402
    at_defaults,
    at_least,
    command_stamp,
    listed,
    method_name,
    output_arguments,
    publish,
    run_arguments,
    split_at_dashes,
    table_writers,
)
from benchmarks.recipes import train_method  # noqa: E402
from ssl_zoo.loggers import read_csv_rows  # noqa: E402
from ssl_zoo.methods import METHODS  # noqa: E402

# The four methods of Famá et al.'s edge-energy benchmark, which found SimCLR the cheapest.
EDGE_METHODS = "simclr,mocov2,simsiam,barlowtwins"
EDGE_BACKBONES = "timm:resnet10t,timm:mobilenetv3_small_100"
# The pages whose `cost` table this benchmark writes (tests/test_benchmarks.py checks them).
DOCS = "docs/cost.md"
PLOT = "docs/images/cost.png"


def monitor_curve(run_dir: Path) -> list[dict]:
    """kNN top-1 with the GFLOPs and kWh spent when it was measured, one row per monitor point."""
    rows = read_csv_rows(run_dir / "metrics.csv")
    return [
        {
            "knn": float(r["val/knn_top1"]),
            "gflops": float(r["cost/gflops"]),
            "kwh": float(r["cost/energy_kwh"]) if r.get("cost/energy_kwh") else None,
        }
        for r in rows
        if r.get("val/knn_top1") and r.get("cost/gflops")
    ]


def cost_row(backbone: str, summary: dict, target: float) -> dict:
    row = {"backbone": backbone, **summary}
    if "error" in summary:
        return row
    curve = monitor_curve(Path(summary["run_dir"]))
    first = next((p for p in curve if p["knn"] >= target), None)
    row["curve"] = curve
    row["target_gflops"] = first and first["gflops"]
    row["target_kwh"] = first and first["kwh"]
    kwh = summary.get("energy_kwh")
    gain = summary["knn_top1"] - summary["knn_top1_init"]
    row["knn_points_per_wh"] = round(100 * gain / (kwh * 1000), 2) if kwh else None
    return row


def fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def table(rows: list[dict], title: str, target: float) -> str:
    lines = [title, "",
             f"| backbone | method | kNN init | kNN final | GFLOPs | energy Wh | kNN points per Wh | "
             f"GFLOPs to kNN {target:.2f} | Wh to kNN {target:.2f} | s | peak RSS MB |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['backbone']} | {r['method']} | failed: {r['error']} |" + " |" * 9)
            continue
        wh = None if r["energy_kwh"] is None else 1000 * r["energy_kwh"]
        target_wh = None if r["target_kwh"] is None else 1000 * r["target_kwh"]
        unreached = "not reached" if r["target_gflops"] is None else "-"  # or no energy tracked
        lines.append(
            f"| {r['backbone']} | {r['method']} | {r['knn_top1_init']:.3f} | {r['knn_top1']:.3f} | "
            f"{r['gflops']:,.0f} | {fmt(wh, '.1f')} | {fmt(r['knn_points_per_wh'], '.2f')} | "
            f"{fmt(r['target_gflops'], ',.0f', unreached)} | {fmt(target_wh, '.1f', unreached)} | "
            f"{r['seconds']} | {r['peak_rss_mb']:.0f} |"
        )
    methods = sorted({r["energy_method"] for r in rows if "error" not in r})
    if methods:
        lines += ["", f"Energy: codecarbon's offline tracker, {' / '.join(methods)} (estimated = "
                  "the CPU's TDP scaled by its load, RAM from its size: on such a machine energy "
                  "follows seconds)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backbones = list(dict.fromkeys(r["backbone"] for r in rows))
    fig, axes = plt.subplots(1, len(backbones), figsize=(5.5 * len(backbones), 4.2), squeeze=False)
    for ax, backbone in zip(axes[0], backbones, strict=True):
        for r in rows:
            if r["backbone"] != backbone or "error" in r:
                continue
            points = [p for p in r["curve"] if p["kwh"] is not None]
            ax.plot([1000 * p["kwh"] for p in points], [p["knn"] for p in points],
                    marker=".", label=r["method"])  # fmt: skip
        ax.axhline(target, color="grey", lw=0.8, ls="--")
        ax.set(title=backbone, xlabel="energy spent (Wh)", ylabel="kNN top-1")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    argv, extra = split_at_dashes(sys.argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    methods = listed(method_name)
    parser.add_argument("--methods", type=methods, default=",".join(METHODS), help="on --backbone")
    parser.add_argument("--backbone", default="timm:resnet18")
    parser.add_argument("--edge_methods", type=methods, default=EDGE_METHODS,
                        help="on each --edge_backbones")  # fmt: skip
    parser.add_argument("--edge_backbones", type=listed(str), default=EDGE_BACKBONES,
                        help="'' for none")  # fmt: skip
    parser.add_argument("--target", type=at_least(0, float), default=0.40,
                        help="the kNN top-1 to reach")  # fmt: skip
    run_arguments(parser, runs="runs/cost")
    parser.add_argument("--plot", default=None, help="the picture's file ('' for none)")
    output_arguments(parser, "cost")
    args = parser.parse_args(argv)
    whole = not extra and at_defaults(parser, args, "methods", "backbone", "edge_methods",
                                      "edge_backbones", "target", "dataset", "data_dir")  # fmt: skip
    writers = table_writers(parser, args, "cost", whole, "benchmarks/cost.md", DOCS)
    if args.plot is None:  # the published picture, like its table, only from a whole run
        args.plot = PLOT if whole else ""
    if args.plot:
        writers.append(lambda _: plot(rows, Path(args.plot), args.target))
    plan = [(args.backbone, m) for m in args.methods]
    plan += [(b, m) for b in args.edge_backbones for m in args.edge_methods]
    rows = []
    for i, (backbone, method) in enumerate(plan, 1):
        print(f"[{i}/{len(plan)}] {method} on {backbone} ...", file=sys.stderr, flush=True)
        runs = Path(args.runs) / backbone.replace(":", "-")
        settings = argparse.Namespace(**{**vars(args), "backbone": backbone, "runs": str(runs)})
        # The recipes' backbone_args (output stride, pooling) are for timm's ResNets.
        fits = backbone.startswith("timm:resnet")
        run_extra = extra if fits else ["--backbone_args", "{}", *extra]
        rows.append(cost_row(backbone, train_method(method, 0, settings, run_extra), args.target))
    title = (f"{command_stamp('benchmarks/cost.py')}: each method's configs/methods/<name>.yaml "
             f"on --dataset {args.dataset} --data_dir {args.data_dir} --max_time {args.minutes:g} "
             f"{' '.join(extra)}")  # fmt: skip
    summary = {"title": title, "target": args.target,
               "rows": [{k: v for k, v in r.items() if k != "curve"} for r in rows]}  # fmt: skip
    publish(table(rows, title, args.target), rows, summary, *writers)


if __name__ == "__main__":
    main()
