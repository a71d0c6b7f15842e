"""Which images to label, and learning from the rest: label selection rules against random picks,
on the SimCLR recipe's backbone and on a random-init backbone of its architecture.

    python benchmarks/label_efficiency.py          # cifar10-12k: the table and the picture
    python benchmarks/label_efficiency.py --budgets 10,100 --finetune_budgets '' --backbones simclr

Three parts, each resumable (every row is kept in --runs/rows.jsonl and not measured again):
1. linear: for each backbone, budget (--budgets labels) and rule, the rule's selection
   (ssl_zoo/evaluation/selection.py, as evaluate.py --labels N --select RULE makes it) and a
   linear probe on those labels alone; random and balanced with --draws seeds, the others with
   seed 0. Features are computed once per backbone, as evaluate.py computes them.
2. finetune: at --finetune_budgets, `evaluate.py --protocol finetune --labels N --select RULE
   --self_train` per backbone of --finetune_backbones (by default the SimCLR one: a run takes
   about 5.5 minutes on 2 cores, and selection on random-init features is no better than
   random picks in part 1), rule and draw: fine-tuning (LP-FT, WiSE-FT) and, from the same
   run, self-training on the unlabeled rest (the teacher is that fine-tuned model).
3. federated: a federated SimCLR on --clients clients (IID and Dirichlet(0.1), federate.py with
   configs/federated/cifar10.yaml and the SimCLR recipe, trained here if its run is absent);
   on each federated encoder, every rule selects centrally and per client
   (--federated_selection), beside random, at --federated_budgets; linear probe as in part 1.

balanced (a random fraction of each class) reads the labels before choosing and stands as an
oracle row; every other rule reads none. Writes the table to --out and between the
`label-efficiency` markers of docs/evaluation.md, and the picture to --plot (by default
benchmarks/label_efficiency.md, that page and docs/images/label-efficiency.png, only for a run
as wide as the published one), and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cli import (  # noqa: E402
    at_defaults,
    at_least,
    command_stamp,
    listed,
    output_arguments,
    photo_arguments,
    publish,
    relative,
    table_writers,
)
from benchmarks.recipes import last_json  # noqa: E402

DOCS = "docs/evaluation.md"
PLOT = "docs/images/label-efficiency.png"
BUDGETS = "10,20,50,100,500"
RULES = "random,typiclust,probcover,kcenter,balanced"
DRAWN = ("random", "balanced")  # rules whose picks are a draw: repeated over --draws seeds
RECIPE_ARGS = {"output_stride": 16, "global_pool": "avgmax"}  # the 32-px recipes' backbone


def backbone_checkpoints(args) -> dict[str, str]:
    return {name: "random" if name == "random" else str(Path(args.recipes) / name / "backbone.pt")
            for name in args.backbones}  # fmt: skip


def eval_config(checkpoint: str, args, **extra):
    from ssl_zoo.jobs.evaluate import EvalConfig

    random = checkpoint == "random"
    cfg = EvalConfig(checkpoint=checkpoint, protocol="linear", dataset=args.dataset,
                     data_dir=args.data_dir, backbone="timm:resnet18" if random else None,
                     backbone_args=RECIPE_ARGS if random else None, plot=False,
                     track_energy=False, num_workers=2, **extra)  # fmt: skip
    cfg.validate()
    return cfg


class Rows:
    """rows.jsonl: every measured row, so a killed benchmark resumes where it stopped."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = (
            [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
        )

    def get(self, key: dict) -> dict | None:
        return next((r for r in self.rows if all(r.get(k) == v for k, v in key.items())), None)

    def add(self, row: dict) -> dict:
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        return row


