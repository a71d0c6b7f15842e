"""The detection transfer protocol: fine-tune Faster R-CNN over the backbone on a seeded fraction
of the labeled training images (horizontal flips), then mAP on the validation split with
torchmetrics (COCO's mAP@[.5:.95], mAP@.5, AP per class) and a picture of predicted boxes."""

from __future__ import annotations

import copy
import math
import time

import lightning.pytorch as L
import numpy as np
import torch
from lightly.utils.scheduler import cosine_warmup_schedule
from lightning.pytorch.callbacks import TQDMProgressBar
from torch.utils.data import DataLoader, Dataset
from torchmetrics.detection import MeanAveragePrecision
from torchvision import tv_tensors
from torchvision.ops import box_iou
from torchvision.transforms import v2
from tqdm.auto import tqdm

from ssl_zoo.config import inference_device
from ssl_zoo.cost import StepFlops, gflops
from ssl_zoo.data import IMAGENET_NORMALIZE, SYNTHETIC_NORMALIZE, image_digests, image_ids
from ssl_zoo.detection.data import (
    DetectionImages,
    concatenated,
    labeled_subset_indices,
    largest_object_classes,
)
from ssl_zoo.errors import UserError, unknown_choice
from ssl_zoo.evaluation.protocol import Protocol
from ssl_zoo.evaluation.selection import Pool, check_budget, choose_labeled

DETECTION_DATASETS = ("scenes", "coco")
DETECTION_NORMALIZE = {"scenes": SYNTHETIC_NORMALIZE, "coco": IMAGENET_NORMALIZE}


class Flipped(Dataset):
    """Training items with a random horizontal flip of the image and its boxes."""

    def __init__(self, base: DetectionImages):
        self.base, self.flip = base, v2.RandomHorizontalFlip()

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, target = self.base[index]
        boxes = tv_tensors.BoundingBoxes(target["boxes"], format="XYXY",
                                         canvas_size=tuple(image.shape[-2:]))  # fmt: skip
        image, boxes = self.flip(tv_tensors.Image(image), boxes)
        return image.as_subclass(torch.Tensor), {**target, "boxes": boxes.as_subclass(torch.Tensor)}


def collate(batch):
    images, targets = zip(*batch, strict=True)
    return [i.float() / 255 for i in images], list(targets)


class DetectorFineTuner(L.LightningModule):
    def __init__(self, detector, lr: float, warmup_fraction: float = 0.05):
        super().__init__()
        self.detector, self.lr, self.warmup_fraction = detector, lr, warmup_fraction

    def training_step(self, batch, batch_idx):
        images, targets = batch
        losses = self.detector(images, targets)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            # Before the optimizer writes NaN into the weights and mAP reads 0 for no reason.
            parts = ", ".join(f"{k} {v.item():.3g}" for k, v in losses.items())
            raise UserError(f"detection fine-tuning diverged at step {self.global_step}: "
                            f"{parts}; lower --det_lr (now {self.lr:g})")  # fmt: skip
        self.log("detection/loss", loss, prog_bar=True, batch_size=len(images))
        return loss

    def configure_optimizers(self):
        params = [p for p in self.detector.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=self.lr, momentum=0.9, weight_decay=1e-4)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = max(1, round(self.warmup_fraction * total))
        # Linear warm-up (a detector's first steps from new heads diverge without it), then cosine.
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_warmup_schedule(step, total, 1.0, 0.0, warmup, 0.0)
        )
        return [optimizer], [{"scheduler": scheduler, "interval": "step"}]


def fine_tune_detector(detector, labeled: DetectionImages, steps: int, lr: float,
                       batch_size: int, num_workers: int, seed: int, accelerator: str):  # fmt: skip
    """Fine-tune on the labeled images for `steps` steps; returns (tuner, labeled images, mean
    loss of the first and of the last epoch, training FLOPs). The FLOPs are the first step's
    count times the steps: COCO images of other shapes and box counts vary around it."""
    L.seed_everything(seed, verbose=False)
    loader = DataLoader(Flipped(labeled), batch_size=min(batch_size, len(labeled)), shuffle=True,
                        num_workers=num_workers, collate_fn=collate,
                        persistent_workers=num_workers > 0)  # fmt: skip
    tuner = DetectorFineTuner(detector, lr)
    losses, flops = LossTrace(), StepFlops()
    # tqdm's bar, not Lightning's default Rich one, which shows nothing outside a terminal: a
    # benchmark's log shows where a 10-minute fine-tuning is
    trainer = L.Trainer(max_steps=steps, max_epochs=-1, accelerator=accelerator, devices=1,
                        logger=False, enable_checkpointing=False, enable_model_summary=False,
                        log_every_n_steps=1,
                        callbacks=[losses, flops, TQDMProgressBar(refresh_rate=10)])  # fmt: skip
    trainer.fit(tuner, loader)
    return (tuner, len(labeled), losses.first_epoch_mean, losses.last_epoch_mean,
            flops.total(trainer.global_step))  # fmt: skip


