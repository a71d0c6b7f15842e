"""Several runs side by side: federated runs (methods x partitions) and centralized runs at equal
total compute, then comparison.csv, comparison.md (three views: every run, by split, by
epoch-equivalent) and comparison.png (kNN top-1 per round).

A comparison file names a base config and a list of runs, each a name, optionally `config:` (a
method's recipe, configs/methods/NAME.yaml, or a list of files) and the options it changes;
`centralized: true` trains the same method with train.py for rounds x local_epochs x fraction_fit
epochs, the epochs-equivalent of the federated runs (the passes over the data their clients make
together), so each federated curve is drawn against a centralized one of equal compute. Flags given on
the command line next to --compare apply to every run.

A comparison file may also name where its tables are published: `publish: {PAGE: [KIND]}` writes
the table of every run (KIND `runs`), the final kNN by method and split (`by-split`) or every
run's kNN at each whole epoch-equivalent (`by-epoch`) between the markers `<!-- STEM table -->`
(`runs`) or `<!-- STEM-KIND table -->` of PAGE (STEM: the file's name without .yaml), headed by
the date, the machine and the command. Only a whole comparison is published; `--compare_only`
reports its subset in the output folder alone.
"""

from __future__ import annotations

import csv
import io
import json
import shlex
import time
from collections import Counter
from dataclasses import fields
from datetime import datetime
from fnmatch import fnmatch
from pathlib import Path

import yaml

from ssl_zoo.config import RunConfig, TrainConfig, make_output_dir, parse_config, write_atomically
from ssl_zoo.errors import UserError
from ssl_zoo.federated.algorithms import build_algorithm
from ssl_zoo.federated.config import FedConfig
from ssl_zoo.federated.run import federate
from ssl_zoo.jobs.train import train
from ssl_zoo.published import require_markers, stamp, write_table

TABLE_KINDS = ("runs", "by-split", "by-epoch")


def read_comparison(path: str, only: str | None = None) -> tuple[str, list[dict], list]:
    """The base config, the runs (those matching `only`) and where the tables are published
    ((page, marker name, kind) triples; none when `only` selects a subset)."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"comparison file not found: {path}")
    spec = yaml.safe_load(file.read_text()) or {}
    runs = spec.get("runs") or []
    if (
        not spec.get("base")
        or not runs
        or not all(isinstance(r, dict) and r.get("name") for r in runs)
    ):
        raise UserError(
            f"{path}: expected 'base: CONFIG' and 'runs:' as a list of {{name: ..., ...}}"
        )
    names = [r["name"] for r in runs]
    if len(set(names)) != len(names):
        raise UserError(f"{path}: run names must be unique")
    if only:
        patterns = [p.strip() for p in only.split(",") if p.strip()]
        runs = [r for r in runs if any(fnmatch(r["name"], p) for p in patterns)]
        if not runs:
            raise UserError(
                f"--compare_only {only} matches none of {path}'s runs: {', '.join(names)}"
            )
    publish = spec.get("publish") or {}
    kinds = {page: [k] if isinstance(k, str) else k for page, k in dict(publish).items()}
    if not all(isinstance(k, list) and set(k) <= set(TABLE_KINDS) for k in kinds.values()):
        raise UserError(f"{path}: expected 'publish: {{PAGE: [{', '.join(TABLE_KINDS)}]}}'")
    tables = [(page, file.stem + ("" if kind == "runs" else f"-{kind}"), kind)
              for page, page_kinds in kinds.items() for kind in page_kinds]  # fmt: skip
    for page, name, _ in tables:
        require_markers(Path(page), name)  # before hours of runs, not after
    return spec["base"], runs, [] if only else tables


def drop_flag(argv: list[str], flag: str) -> list[str]:
    """argv without `flag VALUE` / `flag=VALUE`."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == flag:
            skip = True
        elif not arg.startswith(f"{flag}="):
            out.append(arg)
    return out


def centralized_config(fed, run_dir: Path) -> TrainConfig:
    """train.py with the federation's epochs-equivalent (rounds x local_epochs x fraction_fit, as
    rounds.csv counts it) and, if it has one, the same time budget; the kNN monitor every epoch."""
    shared = {f.name: getattr(fed, f.name) for f in fields(RunConfig)}
    epochs = max(1, round(fed.rounds * fed.local_epochs * fed.fraction_fit))
    cfg = TrainConfig(**{**shared, "output_dir": str(run_dir), "resume": False,
                         "max_epochs": epochs, "knn_every_n_epochs": 1})  # fmt: skip
    cfg.validate()
    return cfg