def features_of(checkpoint: str, args) -> dict:
    """Train and test features of the pool, as evaluate.py computes them."""
    import torch

    from ssl_zoo.config import inference_device
    from ssl_zoo.data import DATASETS, Transformed, image_digests, image_ids, load_splits
    from ssl_zoo.evaluation.bench import extract_features
    from ssl_zoo.jobs.evaluate import load_encoder
    from ssl_zoo.views import eval_transform

    cfg = eval_config(checkpoint, args)
    torch.manual_seed(0)
    model, _, meta = load_encoder(cfg)
    splits = load_splits(cfg.dataset, cfg.data_dir, meta.get("image_size"), args.train_samples,
                         args.test_samples, 0)  # fmt: skip
    transform = eval_transform(splits.image_size, DATASETS[cfg.dataset].normalize)
    device = inference_device("auto")
    train_x, train_y = extract_features(
        model, Transformed(splits.bank, transform), cfg, device, "train"
    )
    test_x, test_y = extract_features(
        model, Transformed(splits.test, transform), cfg, device, "test"
    )
    return {"cfg": cfg, "train_x": train_x, "train_y": train_y, "test_x": test_x,
            "test_y": test_y, "ids": image_ids(splits.bank, cfg.data_dir),
            "digests": image_digests(splits.bank),
            "classes": splits.num_classes}  # fmt: skip


def jobs(budgets: list[int], rules: list[str], draws: list[int]) -> list[tuple[int, str, int]]:
    """(budget, rule, seed): random and balanced once per draw, the other rules with seed 0."""
    return [(b, r, s) for b in budgets for r in rules for s in (draws if r in DRAWN else [0])]


def linear_row(features, budget: int, rule: str, seed: int, out: Path,
               federated: str | None = None) -> dict:  # fmt: skip
    """One selection (written to out/selection.json) and the linear probe on its labels;
    `features()` gives the pool's (computed once)."""
    feats = features()
    from ssl_zoo.evaluation.knn import topk_accuracy
    from ssl_zoo.evaluation.linear import train_linear_probe
    from ssl_zoo.evaluation.selection import Pool, check_budget, choose_labeled

    cfg = feats["cfg"]
    choice = SimpleNamespace(labels=budget, label_fraction=cfg.label_fraction, select=rule,
                             selection=None, federated_selection=federated, seed=seed,
                             dataset=cfg.dataset, data_dir=cfg.data_dir, plot=False)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    check_budget(choice, feats["ids"], feats["train_y"].numpy())
    pool = Pool(feats["ids"], feats["digests"], feats["train_x"], feats["train_y"].numpy(),
                feats["classes"])  # fmt: skip
    indices, record = choose_labeled(choice, pool, cfg.checkpoint, out)
    x, y = feats["train_x"][indices], feats["train_y"][indices]
    classifier, mean, std = train_linear_probe(x, y, feats["classes"], cfg.linear_epochs, seed=seed)
    top1, _ = topk_accuracy(classifier((feats["test_x"] - mean) / std).detach(), feats["test_y"])
    return {"top1": round(top1, 4), "selection_seconds": record["seconds"],
            "classes_labeled": int(y.unique().numel())}  # fmt: skip


def finetune_row(checkpoint: str, budget: int, rule: str, seed: int, out: Path, args) -> dict:
    random = checkpoint == "random"
    command = ["evaluate.py", "--checkpoint", checkpoint, "--protocol", "finetune",
               "--dataset", args.dataset, "--data_dir", args.data_dir, "--labels", str(budget),
               "--select", rule, "--self_train", "--seed", str(seed), "--plot", "false",
               "--track_energy", "false", "--output_dir", str(out), *limits(args),
               *(["--backbone", "timm:resnet18", "--backbone_args", json.dumps(RECIPE_ARGS)]
                 if random else [])]  # fmt: skip
    found = last_json(command, f"{rule} {budget}")
    if "error" in found:
        return found
    tuned = found["results"]["finetune"]
    student = tuned["self_train"]
    return {"probe_top1": tuned["linear_same_labels"]["top1"], "finetune_top1": tuned["top1"],
            "self_train_top1": student["top1"],
            "pseudo_label_top1": student["pseudo_label_top1"], "seconds": found["seconds"]}  # fmt: skip


def limits(args, flags=("train_samples", "test_samples", "finetune_steps")) -> list[str]:
    """The pool and test-set limits and fine-tuning steps, where given, for evaluate.py."""
    return [a for f in flags if getattr(args, f) for a in (f"--{f}", str(getattr(args, f)))]