def epoch_steps(images: int, epochs: int, batch_size: int) -> int:
    """Steps of `epochs` epochs over `images` images (the last batch of each kept, as the
    loader keeps it)."""
    return epochs * math.ceil(images / min(batch_size, images))


class LossTrace(L.Callback):
    """Mean training loss of the first and of the last epoch."""

    def __init__(self):
        self.epochs: list[list[float]] = []

    def on_train_epoch_start(self, trainer, module):
        self.epochs.append([])

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.epochs[-1].append(float(outputs["loss"]))

    @property
    def first_epoch_mean(self) -> float:
        return sum(self.epochs[0]) / len(self.epochs[0])

    @property
    def last_epoch_mean(self) -> float:
        return sum(self.epochs[-1]) / len(self.epochs[-1])


@torch.no_grad()
def predict(detector, data: DetectionImages, batch_size: int, device) -> list[dict]:
    detector.eval().to(device)
    loader = DataLoader(data, batch_size=batch_size, collate_fn=collate)
    predictions = []
    for images, _ in tqdm(loader, desc="detecting", unit="batch", leave=False):
        out = detector([i.to(device) for i in images])
        predictions += [{k: v.cpu() for k, v in p.items()} for p in out]
    return predictions


PSEUDO_BOX_SCORE = 0.7  # self-training keeps the teacher's boxes scored at least this


