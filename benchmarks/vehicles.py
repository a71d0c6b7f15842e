"""The fleet story on real photos (../shared/data/vehicles): SSL on the unlabeled train photos,
centrally and federated over a fleet of vehicles, then detection of cars, buses, trucks,
motorcycles and ambulances from a few labeled photos, measured on the val photos.

    python benchmarks/vehicles.py            # everything (hours on 2 cores; resumes after a kill)
    python benchmarks/vehicles.py --quick    # every part on a few photos, in minutes (the tests)

0. The start: the SimCLR CPU recipe on the public cifar10-12k photos (--cifar_dir, 8 minutes;
   configs/methods/simclr.yaml), which the vehicle recipe starts from (its `pretrained`).
1. Pretraining, the boxes never read: `train.py --config configs/vehicles/pretrain.yaml` for
   --epochs epochs (central), and `federate.py` with the same config over --clients clients, one
   per vehicle, for as many rounds of one local epoch: the same images seen, so equal compute.
   Fleets: FedAvg on IID clients and on Dirichlet(--alpha) clients over each photo's largest
   object (vehicles that see other roads), and FedX on the Dirichlet clients (on SimCLR the best
   of the algorithms beside FedAvg, docs/federated-results.md).
2. Detection: `evaluate.py --config configs/vehicles/detect.yaml` from each backbone and from
   random initialisation, on --fractions of the train photos: --draws random picks
   (`--select random`) and, from the --rule_backbones, the --rule's picks with --self_train (one
   run gives the detector before and after self-training). The federated backbones and the
   start alone (what the fleet's own photos add to it) at --fleet_fractions. Every run takes
   --steps fine-tuning steps whatever its labels, so the cells of a column cost the same FLOPs
   (but the start's: it keeps the CIFAR recipe's stride-16 last stage, about 1.5x a step) and the
   curve is at equal compute; self-training takes as many steps again.
3. The search (--variants), one change each to the recipe or the detector, one run each on the
   first draw's picks at the fewest labels, against the central backbone's row on the same
   picks: BYOL instead of SimCLR, the coco128 photos (--coco_dir) added to the unlabeled pool
   (both pretrained at the central run's steps), RetinaNet or FCOS instead of Faster R-CNN.

Every run is a process of its own whose finished output (summary.json, results.json) is reused,
so a killed benchmark resumes at the run it was in; a killed pretraining resumes from its last
checkpoint. Writes the tables to benchmarks/vehicles.md and between the `vehicles` markers of
docs/detection.md, the curve (mAP@.5 against labeled photos) and the detections of the best and
the random-init detector on 8 val photos to docs/images/, and the headline between the README's
`vehicles-headline` markers (only from a run at the defaults), and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cli import (  # noqa: E402
    at_defaults,
    at_least,
    command_stamp,
    fraction,
    listed,
    output_arguments,
    positive,
    publish,
    relative,
    run_once,
    table_writers,
)
from ssl_zoo.errors import UserError  # noqa: E402
from ssl_zoo.published import require_markers, write_table  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "vehicles"
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-12k"
COCO128 = ROOT.parent / "shared" / "data" / "coco128"
PRETRAIN = "configs/vehicles/pretrain.yaml"
DETECT = "configs/vehicles/detect.yaml"
CURVE = "docs/images/vehicles-curve.png"
DETECTIONS = "docs/images/vehicles-detections.png"
DOCS = "docs/detection.md"  # the pages of the `vehicles` table
README = "README.md"  # the page of the `vehicles-headline`
# name: (federate.py arguments beside the recipe, the row's description)
FLEETS = {
    "fedavg-iid": (["--partition", "iid"], "FedAvg, IID"),
    "fedavg-dirichlet": (["--partition", "dirichlet"], "FedAvg, Dirichlet"),
    "fedx-dirichlet": (
        ["--partition", "dirichlet", "--fed_algorithm", "fedx"],
        "FedX, Dirichlet",
    ),  # fmt: skip
}
# Part 1's search, one change to the recipe or the detector each: fine-tuned on the first draw's
# random picks at the fewest labels, and read against the central backbone's row on those picks.
# name: (the row's description, train.py arguments beside the recipe (None: the central
# backbone), evaluate.py arguments beside detect.yaml)
VARIANTS = {
    # the BYOL CPU recipe's method settings (its short-run momentum among them)
    "byol": ("BYOL (self-distillation) instead of SimCLR", ["--method", "byol", "--method_args",
             json.dumps(yaml.safe_load((ROOT / "configs/methods/byol.yaml").read_text())["method_args"])],
             []),
    # at the central run's steps: more photos, fewer epochs
    "coco128": ("coco128's photos added to the unlabeled pool", ["--extra_images", "[{coco_dir}]"], []),
    "retinanet": ("RetinaNet instead of Faster R-CNN", None, ["--detector", "retinanet"]),
    "fcos": ("FCOS instead of Faster R-CNN", None, ["--detector", "fcos"]),
}  # fmt: skip
# Every part on a few photos and tiny images: seconds a run, for the tests and a first look.
QUICK_PRETRAIN = ["--train_samples", "24", "--test_samples", "16", "--image_size", "64",
                  "--views.input_size", "56", "--batch_size", "8", "--knn_k", "5",
                  "--num_workers", "0"]  # fmt: skip
# The start (the CIFAR recipe) at its own 32 px, one epoch.
QUICK_START = ["--train_samples", "24", "--test_samples", "16", "--max_epochs", "1",
               "--max_time", "null", "--batch_size", "8", "--knn_k", "5", "--num_workers", "0"]  # fmt: skip
QUICK_DETECT = ["--train_samples", "20", "--test_samples", "8", "--det_size", "96",
                "--num_workers", "0"]  # fmt: skip


def start_run(args) -> Path:
    """The run the vehicle recipe starts from (its `pretrained`: the SimCLR CPU recipe on the
    CIFAR-10 photos); --quick trains a tiny one of its own instead."""
    if args.quick:
        return Path(args.runs) / "cifar-simclr"
    return Path(yaml.safe_load((ROOT / PRETRAIN).read_text())["pretrained"]).parent


def pretrain_start(args) -> dict:
    """The SimCLR CPU recipe on cifar10-12k, trained here unless its run is there."""
    out = start_run(args)
    saved = out / "checkpoints" / "last.ckpt"
    return run_once("train.py", ["--config", "configs/methods/simclr.yaml", "--dataset",
                                 "imagefolder", "--data_dir", args.cifar_dir, "--backbone",
                                 "timm:resnet18", "--track_energy", "false",
                                 *(QUICK_START if args.quick else []),
                                 "--output_dir", str(out), *(["--resume"] if saved.is_file() else [])],
                    out / "summary.json",
                    f"[pretrain] SimCLR recipe on {relative(args.cifar_dir)}")  # fmt: skip


def pretrain(name: str, args, epochs: int | None = None) -> dict:
    """A backbone's pretraining run (trained here unless finished, resumed if killed)."""
    out = Path(args.runs) / name
    # A killed run goes on from its checkpoint, if it lived to write one.
    saved = out / ("fed_state.pt" if name in FLEETS else "checkpoints/last.ckpt")
    resume = ["--resume"] if saved.is_file() else []
    common = ["--config", PRETRAIN, "--data_dir", args.data_dir, "--max_time", "null",
              "--pretrained", str(start_run(args) / "backbone.pt"), "--track_energy", "false",
              *(QUICK_PRETRAIN if args.quick else []), "--output_dir", str(out), *resume]  # fmt: skip
    if name == "central":
        return run_once("train.py", [*common, "--max_epochs", str(args.epochs)],
                        out / "summary.json", f"[pretrain] central, {args.epochs} epochs")  # fmt: skip
    if name in VARIANTS:
        changes = [a.replace("{coco_dir}", args.coco_dir) for a in VARIANTS[name][1]]
        return run_once("train.py", [*common, *changes, "--max_epochs", str(epochs)],
                        out / "summary.json", f"[pretrain] {name}, {epochs} epochs")  # fmt: skip
    fleet, _ = FLEETS[name]
    return run_once("federate.py", [*common, *fleet, "--alpha", str(args.alpha), "--num_clients",
                                    str(args.clients), "--rounds", str(epochs),
                                    "--local_epochs", "1"], out / "summary.json",
                    f"[pretrain] {name}, {args.clients} clients, {epochs} rounds")  # fmt: skip