def federated_dir(partition: str, args) -> Path:
    return Path(args.runs) / f"fed-simclr-{partition}"


def federated_features(partition: str, args) -> dict:
    """The pool's features on a federated SimCLR's encoder, trained here unless its run
    directory holds a finished run (federate.py --resume continues a killed one)."""
    run = federated_dir(partition, args)
    if not (run / "summary.json").is_file():
        train_federation(run, partition, args)
    return features_of(str(run / "backbone.pt"), args)


def train_federation(run: Path, partition: str, args) -> None:
    alpha = ["--partition", "dirichlet", "--alpha", "0.1"] if partition == "dirichlet" else [
        "--partition", "iid"]  # fmt: skip
    resume = ["--resume"] if (run / "config.yaml").is_file() else []
    found = last_json(["federate.py", "--config", "configs/federated/cifar10.yaml", "--config",
                       "configs/methods/simclr.yaml", "--dataset", args.dataset, "--data_dir",
                       args.data_dir, "--num_clients", str(args.clients), "--rounds",
                       str(args.rounds), *alpha, "--track_energy", "false",
                       *limits(args, ("train_samples", "test_samples")),
                       "--output_dir", str(run), *resume], f"federated {partition}")  # fmt: skip
    if "error" in found:
        raise SystemExit(f"federated {partition}: {found['error']}")


def mean_cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    mean = sum(values) / len(values)
    return f"{mean:.3f} ({', '.join(f'{v:.3f}' for v in values)})"


def grouped(rows: list[dict], part: str, key: str) -> dict:
    table: dict = {}
    for r in rows:
        if r["part"] == part and key in r:
            table.setdefault((r["backbone"], r["rule"], r["budget"]), []).append(r[key])
    return table


