"""The fleet story's data path: SSL on the photos of a COCO detection layout (--dataset coco),
then detection on a few of them; on ../shared/data/vehicles when it is there."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_detection import write_coco

from ssl_zoo.backbones import BackboneSpec, build_backbone, save_backbone
from ssl_zoo.data import dataset_labels, load_splits
from ssl_zoo.jobs.evaluate import main as evaluate_main
from ssl_zoo.jobs.federate import main as federate_main
from ssl_zoo.jobs.train import main as train_main

VEHICLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "vehicles"
needs_vehicles = pytest.mark.skipif(
    not VEHICLES.is_dir(), reason=f"{VEHICLES} is absent (the shared vehicle photos)"
)


def test_coco_photos_are_an_ssl_dataset_labeled_by_their_largest_object(tmp_path):
    """Image 10 holds a person (10 x 20) and a car (24 x 12: larger), image 11 a dog, image 12
    nothing: labels car, dog and none (-1), with the layout's three classes."""
    splits = load_splits("coco", write_coco(tmp_path / "coco"))
    assert splits.num_classes == 3 and splits.bank is splits.train and len(splits.test) == 3
    assert dataset_labels(splits.train).tolist() == [1, 2, -1]
    assert splits.image_size == 48  # the shorter side of the first photo


@needs_vehicles
def test_the_vehicle_recipe_pretrains_federates_and_detects_on_a_few_photos(tmp_path):
    start = tmp_path / "start.pt"  # the recipe starts from another run's backbone: here a fresh one
    save_backbone(
        start, build_backbone(BackboneSpec("timm:resnet18"))[0], BackboneSpec("timm:resnet18")
    )
    tiny = ["--train_samples", "24", "--test_samples", "16", "--max_epochs", "1", "--batch_size",
            "8", "--num_workers", "0", "--knn_k", "5", "--track_energy", "false",
            "--pretrained", str(start)]  # fmt: skip
    central = train_main(["--config", "configs/vehicles/pretrain.yaml", *tiny,
                          "--output_dir", str(tmp_path / "central")])  # fmt: skip
    assert central["dataset"] == "coco" and central["steps"] == 3
    fleet = federate_main(["--config", "configs/vehicles/pretrain.yaml", *tiny, "--num_clients",
                           "3", "--partition", "dirichlet", "--alpha", "0.3", "--rounds", "1",
                           "--output_dir", str(tmp_path / "fleet")])  # fmt: skip
    assert fleet["rounds"] == 1 and (tmp_path / "fleet" / "backbone.pt").is_file()
    out = tmp_path / "detect"
    summary = evaluate_main(["--checkpoint", str(tmp_path / "fleet" / "backbone.pt"), "--config",
                             "configs/vehicles/detect.yaml", "--train_samples", "12",
                             "--test_samples", "6", "--det_epochs", "1", "--labels", "4",
                             "--select", "typiclust", "--self_train", "--num_workers", "0",
                             "--track_energy", "false", "--output_dir", str(out)])  # fmt: skip
    assert summary["classes"] == ["ambulance", "bus", "car", "motorcycle", "truck"]
    assert summary["labeled_images"] == 4 and 0 <= summary["map_50"] <= 1
    assert summary["self_train"]["unlabeled_images"] == 8
    chosen = json.loads((out / "selection.json").read_text())["ids"]
    assert len(chosen) == 4 and all(name.endswith(".jpg") for name in chosen)
    assert np.isfinite(summary["loss_last_epoch"])
