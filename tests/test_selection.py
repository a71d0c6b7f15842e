"""Label selection (ssl_zoo/evaluation/selection.py) and self-training, through evaluate.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import last_json_line, run_script, tiny_args

from ssl_zoo.errors import run_main
from ssl_zoo.evaluation.selection import (
    LABEL_FREE,
    balanced_count,
    client_shares,
    select,
    select_per_client,
)
from ssl_zoo.jobs.evaluate import main as evaluate_main
from ssl_zoo.jobs.train import main as train_main


def clustered(n: int = 300, clusters: int = 6, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)) * 4
    return centres[rng.integers(0, clusters, n)] + rng.normal(size=(n, dim))


@pytest.mark.parametrize("rule", LABEL_FREE)
def test_each_rule_picks_its_budget_reproducibly_from_the_seed(rule):
    x = clustered()
    picks = select(x, 12, rule, seed=3, num_classes=6)
    assert len(set(picks)) == 12 and all(0 <= i < len(x) for i in picks)
    assert picks == select(x, 12, rule, seed=3, num_classes=6)
    if rule == "random":
        assert picks != select(x, 12, rule, seed=4, num_classes=6)


def test_typiclust_and_probcover_cover_the_clusters_random_can_miss():
    """Six well-separated clusters, one much larger than the rest: six typiclust or probcover
    picks land in six clusters; kcenter too (it spreads by construction)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 8)) * 10
    members = np.repeat(np.arange(6), [250, 10, 10, 10, 10, 10])
    x = centres[members] + rng.normal(size=(len(members), 8)) * 0.3
    for rule in ("typiclust", "probcover", "kcenter"):
        assert len(set(members[select(x, 6, rule, seed=0, num_classes=6)])) == 6, rule
    random_clusters = [len(set(members[select(x, 6, "random", seed=s)])) for s in range(5)]
    assert min(random_clusters) < 6


def test_client_shares_follow_the_clients_images_and_sum_to_the_budget():
    assert client_shares([50, 30, 20], 10) == [5, 3, 2]
    assert client_shares([1, 1, 98], 3) == [0, 0, 3]  # largest remainders
    assert sum(client_shares([7, 13, 5, 1], 9)) == 9
    x = clustered(120)
    clients = [np.arange(0, 80), np.arange(80, 110), np.arange(110, 120)]
    chosen, shares = select_per_client(x, clients, 12, "kcenter", seed=0)
    assert shares == [8, 3, 1] and len(chosen) == 12
    for members, share in zip(clients, shares, strict=True):
        assert len(set(chosen) & set(members.tolist())) == share  # each picks on its own images


def test_balanced_count_spreads_the_budget_over_the_classes():
    labels = np.repeat(np.arange(4), [10, 10, 10, 2])
    picks = balanced_count(labels, 11, seed=0)
    counts = np.bincount(labels[picks], minlength=4)
    assert counts.sum() == 11 and counts.max() - counts.min() <= 1