def centralized_curve(run_dir: Path) -> list[tuple[float, float]]:
    """(epochs, kNN top-1) from a train.py run's metrics.csv."""
    points = []
    with (run_dir / "metrics.csv").open() as f:
        for row in csv.DictReader(f):
            if row.get("val/knn_top1"):
                points.append((float(row["epoch"]), float(row["val/knn_top1"])))
    # The first row is the encoder at initialisation (validated before epoch 0 ends).
    return [(0.0 if i == 0 else epoch + 1, knn) for i, (epoch, knn) in enumerate(points)]


def federated_curve(run_dir: Path) -> list[tuple[float, float]]:
    """(epochs-equivalent, kNN top-1) per round from rounds.csv."""
    with (run_dir / "rounds.csv").open() as f:
        return [(float(r["epochs"]), float(r["knn_top1"])) for r in csv.DictReader(f)]


def reuse_or_run(run, cfg, progress: str) -> dict:
    """A comparison of many runs takes hours: rerunning it with the same --output_dir keeps the
    runs that finished and resumes the one that was cut off, as long as their settings match."""
    run_dir = Path(cfg.output_dir)
    if (run_dir / "config.yaml").exists():
        ignore = ("output_dir", "resume", "wandb_group", "wandb_name")
        saved = yaml.safe_load((run_dir / "config.yaml").read_text())
        # An option added to ssl_zoo after the run was saved counts as unchanged at its default.
        defaults = type(cfg)().as_dict()  # a factory default (a dict option) counts too
        wanted = {k: v for k, v in cfg.as_dict().items()
                  if k not in ignore and (k in saved or v != defaults.get(k))}  # fmt: skip
        if wanted != {k: v for k, v in saved.items() if k not in ignore}:
            raise UserError(
                f"{run_dir} holds a run with other settings; choose another --output_dir"
            )
        if (run_dir / "summary.json").exists():
            print(f"[compare] reusing the finished run in {run_dir}", flush=True)
            return json.loads((run_dir / "summary.json").read_text())
        cfg.resume = (run_dir / progress).exists()
    return run(cfg)


def run_config(base: str, spec: dict, run_dir: Path, common: list[str]):
    """One run's FedConfig: the base, the run's own configs (a method's recipe), its options
    (written to run_dir/overrides.yaml), then the flags given next to --compare."""

    options = {k: v for k, v in spec.items() if k not in ("name", "centralized", "config")}
    own = spec.get("config") or []
    own = [own] if isinstance(own, str) else own
    run_dir.mkdir(parents=True, exist_ok=True)
    overrides = run_dir / "overrides.yaml"
    overrides.write_text(yaml.safe_dump({**options, "output_dir": str(run_dir / "run")}))
    args = ["--config", base, *[a for c in own for a in ("--config", c)],
            "--config", str(overrides), *common]  # fmt: skip
    return parse_config(FedConfig, args, prog="federate.py")