def labels_for(fraction_: float, pool: int) -> int:
    return max(1, round(fraction_ * pool))


def detect(backbone: str, labels: int, pool: int, pick: str, seed: int, args,
           variant: str | None = None) -> dict:  # fmt: skip
    """One detection run: `labels` train photos picked by `pick` (random or a rule, the rule
    with self-training), fine-tuned for --steps steps; `variant`: a VARIANTS detector."""
    out = Path(args.runs) / "detect" / f"{variant or backbone}-{labels}-{pick}-{seed}"
    run = start_run(args) if backbone == "start" else Path(args.runs) / backbone
    checkpoint = ["--checkpoint", "random", "--backbone", "timm:resnet18"] if backbone == "random" \
        else ["--checkpoint", str(run / "backbone.pt")]  # fmt: skip
    # All the photos: without the fraction 1, detect.yaml's own label_fraction (0.1) applies.
    picks = (
        ["--label_fraction", "1"] if labels >= pool else ["--labels", str(labels), "--select", pick]
    )
    steps_per_epoch = math.ceil(labels / args.batch_size)
    epochs = max(1, round(args.steps / steps_per_epoch))
    found = run_once("evaluate.py", [*checkpoint, "--config", DETECT, "--data_dir", args.data_dir,
                                     *picks, "--self_train", str(pick != "random").lower(),
                                     "--det_epochs", str(epochs), "--det_batch_size",
                                     str(args.batch_size), "--seed", str(seed),
                                     "--track_energy", "false",
                                     *(VARIANTS[variant][2] if variant else []),
                                     *(QUICK_DETECT if args.quick else []),
                                     "--output_dir", str(out)], out / "results.json",
                     f"[detect] {variant or backbone}, {labels} labeled ({pick}, seed {seed}), "
                     f"{epochs} epochs")  # fmt: skip
    if "error" not in found and found["labeled_images"] != labels:
        found = {"error": f"{out}: fine-tuned on {found['labeled_images']} labeled photos, not "
                          f"{labels}; remove the run to measure it again"}  # fmt: skip
    return {**found, "backbone": backbone, "labels": labels, "pick": pick, "seed": seed,
            "out": str(out), **({"variant": variant} if variant else {})}  # fmt: skip