def tables(rows: list[dict], args, title: str) -> str:
    lines = [title, ""]
    linear = grouped(rows, "linear", "top1")
    budgets = sorted({b for _, _, b in linear})
    if linear:
        lines += ["Linear probe top-1 on the selected labels alone (random and balanced: mean of "
                  f"{len(args.draws)} draws, then each):", "",
                  "| backbone | rule | " + " | ".join(f"{b} labels" for b in budgets) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in budgets) + " |"]  # fmt: skip
        for backbone in args.backbones:
            for rule in args.rules:
                cells = [mean_cell(linear[(backbone, rule, b)]) if (backbone, rule, b) in linear
                         else "" for b in budgets]  # fmt: skip
                label = f"{rule} (reads labels)" if rule == "balanced" else rule
                lines.append(f"| {backbone} | {label} | " + " | ".join(cells) + " |")
        seconds = grouped(rows, "linear", "selection_seconds")
        lines += ["", "Seconds to select 100 labels from the pool (embeddings excluded): "
                  + ", ".join(f"{rule} {max(v):.1f}" for (bb, rule, b), v in seconds.items()
                              if b == 100 and bb == args.backbones[0])]  # fmt: skip
    finetune = grouped(rows, "finetune", "finetune_top1")
    if finetune:
        extra = {key: grouped(rows, "finetune", key) for key in
                 ("probe_top1", "self_train_top1", "pseudo_label_top1", "seconds")}  # fmt: skip
        lines += ["", "Fine-tuning (LP-FT, WiSE-FT) and self-training on the unlabeled rest:", "",
                  "| backbone | rule | labels | probe | fine-tuned | self-trained | "
                  "self-trained - fine-tuned | pseudo-label top-1 | s per run |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for (backbone, rule, budget), tuned in finetune.items():
            trained = extra["self_train_top1"][(backbone, rule, budget)]
            gains = [s - f for s, f in zip(trained, tuned, strict=True)]
            gain = sum(gains) / len(gains)
            lines.append(
                f"| {backbone} | {rule} | {budget} | "
                f"{mean_cell(extra['probe_top1'][(backbone, rule, budget)])} | "
                f"{mean_cell(tuned)} | {mean_cell(trained)} | {gain:+.3f} | "
                f"{mean_cell(extra['pseudo_label_top1'][(backbone, rule, budget)])} | "
                f"{sum(extra['seconds'][(backbone, rule, budget)]) / len(tuned):.0f} |"
            )
    fed = grouped(rows, "federated", "top1")
    if fed:
        fed_budgets = sorted({b for _, _, b in fed})
        lines += ["", f"Selection on a federated SimCLR's encoder ({args.clients} clients, "
                  f"{args.rounds} rounds): central (the upper bound) against per client "
                  "(each its proportional share, on its own images), linear probe top-1:", "",
                  "| encoder | rule | " + " | ".join(f"{b} labels" for b in fed_budgets) + " |",
                  "| --- | --- | " + " | ".join("---" for _ in fed_budgets) + " |"]  # fmt: skip
        for encoder in sorted({e for e, _, _ in fed}):
            for rule in sorted({r for e, r, _ in fed if e == encoder}):
                cells = [mean_cell(fed[(encoder, rule, b)]) if (encoder, rule, b) in fed else ""
                         for b in fed_budgets]  # fmt: skip
                lines.append(f"| {encoder} | {rule} | " + " | ".join(cells) + " |")
    failed = [r for r in rows if "error" in r]
    lines += [""] * bool(failed) + [
        f"- failed: {r['part']} {r['backbone']} {r['rule']} {r['budget']} labels, seed "
        f"{r['seed']}: {r['error']}"
        for r in failed
    ]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], args, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    linear = grouped(rows, "linear", "top1")
    fig, axes = plt.subplots(1, len(args.backbones), figsize=(5.5 * len(args.backbones), 4),
                             squeeze=False, sharey=True)  # fmt: skip
    for ax, backbone in zip(axes[0], args.backbones, strict=True):
        for rule in args.rules:
            points = sorted((b, sum(v) / len(v)) for (bb, r, b), v in linear.items()
                            if bb == backbone and r == rule)  # fmt: skip
            if points:
                style = ":" if rule == "balanced" else "-"
                label = "balanced (reads labels)" if rule == "balanced" else rule
                ax.plot(*zip(*points, strict=True), style, marker="o", label=label)
        ax.set_xscale("log")
        ax.set_xlabel("labeled images")
        ax.set_title(f"{backbone} backbone: linear probe on the selected labels", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test top-1")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", type=listed(str), default="simclr,random",
                        help="recipes run names under --recipes, or random")  # fmt: skip
    parser.add_argument("--recipes", default="runs/recipes", help="recipes.py's runs")
    parser.add_argument("--budgets", type=listed(at_least(1)), default=BUDGETS)
    parser.add_argument("--rules", type=listed(str), default=RULES)
    parser.add_argument("--draws", type=listed(at_least(0)), default="0,1,2",
                        help="seeds of the random and balanced draws")  # fmt: skip
    parser.add_argument("--finetune_budgets", type=listed(at_least(1)), default="100")
    parser.add_argument("--finetune_backbones", type=listed(str), default="simclr",
                        help="backbones fine-tuned (each run is minutes: about 5.5 alone)")  # fmt: skip
    parser.add_argument("--federated_budgets", type=listed(at_least(1)), default="20,100")
    parser.add_argument("--clients", type=at_least(1), default=5)
    parser.add_argument("--rounds", type=at_least(1), default=5)
    photo_arguments(parser)
    for flag in ("train_samples", "test_samples", "finetune_steps"):
        parser.add_argument(f"--{flag}", type=at_least(1), default=None,
                            help="passed to evaluate.py (a quick check: fewer images, steps)")  # fmt: skip
    parser.add_argument("--runs", default="runs/label-efficiency")
    parser.add_argument("--plot", default=None, help=f"the picture (default {PLOT})")
    output_arguments(parser, "label-efficiency")
    args = parser.parse_args()
    from ssl_zoo.evaluation.selection import RULES as KNOWN

    unknown = [r for r in args.rules if r not in KNOWN]
    if unknown:
        parser.error(f"--rules: unknown {', '.join(unknown)}; valid: {', '.join(KNOWN)}")
    whole = at_defaults(parser, args, "backbones", "recipes", "budgets", "rules", "draws",
                        "finetune_budgets", "finetune_backbones", "federated_budgets", "clients", "rounds", "dataset",
                        "data_dir", "train_samples", "test_samples", "finetune_steps")  # fmt: skip
    writers = table_writers(parser, args, "label-efficiency", whole,
                            "benchmarks/label_efficiency.md", DOCS)  # fmt: skip
    plot_path = args.plot if args.plot is not None else (PLOT if whole else "")
    checkpoints = backbone_checkpoints(args)
    label_free = [r for r in args.rules if r != "balanced"]
    for name, checkpoint in checkpoints.items():
        if checkpoint != "random" and not Path(checkpoint).is_file():
            parser.error(f"{checkpoint} not found: python benchmarks/recipes.py --methods {name} "
                         "trains it")  # fmt: skip
    start = time.time()
    rows = Rows(Path(args.runs) / "rows.jsonl")

    table_rows: list[dict] = []

    def measure(key: dict, run, *run_args) -> None:
        """A row of this run's table: measured once and kept in rows.jsonl (a failed one is
        not kept, so the next run tries it again)."""
        row = rows.get(key)
        if row is None:
            print(f"{key} ...", file=sys.stderr, flush=True)
            row = {**key, **run(*run_args)}
            if "error" not in row:
                rows.add(row)
        table_rows.append(row)

    for name, checkpoint in checkpoints.items():
        features = functools.cache(functools.partial(features_of, checkpoint, args))
        for budget, rule, seed in jobs(args.budgets, args.rules, args.draws):
            key = {"part": "linear", "backbone": name, "rule": rule, "budget": budget, "seed": seed}
            out = Path(args.runs) / name / f"linear-{rule}-{budget}-{seed}"
            measure(key, linear_row, features, budget, rule, seed, out)
        if name not in args.finetune_backbones:
            continue
        for budget, rule, seed in jobs(args.finetune_budgets, label_free, args.draws):
            key = {"part": "finetune", "backbone": name, "rule": rule, "budget": budget,
                   "seed": seed}  # fmt: skip
            out = Path(args.runs) / name / f"finetune-{rule}-{budget}-{seed}"
            measure(key, finetune_row, checkpoint, budget, rule, seed, out, args)
    for partition in ("iid", "dirichlet") if args.federated_budgets else ():
        run = federated_dir(partition, args)
        features = functools.cache(functools.partial(federated_features, partition, args))
        for budget, rule, seed in jobs(args.federated_budgets, label_free, args.draws):
            for clients in [None] if rule == "random" else [None, str(run)]:
                label = (
                    rule
                    if rule == "random"
                    else f"{rule}, {'per client' if clients else 'central'}"
                )
                key = {"part": "federated", "backbone": f"FedSimCLR {partition}", "rule": label,
                       "budget": budget, "seed": seed}  # fmt: skip
                out = (
                    Path(args.runs)
                    / f"fed-{partition}"
                    / f"{label.replace(', ', '-')}-{budget}-{seed}"
                )
                measure(key, linear_row, features, budget, rule, seed, out.with_name(
                    out.name.replace(" ", "_")), clients)  # fmt: skip
    title = (f"{command_stamp('benchmarks/label_efficiency.py')}: --dataset {args.dataset} "
             f"--data_dir {relative(args.data_dir)}; backbones: "
             + ", ".join(f"{n} ({'random init, the recipe architecture' if c == 'random' else relative(c)})"
                         for n, c in checkpoints.items()))  # fmt: skip
    text = tables(table_rows, args, title)
    if plot_path:
        plot(table_rows, args, plot_path)
    publish(text, table_rows, {"title": title, "rows": table_rows,
                             "seconds": round(time.time() - start, 1)}, *writers)  # fmt: skip


if __name__ == "__main__":
    main()
