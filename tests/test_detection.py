"""Detection transfer: the street scenes' boxes, COCO JSON loading, mAP, the detector over a
checkpoint's backbone, and evaluate.py's detection protocol end to end."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ssl_zoo import scenes
from ssl_zoo.backbones import BackboneSpec, build_backbone, save_backbone
from ssl_zoo.data import SYNTHETIC_NORMALIZE
from ssl_zoo.detection.data import load_detection
from ssl_zoo.detection.model import build_detector
from ssl_zoo.detection.protocol import mean_average_precision
from ssl_zoo.errors import UserError, run_main
from ssl_zoo.jobs.evaluate import main as evaluate_main
from ssl_zoo.jobs.train import main as train_main

SHARED_COCO = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco128"


def test_scene_boxes_are_the_bounds_of_their_drawn_objects():
    """The same scenes rendered without their objects differ from them exactly inside the
    boxes, and every box edge touches a changed pixel (the box is tight)."""
    images, boxes, labels = scenes.generate(12, size=96, seed=5)
    bare, no_boxes, _ = scenes.generate(12, size=96, seed=5, objects=False)
    assert all(len(b) == 0 for b in no_boxes)
    for image, empty, found, classes in zip(images, bare, boxes, labels, strict=True):
        changed = (image != empty).any(-1)
        inside = np.zeros_like(changed)
        assert 1 <= len(found) <= scenes.MAX_OBJECTS and set(classes) <= {0, 1, 2}
        for x0, y0, x1, y1 in found.astype(int):
            assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96
            assert not inside[y0:y1, x0:x1].any()  # objects do not overlap
            inside[y0:y1, x0:x1] = True
            box = changed[y0:y1, x0:x1]
            assert box[0].any() and box[-1].any() and box[:, 0].any() and box[:, -1].any()
        assert not (changed & ~inside).any()
    # Scene i depends on (seed, i) only: fewer scenes are a prefix of more.
    assert np.array_equal(scenes.generate(5, size=96, seed=5)[0], images[:5])


def write_coco(root: Path) -> Path:
    """A COCO layout with three images: one with a person, a car and a crowd region, one with a
    dog only, one with nothing."""
    categories = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]
    annotations = [
        {"id": 1, "image_id": 10, "category_id": 1, "bbox": [4, 6, 10, 20], "iscrowd": 0},
        {"id": 2, "image_id": 10, "category_id": 3, "bbox": [20, 30, 24, 12], "iscrowd": 0},
        {"id": 3, "image_id": 10, "category_id": 1, "bbox": [0, 0, 40, 40], "iscrowd": 1},
        {"id": 4, "image_id": 11, "category_id": 18, "bbox": [5, 5, 20, 20], "iscrowd": 0},
    ]
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
        images = []
        for image_id in (10, 11, 12):
            name = f"{image_id:012d}.jpg"
            Image.new("RGB", (64, 48), (image_id * 10, 80, 120)).save(root / split / name)
            images.append({"id": image_id, "file_name": name, "width": 64, "height": 48})
        (root / "annotations").mkdir(exist_ok=True)
        payload = {"images": images, "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(payload))
    return root


def test_coco_json_loads_corner_boxes_of_the_chosen_classes(tmp_path):
    splits = load_detection("coco", str(write_coco(tmp_path / "coco")), ["car", "person"])
    assert splits.classes == ["car", "person"] and len(splits.train) == len(splits.val) == 3
    image, target = splits.train[0]
    assert image.shape == (3, 48, 64) and image.dtype == torch.uint8
    # x, y, w, h -> corners; labels count from 1 in --classes order; the crowd region is gone.
    assert target["boxes"].tolist() == [[4, 6, 14, 26], [20, 30, 44, 42]]
    assert target["labels"].tolist() == [2, 1]
    # An image with only other classes, and one with none, stay as negatives.
    assert splits.train[1][1]["boxes"].shape == (0, 4) and len(splits.train[2][1]["labels"]) == 0
    every = load_detection("coco", str(tmp_path / "coco"), None)
    assert every.classes == ["person", "car", "dog"] and every.train[1][1]["labels"].tolist() == [3]


def test_map_of_ground_truth_is_one_and_of_shifted_boxes_lower():
    data = load_detection("scenes", None, None, train_samples=2, test_samples=20).val
    truth = [data[i][1] for i in range(len(data))]
    exact = [{**t, "scores": torch.ones(len(t["labels"]))} for t in truth]
    assert mean_average_precision(exact, data, list(scenes.CLASSES))["map"] == pytest.approx(1.0)
    shifted = []
    for p in exact:
        width = p["boxes"][:, 2] - p["boxes"][:, 0]
        shifted.append({**p, "boxes": p["boxes"] + torch.stack([width * 0.3, 0 * width] * 2, 1)})
    moved = mean_average_precision(shifted, data, list(scenes.CLASSES))
    assert 0 <= moved["map"] < 0.6 and set(moved["map_per_class"]) == set(scenes.CLASSES)


def test_the_detector_holds_the_checkpoints_backbone(tmp_path):
    spec = BackboneSpec("timm:resnet10t")
    torch.manual_seed(1)
    trained, _ = build_backbone(spec)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.5)  # far from any initialisation
    save_backbone(tmp_path / "backbone.pt", trained, spec, feature_dim=512)
    from ssl_zoo.jobs.evaluate import EvalConfig, load_encoder

    loaded, _, _ = load_encoder(EvalConfig(checkpoint=str(tmp_path / "backbone.pt")))
    random, _, _ = load_encoder(EvalConfig(checkpoint="random", backbone="timm:resnet10t"))
    detector = build_detector(loaded, 3, 64, SYNTHETIC_NORMALIZE, trainable_layers=2)
    body = detector.backbone.body.state_dict()
    for key, value in trained.state_dict().items():
        if key in body:  # BatchNorm's num_batches_tracked is not kept by its frozen copy
            assert torch.equal(body[key], value), key
    assert not torch.equal(random.state_dict()["conv1.0.weight"], body["conv1.0.weight"])
    # trainable_layers=2: layer3 and layer4 train, the stem, layer1 and layer2 do not.
    grads = {n.split(".")[0]: p.requires_grad for n, p in detector.backbone.body.named_parameters()}
    assert grads == {"conv1": False, "layer1": False, "layer2": False, "layer3": True,
                     "layer4": True}  # fmt: skip
    assert all(p.requires_grad for p in detector.backbone.fpn.parameters())


def test_a_random_baseline_is_built_as_the_checkpoint_it_stands_beside(tmp_path):
    """--backbone_args gives the random backbone the pretrained one's architecture (here a
    stride-16 last stage, as the 32-px recipes train); a checkpoint refuses other args."""
    from ssl_zoo.jobs.evaluate import EvalConfig, load_encoder

    def last_map(model):
        return model.forward_intermediates(torch.rand(1, 3, 64, 64), intermediates_only=True)[-1]

    spec = BackboneSpec("timm:resnet10t", args={"output_stride": 16})
    save_backbone(tmp_path / "backbone.pt", build_backbone(spec)[0], spec, feature_dim=512)
    random, _, meta = load_encoder(EvalConfig(checkpoint="random", backbone="timm:resnet10t",
                                              backbone_args={"output_stride": 16}))  # fmt: skip
    plain, _, _ = load_encoder(EvalConfig(checkpoint="random", backbone="timm:resnet10t"))
    assert meta["spec"]["args"] == {"output_stride": 16}
    assert last_map(random).shape[-1] == 4 and last_map(plain).shape[-1] == 2
    checkpoint = str(tmp_path / "backbone.pt")
    load_encoder(EvalConfig(checkpoint=checkpoint, backbone_args={"output_stride": 16}))
    with pytest.raises(UserError, match="built with backbone_args {'output_stride': 16}, not {}"):
        load_encoder(EvalConfig(checkpoint=checkpoint, backbone_args={}))


def test_scenes_pretrain_then_detection_fine_tunes_and_reports_map(tmp_path):
    """train.py on the scenes (unlabeled, the kNN monitor on largest-object labels), then
    evaluate.py --protocol detection on its backbone.pt: the loss falls, and results.json holds
    mAP, AP per class and the picture of predicted boxes."""
    pretrained = train_main(["--config", "configs/detection/pretrain-scenes.yaml", "--train_samples",
                             "32", "--test_samples", "16", "--image_size", "32", "--backbone",
                             "timm:resnet10t", "--batch_size", "16", "--max_epochs", "1",
                             "--num_workers", "0", "--knn_k", "5", "--output_dir",
                             str(tmp_path / "ssl")])  # fmt: skip
    assert pretrained["dataset"] == "scenes" and 0 <= pretrained["knn_top1"] <= 1
    out = tmp_path / "det"
    checkpoint = str(tmp_path / "ssl" / "backbone.pt")
    summary = evaluate_main(["--checkpoint", checkpoint, "--config",
                             "configs/detection/scenes.yaml", "--train_samples", "12",
                             "--test_samples", "8", "--label_fraction", "1", "--det_size", "64",
                             "--det_epochs", "3", "--num_workers", "0", "--output_dir", str(out)])  # fmt: skip
    assert summary["protocol"] == "detection" and summary["labeled_images"] == 12
    assert summary["loss_last_epoch"] < summary["loss_first_epoch"]
    assert summary["gflops"] > 0
    assert 0 <= summary["map"] <= summary["map_50"] <= 1
    assert set(summary["map_per_class"]) == set(scenes.CLASSES)
    assert json.loads((out / "results.json").read_text())["map"] == summary["map"]
    assert (out / "detections.png").stat().st_size > 5_000


@pytest.mark.parametrize("detector", ["retinanet", "fcos"])
def test_one_stage_detectors_fine_tune_at_their_own_learning_rate(tmp_path, detector):
    summary = evaluate_main(["--checkpoint", "random", "--backbone", "timm:resnet10t",
                             "--config", "configs/detection/scenes.yaml", "--detector", detector,
                             "--train_samples", "16", "--test_samples", "4", "--label_fraction",
                             "1", "--det_size", "64", "--det_epochs", "4", "--num_workers", "0",
                             "--plot", "false", "--output_dir", str(tmp_path)])  # fmt: skip
    assert summary["detector"] == detector
    assert summary["loss_last_epoch"] < summary["loss_first_epoch"]
    assert 0 <= summary["map"] <= summary["map_50"] <= 1
    assert set(summary["map_per_class"]) == set(scenes.CLASSES)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--classes", "person,unicorn"], "unknown class(es) unicorn"),
        (["--data_dir", "MISSING"], "COCO annotations not found"),
        (["--dataset", "cifar10"], "unknown dataset for --protocol detection 'cifar10'"),
        (["--trainable_layers", "6"], "trainable_layers must be in [0, 5]"),
        (["--detector", "yolo"], "unknown detector 'yolo'"),
        (["--det_lr", "1e12", "--det_size", "64"], "detection fine-tuning diverged at step"),
    ],
)
def test_bad_detection_input_is_one_line(tmp_path, capsys, args, message):
    coco = write_coco(tmp_path / "coco")
    base = ["--checkpoint", "random", "--backbone", "timm:resnet10t", "--protocol", "detection",
            "--dataset", "coco", "--data_dir", str(coco), "--output_dir", str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        run_main(evaluate_main, [*base, *args])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last


def test_an_image_listed_without_its_file_is_one_line(tmp_path, capsys):
    coco = write_coco(tmp_path / "coco")
    (coco / "train" / "000000000011.jpg").unlink()
    with pytest.raises(SystemExit):
        run_main(evaluate_main, ["--checkpoint", "random", "--backbone", "timm:resnet10t",
                                 "--protocol", "detection", "--dataset", "coco", "--data_dir",
                                 str(coco), "--output_dir", str(tmp_path / "out")])  # fmt: skip
    assert "lists 000000000011.jpg, which is not in" in capsys.readouterr().err


@pytest.mark.skipif(not SHARED_COCO.is_dir(), reason="../shared/data/coco128 is not here")
def test_coco128_person_and_car_load():
    splits = load_detection("coco", str(SHARED_COCO), ["person", "car"])
    assert len(splits.train) == len(splits.val) == 128
    labels = torch.cat([splits.train[i][1]["labels"] for i in range(len(splits.train))])
    # 254 person and 46 car boxes in its train JSON, less crowd regions and slivers.
    assert 200 < (labels == 1).sum() <= 254 and 30 < (labels == 2).sum() <= 46