def run_variants(args, pool: int, few: int, central: dict) -> tuple[dict, list[dict]]:
    """The --variants' pretraining runs (at the central run's steps) and detection runs."""
    from ssl_zoo.data import unlabeled_images

    pretrained, rows = {}, []
    for name in args.variants:
        backbone = "central"
        if VARIANTS[name][1] is not None:
            photos = pool + (len(unlabeled_images(Path(args.coco_dir), "--coco_dir"))
                             if name == "coco128" else 0)  # fmt: skip
            batch = 8 if args.quick else yaml.safe_load((ROOT / PRETRAIN).read_text())["batch_size"]
            epochs = max(1, round(central["steps"] / max(1, photos // batch)))
            pretrained[name] = pretrain(name, args, epochs)
            if "error" in pretrained[name]:
                raise SystemExit(f"error: pretraining {name} failed: {pretrained[name]['error']}")
            backbone = name
        rows.append(detect(backbone, few, pool, "random", args.draws[0], args,
                           None if backbone == name else name))  # fmt: skip
    return pretrained, rows


def scores(row: dict, self_trained: bool = False) -> dict:
    found = row["self_train"] if self_trained else row
    return {"map_50": found["map_50"], "map": found["map"], "car": found["map_per_class"]["car"]}


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def cells(rows: list[dict], backbone: str, pick: str, labels: int, self_trained=False):
    return [scores(r, self_trained) for r in rows if "error" not in r and r["backbone"] == backbone
            and r["pick"] == pick and r["labels"] == labels]  # fmt: skip


def cell_text(found: list[dict]) -> str:
    if not found:
        return ""
    text = " / ".join(f"{mean([f[k] for f in found]):.3f}" for k in ("map_50", "map", "car"))
    if len(found) > 1:
        text += " (mAP@.5 " + ", ".join(f"{f['map_50']:.3f}" for f in found) + ")"
    return text


def picks_of(args, backbone: str) -> list[tuple[str, bool]]:
    """(pick, self-trained) rows of a backbone's table."""
    rule = [(args.rule, False), (args.rule, True)] if backbone in args.rule_backbones else []
    return [("random", False), *rule]


def backbone_names(args) -> list[str]:
    return ["random", "start", "central", *args.fleets]


def tables(rows: list[dict], variant_rows: list[dict], pretrained: dict, columns: list[int],
           pool: int, args, title: str) -> str:  # fmt: skip
    lines = [title, "", f"Detection on the {rows and rows[0].get('val_images', '')} val photos "
             f"after about {args.steps} fine-tuning steps of {args.batch_size} photos (Faster "
             "R-CNN + FPN): mAP@.5 / mAP@[.5:.95] / AP(car)"
             + (f"; random picks: the mean of {len(args.draws)} draws, then each draw's mAP@.5"
                if len(args.draws) > 1 else "") + ".", "",
             "| backbone | labeled photos picked by | "
             + " | ".join(f"{n} labeled ({n / pool:.0%})" for n in columns) + " |",
             "| --- | --- | " + " | ".join("---" for _ in columns) + " |"]  # fmt: skip
    for backbone in backbone_names(args):
        for pick, trained in picks_of(args, backbone):
            label = f"{pick} + self-training" if trained else pick
            row = [cell_text(cells(rows, backbone, "random" if n >= pool else pick, n, trained))
                   if n < pool or (pick == "random" and not trained) else "" for n in columns]  # fmt: skip
            lines.append(f"| {describe(backbone)} | {label} | " + " | ".join(row) + " |")
    lines += ["", "Pretraining (the boxes never read), each from the start's backbone; federated: "
              f"{args.clients} clients, rounds of one local epoch, Dirichlet(alpha {args.alpha:g}) "
              "over each photo's largest object. kNN: top-1 of each val photo's largest object "
              "from the train photos' features (128 photos: a coarse signal; the start's: on its own "
              "CIFAR-10 test photos):", "",
              "| backbone | epochs(-equivalent) | GFLOPs | kNN init -> final | s | MB up / down |",
              "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for name, found in pretrained.items():
        if name in VARIANTS:
            continue  # in the variants' table
        epochs = found.get("epochs_equivalent", found.get("epochs"))
        traffic = (f"{found['bytes_up'] / 1e6:.0f} / {found['bytes_down'] / 1e6:.0f}"
                   if "bytes_up" in found else "")  # fmt: skip
        lines.append(f"| {describe(name)} | {epochs:g} | {found['gflops']:,.0f} | "
                     f"{found['knn_top1_init']:.3f} -> "
                     f"{found['knn_top1']:.3f} | {found['seconds']:.0f} | {traffic} |")  # fmt: skip
    seconds = {}
    for r in rows:
        if "error" not in r:
            seconds.setdefault((r["labels"], r["pick"] != "random"), []).append(r["seconds"])
    lines += ["", "Seconds per detection run (fine-tuning, and mAP on val): "
              + ", ".join(f"{n} labeled{' with self-training' if st else ''} {mean(v):.0f}"
                          for (n, st), v in sorted(seconds.items())) + "."]  # fmt: skip
    if variant_rows:
        lines += ["", *variants_table(rows, variant_rows, pretrained, columns[0], args)]
    lines += ["", *targets(rows, columns, args)]
    failed = [r for r in [*rows, *variant_rows] if "error" in r]
    lines += [f"- failed: {r.get('variant', r['backbone'])} {r['labels']} {r['pick']} seed "
              f"{r['seed']}: {r['error']}" for r in failed]  # fmt: skip
    return "\n".join(lines) + "\n"


def variants_table(rows: list[dict], variant_rows: list[dict], pretrained: dict, few: int,
                   args) -> list[str]:  # fmt: skip
    """Each variant's detector against the central backbone's on the same picks."""
    seed = args.draws[0]
    central = next((r for r in rows if "error" not in r and r["backbone"] == "central"
                    and r["pick"] == "random" and r["labels"] == few and r["seed"] == seed), None)  # fmt: skip
    spread = [c["map_50"] for c in cells(rows, "central", "random", few)]
    lines = [f"Part 1's search, one change each to the recipe or the detector, fine-tuned on the "
             f"{few} random picks of seed {seed}; the central backbone's Faster R-CNN on those "
             "picks: " + (f"{central['map_50']:.3f} mAP@.5, {central['gflops']:,.0f} GFLOPs, "
                          f"{central['seconds']:.0f} s" if central else "not measured")
             + (f" (its {len(spread)} draws differ by {max(spread) - min(spread):.3f})"
                if len(spread) > 1 else "") + ". Pretraining at the central run's steps:", "",
             "| change | pretraining GFLOPs, s, kNN final | detection GFLOPs | "
             "mAP@.5 / mAP@[.5:.95] / AP(car) | mAP@.5 - central's | detection s |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in variant_rows:
        name = r.get("variant", r["backbone"])
        if "error" in r:
            continue  # listed with the failures
        trained = pretrained.get(name)
        pre = (f"{trained['gflops']:,.0f}, {trained['seconds']:.0f}, {trained['knn_top1']:.3f}"
               if trained else "the central run's")  # fmt: skip
        found = scores(r)
        gap = f"{found['map_50'] - central['map_50']:+.3f}" if central else ""
        lines.append(f"| {VARIANTS[name][0]} | {pre} | {r['gflops']:,.0f} | "
                     f"{found['map_50']:.3f} / {found['map']:.3f} / {found['car']:.3f} | {gap} | "
                     f"{r['seconds']:.0f} |")  # fmt: skip
    return lines


def describe(name: str) -> str:
    if name in FLEETS:
        return f"SSL federated ({FLEETS[name][1]})"
    return {"random": "random init", "central": "SSL centralized",
            "start": "SSL on cifar10-12k alone (the start)"}.get(name, name)  # fmt: skip


def targets(rows: list[dict], columns: list[int], args) -> list[str]:
    """The issue's targets, computed from the rows (where their cells were measured)."""

    def at(backbone, labels, pick="random", trained=False, key="map_50"):
        found = cells(rows, backbone, pick, labels, trained)
        return mean([f[key] for f in found]) if found else None

    lines = []
    few, every = columns[0], columns[-1]
    ssl, init = at("central", few), at("random", few)
    if ssl is not None and init is not None:
        lines.append(f"- SSL centralized - random init at {few} labeled: {ssl - init:+.3f} mAP@.5 "
                     "(target +0.10)")  # fmt: skip
    car, car_init = at("central", every, key="car"), at("random", every, key="car")
    if car is not None and car_init is not None:
        lines.append(f"- AP(car) at {every} labeled: SSL centralized {car:.3f} (target 0.30), "
                     f"random init {car_init:.3f}")  # fmt: skip
    for fleet in args.fleets:
        if "dirichlet" in fleet and ssl is not None and at(fleet, few) is not None:
            lines.append(f"- {describe(fleet)} - centralized at {few} labeled: "
                         f"{at(fleet, few) - ssl:+.3f} mAP@.5 (target within 0.03)")  # fmt: skip
    both = at("central", few, args.rule, True)
    if both is not None and ssl is not None:
        lines.append(f"- {args.rule} picks + self-training - random picks at {few} labeled: "
                     f"{both - ssl:+.3f} mAP@.5 (target +0.03; self-training costs the steps "
                     "twice)")  # fmt: skip
    return lines


def curve(rows: list[dict], columns: list[int], args, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for backbone in backbone_names(args):
        points = [(n, mean([f["map_50"] for f in cells(rows, backbone, "random", n)]))
                  for n in columns if cells(rows, backbone, "random", n)]  # fmt: skip
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=describe(backbone))
        if backbone in args.rule_backbones:
            for trained, marker in ((False, "s"), (True, "*")):
                found = [(n, cells(rows, backbone, args.rule, n, trained)[0]["map_50"])
                         for n in columns if cells(rows, backbone, args.rule, n, trained)]  # fmt: skip
                if found:
                    label = f"{describe(backbone)}, {args.rule}" + " + self-training" * trained
                    ax.plot(*zip(*found, strict=True), marker, ls="none", ms=9, label=label)
    ax.set_xscale("log")
    ax.minorticks_off()  # the log axis's own labels would sit between the label counts
    ax.set_xticks(columns, [str(n) for n in columns])
    ax.set_xlabel("labeled train photos (random picks unless marked)")
    ax.set_ylabel("val mAP@.5")
    ax.set_title(f"Vehicle detection at {args.steps} fine-tuning steps", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def detections_picture(rows: list[dict], columns: list[int], args, path: str) -> None:
    """8 val photos: the best SSL detector at the fewest labels (highest mAP@.5) against the
    random-init one on the same labels, over the ground truth."""
    import torch

    from ssl_zoo.detection.data import load_detection
    from ssl_zoo.detection.protocol import detection_plot

    few = [r for r in rows if "error" not in r and r["labels"] == columns[0]]
    best = max((r for r in few if r["backbone"] != "random"), key=lambda r: r["map_50"])
    init = next(r for r in few if r["backbone"] == "random" and r["pick"] == "random")
    splits = load_detection("coco", args.data_dir, None, None, 8 if args.quick else None)
    shown = splits.val.subset(list(range(min(8, len(splits.val)))))

    def predicted(row):
        return torch.load(Path(row["out"]) / "predictions.pt", weights_only=False)[: len(shown)]

    detectors = {
        f"{describe(best['backbone'])}, {best['pick']} picks\nmAP@.5 {best['map_50']:.3f}":
            predicted(best),
        f"random init, random picks\nmAP@.5 {init['map_50']:.3f}": predicted(init),
    }  # fmt: skip
    detection_plot(detectors, shown, splits.classes, path,
                   f"{columns[0]} labeled photos: boxes scored >= 0.5 (solid) over the truth "
                   "(dashed)", count=len(shown))  # fmt: skip


def headline(rows: list[dict], columns: list[int], args) -> str:
    def at(backbone, labels):
        found = cells(rows, backbone, "random", labels)
        return mean([f["map_50"] for f in found]) if found else float("nan")

    few = columns[0]
    ruled = cells(rows, args.rule_backbones[0], args.rule, few, True) if args.rule_backbones else []
    return (f"{command_stamp('benchmarks/vehicles.py')}: with {few} labeled photos the detector "
            f"on the centrally pretrained backbone reaches mAP@.5 {at('central', few):.3f} on "
            f"the val photos, against {at('random', few):.3f} from random initialisation; the "
            "federated backbones: "
            + ", ".join(f"{FLEETS[f][1].replace(',', '')} {at(f, few):.3f}" for f in args.fleets)
            + (f"; {describe(args.rule_backbones[0])} from {args.rule}'s picks with "
               f"self-training {ruled[0]['map_50']:.3f}" if ruled else "")
            + f". All labels ({columns[-1]}): {at('central', columns[-1]):.3f} against "
            f"{at('random', columns[-1]):.3f} ([the table](docs/detection.md#vehicles)).\n\n"
            f"![mAP@.5 against labeled photos]({CURVE})\n")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few photos: minutes, not hours")
    parser.add_argument("--data_dir", default=str(DATA))
    parser.add_argument("--cifar_dir", default=str(CIFAR),
                        help="the public photos the recipe's starting backbone learns from")  # fmt: skip
    parser.add_argument("--epochs", type=at_least(1), default=40,
                        help="pretraining epochs (federated: rounds of one local epoch)")  # fmt: skip
    parser.add_argument("--clients", type=at_least(2), default=8)
    parser.add_argument("--alpha", type=positive, default=0.3)
    parser.add_argument("--fleets", type=listed(str), default=",".join(FLEETS))
    parser.add_argument("--fractions", type=listed(fraction), default="0.1,0.25,1.0")
    parser.add_argument("--draws", type=listed(at_least(0)), default="0,1",
                        help="seeds of the random picks")  # fmt: skip
    parser.add_argument("--rule", default="typiclust", help="the label-selection rule")
    parser.add_argument("--rule_backbones", type=listed(str), default="central",
                        help="backbones whose rule picks (with self-training) are measured")  # fmt: skip
    parser.add_argument("--fleet_fractions", type=listed(fraction), default="0.1",
                        help="fractions the federated backbones and the start are fine-tuned on")  # fmt: skip
    parser.add_argument("--steps", type=at_least(1), default=480,
                        help="fine-tuning steps of every detection run")  # fmt: skip
    parser.add_argument("--batch_size", type=at_least(1), default=8)
    parser.add_argument("--variants", type=listed(str), default=",".join(VARIANTS),
                        help="Part 1's search: changes to the recipe or detector, each one run")  # fmt: skip
    parser.add_argument("--coco_dir", default=str(COCO128),
                        help="the coco128 photos the coco128 variant adds to the unlabeled pool")  # fmt: skip
    parser.add_argument("--runs", default="runs/vehicles")
    output_arguments(parser, "vehicles")
    args = parser.parse_args()
    for option, given, valid in (("fleets", args.fleets, FLEETS),
                                 ("variants", args.variants, VARIANTS)):  # fmt: skip
        unknown = [f for f in given if f not in valid]
        if unknown:
            parser.error(f"--{option}: unknown {', '.join(unknown)}; valid: {', '.join(valid)}")
    if "coco128" in args.variants and not Path(args.coco_dir).is_dir():
        parser.error(f"--coco_dir {args.coco_dir}: not found (the coco128 variant's photos); "
                     "leave coco128 out of --variants to run without it")  # fmt: skip
    if not (Path(args.data_dir) / "annotations").is_dir():
        parser.error(f"--data_dir {args.data_dir}: no annotations/ there (the vehicle photos: "
                     "../shared/data/vehicles, see its README)")  # fmt: skip
    if args.quick:
        args.epochs, args.clients, args.steps, args.draws = 1, 2, 2, args.draws[:1]
        args.fractions, args.fleet_fractions = [0.25, 1.0], [0.25]
    whole = at_defaults(parser, args, "quick", "data_dir", "cifar_dir", "epochs", "clients", "alpha", "fleets",
                        "fractions", "draws", "rule", "rule_backbones", "fleet_fractions",
                        "steps", "batch_size", "variants", "coco_dir")  # fmt: skip
    writers = table_writers(parser, args, "vehicles", whole, "benchmarks/vehicles.md", DOCS)
    if whole:
        try:  # before hours of runs, not after
            require_markers(ROOT / README, "vehicles-headline")
        except UserError as error:
            parser.error(str(error))
    start = time.time()
    from ssl_zoo.detection.data import load_detection

    pool = len(load_detection("coco", args.data_dir, None, 20 if args.quick else None).train)
    columns = sorted({labels_for(f, pool) for f in args.fractions})
    fleet_columns = {labels_for(f, pool) for f in args.fleet_fractions} & set(columns)
    pretrained = {"start": pretrain_start(args)}
    if "error" in pretrained["start"]:
        raise SystemExit(f"error: the starting backbone failed: {pretrained['start']['error']}")
    pretrained["central"] = pretrain("central", args)
    if "error" in pretrained["central"]:
        raise SystemExit(f"error: central pretraining failed: {pretrained['central']['error']}")
    epochs = pretrained["central"]["epochs"]
    for fleet in args.fleets:
        pretrained[fleet] = pretrain(fleet, args, epochs)
        if "error" in pretrained[fleet]:
            raise SystemExit(f"error: pretraining {fleet} failed: {pretrained[fleet]['error']}")
    rows = []
    for labels in columns:
        for backbone in backbone_names(args):
            if backbone not in ("random", "central") and labels not in fleet_columns:
                continue
            for seed in args.draws:
                rows.append(detect(backbone, labels, pool, "random", seed, args))
                if labels >= pool:
                    break  # every photo labeled: the draws differ by their seed alone
            if backbone in args.rule_backbones and labels < pool:
                rows.append(detect(backbone, labels, pool, args.rule, 0, args))
    variant_pretrained, variant_rows = run_variants(args, pool, columns[0], pretrained["central"])
    pretrained.update(variant_pretrained)
    # Resumed calls each see part of the work: the time of the whole is the sum of its runs.
    total = sum(r.get("seconds", 0) for r in [*pretrained.values(), *rows, *variant_rows])
    title = (f"{command_stamp('benchmarks/vehicles.py')}; {len(pretrained)} pretraining and "
             f"{len(rows) + len(variant_rows)} detection runs, {total / 3600:.1f} h of runs in "
             f"all, {time.time() - start:.0f} s in this call")  # fmt: skip
    text = tables(rows, variant_rows, pretrained, columns, pool, args, title)
    if not any("error" in r for r in rows):
        if args.quick or whole:
            out_dir = Path(args.runs) if args.quick else ROOT
            curve(rows, columns, args, str(out_dir / (Path(CURVE).name if args.quick else CURVE)))
            detections_picture(
                rows,
                columns,
                args,
                str(out_dir / (Path(DETECTIONS).name if args.quick else DETECTIONS)),
            )
        if whole:
            writers.append(lambda _: write_table(ROOT / README, "vehicles-headline",
                                                 headline(rows, columns, args)))  # fmt: skip
    publish(text, rows + variant_rows,
            {"title": title, "pretraining": pretrained, "rows": rows, "variants": variant_rows},
            *writers)  # fmt: skip


if __name__ == "__main__":
    main()