def compare(cfg, argv: list[str]) -> dict:
    start = time.time()
    base, runs, tables = read_comparison(cfg.compare, cfg.compare_only)
    when = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(cfg.output_dir or f"runs/compare-{Path(cfg.compare).stem}-{when}")
    make_output_dir(out)
    # The command line minus --compare and --output_dir: flags that apply to every run.
    common = argv
    for flag in ("--compare", "--compare_only", "--output_dir"):
        common = drop_flag(common, flag)
    rows, curves = [], {}
    for spec in runs:
        name, run_dir = spec["name"], out / spec["name"]
        fed = run_config(base, spec, run_dir, common)
        fed.wandb_group = fed.wandb_group or out.name
        fed.wandb_name = name
        print(f"[compare] {name} ...", flush=True)
        if spec.get("centralized"):
            train_cfg = centralized_config(fed, run_dir / "run")
            summary = reuse_or_run(train, train_cfg, "checkpoints/last.ckpt")
            curve = centralized_curve(run_dir / "run")
            rows.append({"name": name, "kind": "centralized", "method": fed.method, "algorithm": "-", "partition": "-",
                         "rounds": "-", "epochs": summary["epochs"],
                         "knn_top1_init": summary["knn_top1_init"], "knn_top1": summary["knn_top1"],
                         "knn_top1_best": max(k for _, k in curve[1:]), "seconds": summary["seconds"],
                         "seconds_per_round": "-", "bytes_up": 0, "bytes_down": 0})  # fmt: skip
        else:
            summary = reuse_or_run(federate, fed, "fed_state.pt")
            curve = federated_curve(run_dir / "run")
            rows.append({"name": name, "kind": f"federated ({fed.engine})", "method": fed.method,
                         "algorithm": "+".join(build_algorithm(fed).names),
                         "partition": split_name(fed), "rounds": summary["rounds"],
                         "epochs": summary["epochs_equivalent"],
                         "knn_top1_init": summary["knn_top1_init"], "knn_top1": summary["knn_top1"],
                         "knn_top1_best": summary["knn_top1_best"], "seconds": summary["seconds"],
                         "seconds_per_round": summary["seconds_per_round"],
                         "bytes_up": summary["bytes_up"], "bytes_down": summary["bytes_down"]})  # fmt: skip
        curves[name] = curve
    header = stamp(shlex.join(["python", "federate.py", *argv]))
    views = write_reports(out, rows, curves, header)
    for page, name, kind in tables:
        write_table(Path(page), name, views[kind])
        print(f"[compare] wrote the {name} table into {page}", flush=True)
    return {
        "compare": cfg.compare,
        "runs": rows,
        "run_dir": str(out),
        "seconds": round(time.time() - start, 1),
    }


def split_name(fed) -> str:
    if fed.partition == "dirichlet":
        return f"Dirichlet({fed.alpha:g})"
    if fed.partition == "shards":
        return f"{fed.classes_per_client}-class shards"
    return fed.partition.upper()  # IID


def centralized_pairs(rows: list[dict]) -> dict[str, dict]:
    """Each federated run's name -> the centralized run of its method at equal epochs-equivalent
    (a comparison may hold centralized runs of one method at several budgets); runs without one
    are left out, so no gap is ever read against a run of other compute."""
    central = {(r["method"], round(r["epochs"], 2)): r for r in rows if r["kind"] == "centralized"}
    pairs = {r["name"]: central.get((r["method"], round(r["epochs"], 2))) for r in rows}
    return {name: c for name, c in pairs.items() if c is not None and c["name"] != name}


def by_split(rows: list[dict], header: str) -> str:
    """Final kNN top-1 with one row per method and algorithm and one column per split, beside
    the centralized run of equal compute and, where there is an IID run, its gap to it (a
    comparison without centralized runs, such as the algorithms', has no such columns)."""
    splits = list(dict.fromkeys(r["partition"] for r in rows if r["kind"] != "centralized"))
    pairs = centralized_pairs(rows)
    cells: dict[tuple[str, str], dict] = {}
    for r in rows:
        if r["kind"] != "centralized":
            key = (r["method"], r["algorithm"])
            if r["partition"] in cells.get(key, {}):  # runs differing otherwise: a row of its own
                key = (r["method"], f"{r['algorithm']} ({r['name']})")
            cells.setdefault(key, {})[r["partition"]] = r
    central = any(r["kind"] == "centralized" for r in rows)
    gap = "IID" in splits and bool(pairs)
    columns = ["method", "algorithm", "kNN init", *splits]
    columns += ["centralized"] * central + ["IID - centralized"] * gap
    intro = "Final kNN top-1 of each federated run, by split"
    intro += ", beside the centralized run of equal compute." if central else "."
    lines = [header, "", intro, "", "| " + " | ".join(columns) + " |",
             "| --- " * len(columns) + "|"]  # fmt: skip
    for (method, algorithm), by in cells.items():
        first = by.get("IID") or next(iter(by.values()))
        paired = pairs.get(first["name"])
        row = [method, algorithm, f"{first['knn_top1_init']:.3f}"]
        row += [f"{by[s]['knn_top1']:.3f}" if s in by else "" for s in splits]
        if central:
            row.append(f"{paired['knn_top1']:.3f}" if paired else "")
        if gap:
            iid = by.get("IID")
            ok = iid and paired
            row.append(f"{100 * (iid['knn_top1'] - paired['knn_top1']):+.1f}" if ok else "")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def by_epoch(rows: list[dict], curves: dict, header: str) -> str:
    """Every run's kNN top-1 at each whole epoch-equivalent of compute, and its final kNN's gap
    to its method's centralized run of equal compute: how fast each run learns."""
    last = max(round(r["epochs"]) for r in rows)
    pairs = centralized_pairs(rows)
    lines = [header, "", "kNN top-1 after each epoch-equivalent of compute.", "",
             "| run | " + " | ".join(str(e) for e in range(1, last + 1)) + " | to centralized |",
             "| --- " * (last + 2) + "|"]  # fmt: skip
    for r in rows:
        at = {round(x, 6): knn for x, knn in curves[r["name"]]}
        points = [f"{at[e]:.3f}" if e in at else "" for e in range(1, last + 1)]
        gap = ""
        if r["name"] in pairs:
            gap = f"{100 * (r['knn_top1'] - pairs[r['name']]['knn_top1']):+.1f}"
        lines.append(f"| {r['name']} | " + " | ".join(points) + f" | {gap} |")
    return "\n".join(lines) + "\n"