def write_folder(root: Path, assignment: np.ndarray, images: np.ndarray) -> Path:
    """An imagefolder whose train image k lies in class folder assignment[k] (a fixed test
    split beside it), so two folders can hold the same images under other labels."""
    from PIL import Image

    for k, (image, label) in enumerate(zip(images, assignment, strict=True)):
        folder = root / "train" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"img{k:03d}.png")
    for c in range(3):
        (root / "test" / f"class{c}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[c]).save(root / "test" / f"class{c}" / "t.png")
    return root


def selected_files(out: Path) -> set[str]:
    return {Path(i).name for i in json.loads((out / "selection.json").read_text())["ids"]}


FOLDER_ARGS = ["--checkpoint", "random", "--backbone", "timm:resnet10t", "--protocol", "linear",
               "--dataset", "imagefolder", "--linear_epochs", "2", "--num_workers", "0",
               "--knn_k", "5", "--plot", "false", "--track_energy", "false"]  # fmt: skip


def test_no_rule_reads_a_label_and_a_selection_file_is_reused(tmp_path):
    """The same 60 images under shuffled class folders (other labels, another order on disk):
    every label-free rule picks the same files. Then --selection FILE labels those files again."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (60, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(60) % 3
    first = write_folder(tmp_path / "a", labels, images)
    second = write_folder(tmp_path / "b", rng.permutation(labels), images)
    chosen = {}
    for rule in LABEL_FREE:
        picked = []
        for folder in (first, second):
            out = tmp_path / f"{rule}-{folder.name}"
            summary = evaluate_main([*FOLDER_ARGS, "--data_dir", str(folder), "--labels", "6",
                                     "--select", rule, "--output_dir", str(out)])  # fmt: skip
            assert summary["results"]["selection"] == {"rule": rule, "labels": 6}
            assert summary["seconds_per_protocol"]["selection"] >= 0
            picked.append(selected_files(out))
        assert picked[0] == picked[1] and len(picked[0]) == 6, rule
        chosen[rule] = picked[0]
    reused = tmp_path / "reused"
    evaluate_main([*FOLDER_ARGS, "--data_dir", str(first), "--output_dir", str(reused),
                   "--selection", str(tmp_path / "typiclust-a" / "selection.json")])  # fmt: skip
    record = json.loads((reused / "selection.json").read_text())
    assert selected_files(reused) == chosen["typiclust"] and record["rule"] == "typiclust"
    assert record["reused_from"].endswith("selection.json")


def test_federated_selection_picks_each_clients_share_on_its_own_images(tmp_path):
    """--federated_selection reads a federate.py run's config.yaml, rebuilds its partition and
    lets each client choose its share; the chosen images per client match the shares."""
    from ssl_zoo.data import dataset_labels, load_splits
    from ssl_zoo.federated.config import FedConfig
    from ssl_zoo.federated.partition import partition

    fed = FedConfig(dataset="synthetic", train_samples=120, num_clients=3,
                    partition="dirichlet", alpha=0.3, seed=5)  # fmt: skip
    run = tmp_path / "fedrun"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(fed.as_dict()))
    out = tmp_path / "eval"
    evaluate_main(["--checkpoint", "random", "--backbone", "timm:resnet10t", "--protocol",
                   "linear", "--dataset", "synthetic", "--train_samples", "120",
                   "--test_samples", "20", "--knn_k", "5", "--linear_epochs", "2",
                   "--num_workers", "0", "--plot", "false", "--track_energy", "false",
                   "--labels", "12", "--select", "kcenter", "--federated_selection", str(run),
                   "--output_dir", str(out)])  # fmt: skip
    record = json.loads((out / "selection.json").read_text())
    train = load_splits("synthetic", train_samples=120, test_samples=20).train
    parts = partition(dataset_labels(train), 3, "dirichlet", 0.3, 2, 5)
    assert record["client_shares"] == client_shares([len(p) for p in parts], 12)
    chosen = {int(i[1:]) for i in record["ids"]}
    for part, share in zip(parts, record["client_shares"], strict=True):
        assert len(chosen & set(part.tolist())) == share


def test_self_training_reports_pseudo_label_quality_on_a_tiny_set(tmp_path):
    train_main(tiny_args(tmp_path / "run"))
    out = tmp_path / "self"
    proc = run_script("evaluate.py", "--checkpoint", str(tmp_path / "run" / "backbone.pt"),
                      "--protocol", "finetune", "--dataset", "synthetic", "--train_samples",
                      "80", "--test_samples", "20", "--knn_k", "5", "--num_workers", "0",
                      "--linear_epochs", "3", "--finetune_steps", "3", "--batch_size", "32",
                      "--labels", "10", "--select", "random", "--self_train", "--plot", "false",
                      "--track_energy", "false", "--output_dir", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    tuned = last_json_line(proc.stdout)["results"]["finetune"]
    student = tuned["self_train"]
    assert tuned["labels"] == 10 and student["unlabeled"] == 70
    assert 0 <= student["pseudo_label_top1"] <= 1 and 0 < student["pseudo_label_confidence"] <= 1
    assert 0 <= student["top1"] <= student["top5"] <= 1 and student["gflops"] > tuned["gflops"]


def test_detection_selects_and_self_trains_on_scenes(tmp_path):
    out = tmp_path / "det"
    summary = evaluate_main(["--checkpoint", "random", "--backbone", "timm:resnet10t",
                             "--config", "configs/detection/scenes.yaml", "--train_samples",
                             "16", "--test_samples", "4", "--det_epochs", "1", "--labels", "4",
                             "--select", "kcenter", "--self_train", "--num_workers", "0",
                             "--plot", "true", "--track_energy", "false",
                             "--output_dir", str(out)])  # fmt: skip
    assert summary["labeled_images"] == 4 and summary["selection"]["rule"] == "kcenter"
    student = summary["self_train"]
    assert student["unlabeled_images"] == 12 and 0 <= student["map_50"] <= 1
    assert student["pseudo_score_threshold"] == 0.7
    assert len(json.loads((out / "selection.json").read_text())["ids"]) == 4
    assert (out / "selection.png").stat().st_size > 5_000


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--labels", "500"], "--labels 500 is more than the 64 training images"),
        (["--labels", "5", "--select", "balanced"], "needs at least one label per class"),
        (["--select", "oracle"], "unknown select 'oracle'"),
        (["--labels", "40", "--select", "typiclust"], "need a pool of at least 80 images"),
        (["--self_train", "--protocol", "knn"], "--self_train goes with"),
        (["--federated_selection", "x", "--select", "balanced"], "clients hold no labels"),
    ],
)
def test_bad_labeling_input_is_one_line_and_runs_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "bad"
    base = ["--checkpoint", "random", "--backbone", "timm:resnet10t", "--protocol", "finetune",
            "--dataset", "synthetic", "--train_samples", "64", "--test_samples", "20",
            "--num_workers", "0", "--knn_k", "5", "--track_energy", "false",
            "--output_dir", str(out)]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        run_main(evaluate_main, [*base, *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err
    assert not (out / "results.json").exists() and not (out / "selection.json").exists()


def test_a_selection_file_for_another_dataset_or_pool_is_refused(tmp_path, capsys):
    made = tmp_path / "made"
    base = ["--checkpoint", "random", "--backbone", "timm:resnet10t", "--protocol", "linear",
            "--dataset", "synthetic", "--test_samples", "20", "--num_workers", "0", "--knn_k",
            "5", "--linear_epochs", "2", "--plot", "false", "--track_energy", "false"]  # fmt: skip
    evaluate_main([*base, "--train_samples", "64", "--labels", "8", "--select", "random",
                   "--output_dir", str(made)])  # fmt: skip
    selection = str(made / "selection.json")
    other = tmp_path / "other.json"
    shutil.copy(selection, other)
    other.write_text(other.read_text().replace('"synthetic"', '"cifar10"'))
    for args, message in [
        (["--train_samples", "32", "--selection", selection], "was made for another pool"),
        (["--train_samples", "64", "--selection", str(other)], "made for dataset cifar10"),
        (["--train_samples", "64", "--selection", str(tmp_path / "none.json")], "not found"),
    ]:
        with pytest.raises(SystemExit):
            run_main(evaluate_main, [*base, *args, "--output_dir", str(tmp_path / "x")])
        err = capsys.readouterr().err.strip()
        assert message in err and "\n" not in err, err


def test_a_selection_by_an_earlier_version_of_the_checkpoint_is_refused(tmp_path, capsys):
    """Another encoder may reuse a selection; the same backbone.pt retrained may not."""
    import torch

    train_main(tiny_args(tmp_path / "run"))
    backbone = tmp_path / "run" / "backbone.pt"
    base = ["--checkpoint", str(backbone), "--protocol", "linear", "--dataset", "synthetic",
            "--train_samples", "64", "--test_samples", "20", "--num_workers", "0", "--knn_k",
            "5", "--linear_epochs", "2", "--plot", "false", "--track_energy", "false"]  # fmt: skip
    evaluate_main([*base, "--labels", "8", "--select", "kcenter", "--output_dir",
                   str(tmp_path / "first")])  # fmt: skip
    selection = str(tmp_path / "first" / "selection.json")
    other = ["--checkpoint", "random", "--backbone", "timm:resnet10t", *base[2:]]
    reused = evaluate_main([*other, "--selection", selection, "--output_dir",
                            str(tmp_path / "other")])  # fmt: skip
    assert reused["results"]["selection"]["rule"] == "kcenter"
    payload = torch.load(backbone, weights_only=False)
    first = next(iter(payload["state_dict"]))
    payload["state_dict"][first] = payload["state_dict"][first] + 1  # "retrained"
    torch.save(payload, backbone)
    with pytest.raises(SystemExit):
        run_main(evaluate_main, [*base, "--selection", selection, "--output_dir",
                                 str(tmp_path / "stale")])  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert "an earlier version of" in err and "\n" not in err, err