@torch.no_grad()
def detection_embeddings(backbone, data: DetectionImages, size: int, normalize: dict,
                         batch_size: int, device) -> torch.Tensor:  # fmt: skip
    """The backbone's pooled features of each image resized to size x size: what label
    selection chooses from (the boxes are not read)."""
    backbone = copy.deepcopy(backbone).eval().to(device)
    mean = torch.tensor(normalize["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(normalize["std"]).view(1, 3, 1, 1)
    features = []
    for start in tqdm(range(0, len(data), batch_size), desc="embeddings", leave=False):
        batch = [v2.functional.resize(data[i][0], [size, size], antialias=True)
                 for i in range(start, min(start + batch_size, len(data)))]  # fmt: skip
        x = (torch.stack(batch).float() / 255 - mean) / std
        features.append(backbone(x.to(device)).float().cpu())
    return torch.cat(features)


def pseudo_boxes(
    predictions: list[dict], pool: DetectionImages, min_score: float = PSEUDO_BOX_SCORE
):
    """The teacher's boxes scored >= min_score as labels of the unlabeled images that get any,
    and their quality against the withheld true boxes (same class, IoU >= 0.5): precision of the
    pseudo-boxes and recall of the true ones."""
    images, boxes, labels = [], [], []
    kept = matched = found = total = 0
    for index, p in enumerate(predictions):
        keep = p["scores"] >= min_score
        box, label = p["boxes"][keep], p["labels"][keep]
        truth = pool.target(index)
        total += len(truth["boxes"])
        if len(box) and len(truth["boxes"]):
            same = (label[:, None] == truth["labels"][None]) & (box_iou(box, truth["boxes"]) >= 0.5)
            matched += int(same.any(1).sum())
            found += int(same.any(0).sum())
        kept += len(box)
        if len(box):
            images.append(pool.images[index])
            boxes.append(box.numpy().astype(np.float32))
            labels.append((label - 1).numpy().astype(np.int64))
    quality = {
        "pseudo_score_threshold": min_score,
        "unlabeled_images": len(pool),
        "pseudo_labeled_images": len(images),
        "pseudo_boxes": kept,
        "pseudo_box_precision": round(matched / kept, 4) if kept else None,
        "pseudo_box_recall": round(found / total, 4) if total else None,
    }
    return DetectionImages(images, boxes, labels), quality


def mean_average_precision(predictions: list[dict], data: DetectionImages, classes: list[str]):
    """COCO mAP@[.5:.95], mAP@.5 and AP per class name (-1 where a class has no box in data)."""
    metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=True,
                                  backend="pycocotools")  # fmt: skip
    targets = [data.target(i) for i in range(len(data))]
    metric.update(predictions, targets)
    result = metric.compute()
    per_class = dict.fromkeys(classes, -1.0)
    for label, ap in zip(result["classes"].reshape(-1).tolist(),
                         result["map_per_class"].reshape(-1).tolist(), strict=True):  # fmt: skip
        per_class[classes[label - 1]] = round(ap, 4)
    return {"map": round(float(result["map"]), 4), "map_50": round(float(result["map_50"]), 4),
            "map_per_class": per_class}  # fmt: skip


def detection_plot(detectors: dict[str, list[dict]], data: DetectionImages, classes: list[str],
                   path, title: str, count: int = 6, min_score: float = 0.5):  # fmt: skip
    """One row of the first `count` images per detector (its name: its predictions): predicted
    boxes scored >= min_score (solid, with class and score) over the ground truth (dashed,
    white)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    count = min(count, len(data))
    fig, axes = plt.subplots(len(detectors), count, figsize=(3 * count, 3.3 * len(detectors)),
                             squeeze=False)  # fmt: skip
    colours = plt.get_cmap("tab10")
    for row, (name, predictions) in zip(axes, detectors.items(), strict=True):
        for ax, index in zip(row, range(count), strict=True):
            image, target = data[index]
            ax.imshow(image.permute(1, 2, 0).numpy())
            for x0, y0, x1, y1 in target["boxes"].tolist():
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="white",
                                       ls="--"))  # fmt: skip
            p = predictions[index]
            for box, label, score in zip(p["boxes"].tolist(), p["labels"].tolist(),
                                         p["scores"].tolist(), strict=True):  # fmt: skip
                if score < min_score:
                    continue
                x0, y0, x1, y1 = box
                colour = colours(label % 10)
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=colour, lw=1.5))
                ax.text(x0, y0, f"{classes[label - 1]} {score:.2f}", color=colour, fontsize=7,
                        va="bottom")  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


class Detection(Protocol):
    """Detection transfer: a detector over the backbone, fine-tuned on the labeled images of a
    detection dataset, scored on its validation images."""

    name = "detection"
    on_features = False
    self_trains = True
    datasets = DETECTION_DATASETS

    def __init__(self, detector: str = "fasterrcnn", det_size: int = 128, det_epochs: int = 12,
                 det_lr: float | None = None, det_batch_size: int = 8, trainable_layers: int = 3,
                 trainable_bn: bool = False, classes: str | None = None,
                 self_train: bool = False):  # fmt: skip
        from ssl_zoo.detection.model import DETECTOR_LR, DETECTORS

        if detector not in DETECTORS:
            raise unknown_choice("detector", detector, DETECTORS)
        if not 0 <= trainable_layers <= 5:
            raise UserError(f"trainable_layers must be in [0, 5], got {trainable_layers}")
        det_lr = DETECTOR_LR[detector] if det_lr is None else det_lr
        if min(det_size, det_epochs, det_batch_size) < 1 or det_lr <= 0:
            raise UserError("det_size, det_epochs, det_batch_size and det_lr must be > 0")
        self.detector, self.input_size, self.epochs, self.lr = (
            detector,
            det_size,
            det_epochs,
            det_lr,
        )
        self.batch_size, self.trainable_layers = det_batch_size, trainable_layers
        self.trainable_bn, self.self_train = trainable_bn, self_train
        self.classes = [c.strip() for c in classes.split(",")] if classes else None

    def run(self, bench) -> dict:
        """The whole protocol (bench: evaluate.py's config, the backbone, its metadata and the
        output directory); returns what results.json reports of it."""
        from ssl_zoo.detection.data import load_detection
        from ssl_zoo.detection.model import build_detector

        cfg, backbone, out_dir = bench.cfg, bench.model, bench.out_dir
        # Images are normalised as the backbone's pretraining data was (its checkpoint says
        # how); a random backbone takes its dataset's statistics.
        normalize = bench.meta.get("normalize") or DETECTION_NORMALIZE[cfg.dataset]
        title = f"{cfg.checkpoint} on {cfg.dataset} ({cfg.label_fraction:g} of the labels)"
        tic = time.time()
        splits = load_detection(cfg.dataset, cfg.data_dir, self.classes, cfg.train_samples,
                                cfg.test_samples)  # fmt: skip
        device = inference_device(cfg.accelerator)

        def fine_tuned(labeled: DetectionImages, steps: int):
            detector = build_detector(copy.deepcopy(backbone), len(splits.classes), self.input_size,
                                      normalize, self.trainable_layers, self.trainable_bn,
                                      self.detector)  # fmt: skip
            return detector, *fine_tune_detector(detector, labeled, steps, self.lr,
                                                 self.batch_size, cfg.num_workers, cfg.seed,
                                                 cfg.accelerator)[1:]  # fmt: skip

        selected = None
        if cfg.few_labels:
            ids = image_ids(splits.train, cfg.data_dir)
            largest = largest_object_classes(splits.train)
            check_budget(cfg, ids, largest)
            features = detection_embeddings(backbone, splits.train, self.input_size, normalize,
                                            self.batch_size, device)  # fmt: skip
            pool = Pool(ids, image_digests(splits.train), features, largest, len(splits.classes),
                        lambda i: splits.train[i][0].permute(1, 2, 0).numpy())  # fmt: skip
            indices, selected = choose_labeled(cfg, pool, cfg.encoder_id(), out_dir)
        else:
            indices = labeled_subset_indices(len(splits.train), cfg.label_fraction, cfg.seed)
        labeled_images = splits.train.subset(indices)
        seconds = {"data": time.time() - tic}
        tic = time.time()
        steps = epoch_steps(len(labeled_images), self.epochs, self.batch_size)
        detector, labeled, first_loss, last_loss, flops = fine_tuned(labeled_images, steps)
        seconds["fine_tune"] = time.time() - tic
        tic = time.time()
        predictions = predict(detector, splits.val, self.batch_size, device)
        # The val predictions, for pictures that set detectors side by side (benchmarks/vehicles.py)
        torch.save(predictions, out_dir / "predictions.pt")
        scores = mean_average_precision(predictions, splits.val, splits.classes)
        seconds["map"] = time.time() - tic
        self_trained = None
        if self.self_train:
            tic = time.time()
            taken = set(indices)
            unlabeled = [i for i in range(len(splits.train)) if i not in taken]
            pool = splits.train.subset(unlabeled)
            pseudo, quality = pseudo_boxes(predict(detector, pool, self.batch_size, device), pool)
            # The student takes the teacher's steps (not its epochs: the pseudo-labeled photos
            # outnumber the labeled ones several-fold), so self-training costs twice the teacher.
            student, *_, student_flops = fine_tuned(concatenated(labeled_images, pseudo), steps)
            student_predictions = predict(student, splits.val, self.batch_size, device)
            torch.save(student_predictions, out_dir / "predictions-self-trained.pt")
            self_trained = {**mean_average_precision(student_predictions, splits.val,
                                                     splits.classes),
                            **quality, "gflops": gflops(student_flops)}  # fmt: skip
            seconds["self_train"] = time.time() - tic
            flops += student_flops
        plot = None
        if cfg.plot:
            plot = str(detection_plot({"predicted (solid) and true (dashed)": predictions},
                                      splits.val, splits.classes, out_dir / "detections.png",
                                      title))  # fmt: skip
        return {
            **scores,
            "detector": self.detector,
            "classes": splits.classes,
            "label_fraction": cfg.label_fraction,
            "labeled_images": labeled,
            "steps": steps,
            "selection": selected and {k: selected[k] for k in ("rule", "labels")},
            "self_train": self_trained,
            "val_images": len(splits.val),
            "loss_first_epoch": round(first_loss, 4),
            "loss_last_epoch": round(last_loss, 4),
            "gflops": gflops(flops),
            "seconds_per_part": {k: round(v, 1) for k, v in seconds.items()},
            "plot": plot,
            "results": {"detection": {k: scores[k] for k in ("map", "map_50")}},
        }