def write_reports(out: Path, rows: list[dict], curves: dict, header: str) -> dict[str, str]:
    """comparison.csv, .md, .json and .png in `out`; the markdown of each view (`runs`, `by-split`,
    `by-epoch`). comparison.md holds all three, so a subset run with --compare_only (never
    published) still has its final kNN by split and its kNN per epoch-equivalent to read."""
    keys = list(rows[0])
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(out / "comparison.csv", table.getvalue())
    lines = [f"{header}. Compute is in epochs-equivalent: "
             "a federated round adds each trained client's local epochs x its share of the images; "
             "a centralized run of as many epochs trains on as many images.", "",
             "| run | kind | method | algorithm | partition | rounds | epochs-equivalent | kNN init | kNN best | kNN final | s | s/round | MB up | MB down |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['kind']} | {r['method']} | {r['algorithm']} | {r['partition']} | {r['rounds']} | "
            f"{r['epochs']:.2f} | {r['knn_top1_init']:.3f} | {r['knn_top1_best']:.3f} | "
            f"{r['knn_top1']:.3f} | {r['seconds']} | {r['seconds_per_round']} | "
            f"{r['bytes_up'] / 1e6:.0f} | {r['bytes_down'] / 1e6:.0f} |"
        )
    views = {"runs": "\n".join(lines) + "\n", "by-split": by_split(rows, header),
             "by-epoch": by_epoch(rows, curves, header)}  # fmt: skip
    write_atomically(out / "comparison.md", "\n".join(views.values()))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Several methods: one hue per method, its runs told apart by shade and marker, so a
    # federated curve is read against its own centralized one; centralized runs are dashed.
    method = {r["name"]: r["method"] for r in rows}
    centralized = {r["name"] for r in rows if r["kind"] == "centralized"}
    methods = list(dict.fromkeys(method.values()))
    hues = ["Blues", "Oranges", "Greens", "Purples", "Reds", "Greys"]
    count = Counter(method.values())
    by_method, seen = len(methods) > 1, {}
    # Past a handful of runs the legend goes beside the axes, where it hides no curve.
    outside = len(curves) > 6
    fig, ax = plt.subplots(figsize=(8.5 if outside else 6, 4), dpi=100)
    for name, curve in curves.items():
        xs, ys = zip(*curve, strict=True)
        m = method[name]
        position = seen[m] = seen.get(m, -1) + 1
        shade = 0.95 - 0.55 * position / max(1, count[m] - 1)  # dark to light, in file order
        cmap = plt.get_cmap(hues[methods.index(m) % len(hues)])
        style = {"color": cmap(shade), "marker": "os^Dv<>pXh"[position % 10]} if by_method else {}
        ax.plot(xs, ys, **{"marker": "o", **style}, markersize=3, label=name,
                linestyle="--" if name in centralized else "-")  # fmt: skip
    ax.set_xlabel("epochs-equivalent of compute")
    ax.set_ylabel("kNN top-1")
    ax.legend(fontsize=7, **({"loc": "upper left", "bbox_to_anchor": (1.01, 1)} if outside else {}))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "comparison.png")
    plt.close(fig)
    write_atomically(
        out / "comparison.json", json.dumps({"rows": rows, "curves": curves}, indent=2)
    )
    return views
