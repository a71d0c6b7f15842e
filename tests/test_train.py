"""End-to-end runs of train.py on tiny synthetic data: outputs, JSON line, budget, resume, W&B."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, last_json_line, run_script, tiny_args, write_image_folder
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode
from wandb_records import history_keys

from ssl_zoo.backbones import BackboneSpec, build_backbone
from ssl_zoo.config import TrainConfig, parse_config
from ssl_zoo.curves import column
from ssl_zoo.errors import UserError, run_main
from ssl_zoo.jobs.train import main
from ssl_zoo.loggers import read_csv_rows
from ssl_zoo.methods import METHODS

SUMMARY_KEYS = {"method", "dataset", "backbone", "epochs", "knn_top1_init", "knn_top1", "run_dir",
                "seconds", "gflops_per_step", "gflops", "peak_rss_mb", "energy_kwh", "energy_method",
                "co2_kg"}  # fmt: skip


def test_train_script_writes_a_finished_run(tmp_path):
    out = tmp_path / "run"
    proc = run_script("train.py", *tiny_args(out, "--max_epochs", "2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # No third-party advertisement or internal note in the user's terminal.
    assert "Tip:" not in proc.stderr and "stepping batches" not in proc.stderr
    summary = last_json_line(proc.stdout)
    assert SUMMARY_KEYS <= set(summary)
    assert summary["epochs"] == 2 and summary["steps"] == 8
    # A SimCLR step: two views of 16 images forward through the backbone, then backward, which
    # costs about twice the forward (the heads and the loss are small beside the backbone).
    with FlopCounterMode(display=False) as forward:
        build_backbone(BackboneSpec("timm:resnet10t"))[0](torch.randn(32, 3, 32, 32))
    assert 2.8 < summary["gflops_per_step"] * 1e9 / forward.get_total_flops() < 3.3
    assert summary["gflops"] == pytest.approx(8 * summary["gflops_per_step"], abs=0.01)
    assert 100 < summary["peak_rss_mb"] < 24 * 1024
    # 2 cores for ~10 s: some watts (RAM estimated from its size) for seconds, far under 1 Wh.
    assert 0 < summary["energy_kwh"] < 1e-3 and summary["co2_kg"] > 0
    assert summary["energy_method"] in ("measured", "estimated")
    assert 0 <= summary["knn_top1_init"] <= 1 and 0 <= summary["knn_top1"] <= 1
    split = summary["seconds_split"]  # 8 steps, 3 kNN monitors, the rest data, checkpoints, setup
    assert all(split[k] > 0 for k in ("training", "monitor", "io")), split
    assert sum(split.values()) == pytest.approx(summary["seconds"], abs=0.2)
    for name in (
        "metrics.csv",
        "curves.png",
        "config.yaml",
        "backbone.pt",
        "summary.json",
        "checkpoints/last.ckpt",
    ):
        assert (out / name).is_file(), name
    rows = read_csv_rows(out / "metrics.csv")
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    knn = [float(r["val/knn_top1"]) for r in rows if r.get("val/knn_top1")]
    assert len(losses) == 8 and all(loss == loss for loss in losses)
    assert len(knn) == 3  # at initialisation and after each epoch
    # curves.png plots them against the step, which (unlike the epoch column) tells the kNN at
    # initialisation from the one after epoch 1.
    steps, plotted = column(rows, "step", "val/knn_top1")
    assert plotted == knn and steps[0] == 0 and steps == sorted(set(steps))
    assert Image.open(out / "curves.png").size == (1000, 360)  # two panels side by side
    # Beside every kNN figure, what it cost so far: none at initialisation, 4 steps' FLOPs
    # after epoch 1, all 8 after epoch 2; energy climbing to (at most) the run's total.
    monitor = [r for r in rows if r.get("val/knn_top1")]
    spent = [float(r["cost/gflops"]) for r in monitor]
    assert spent == pytest.approx([0, 4 * summary["gflops_per_step"], summary["gflops"]], abs=0.01)
    kwh = [float(r["cost/energy_kwh"]) for r in monitor]
    assert 0 < kwh[0] < kwh[1] < kwh[2] <= summary["energy_kwh"]
    payload = torch.load(out / "backbone.pt", weights_only=False)
    assert payload["spec"]["name"] == "timm:resnet10t" and payload["image_size"] == 32
    assert json.loads((out / "summary.json").read_text()) == summary


def test_config_files_compose_with_flags(tmp_path):
    out = tmp_path / "run"
    summary = main(["--config", "configs/quickstart.yaml", "--config", "configs/methods/byol.yaml",
                    *tiny_args(out), "--optimizer", "adamw", "--lr", "1e-3"])  # fmt: skip
    config = (out / "config.yaml").read_text()
    assert summary["method"] == "byol"
    assert (
        "momentum_start: 0.9\n" in config
        and "lr: 0.001" in config
        and "min_scale: 0.4" not in config
    )


def test_extra_images_add_training_steps_not_monitor_images(tmp_path):
    """--extra_images: a folder of unlabeled photos of another size trains beside the dataset."""
    extra = write_image_folder(tmp_path / "public", classes=("x",), per_class=16, size=48)
    summary = main(tiny_args(tmp_path / "run", "--extra_images", f"[{extra}]"))
    # 64 synthetic images and 32 extra at batch 16: 6 steps an epoch, not 4
    assert summary["steps"] == 6 and summary["knn_top1"] is not None
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config["extra_images"] == [str(extra)]


def test_time_budget_anneals_and_ends_cleanly(tmp_path):
    out = tmp_path / "run"
    summary = main(tiny_args(out, "--max_epochs", "1000", "--max_time", "0.1"))
    assert summary["stopped_by"] == "max_time" and summary["knn_top1"] is not None
    lrs = [float(r["train/lr"]) for r in read_csv_rows(out / "metrics.csv") if r.get("train/lr")]
    assert lrs[-1] < 0.1 * max(lrs)  # annealed to (nearly) zero as the budget ran out
    assert (out / "checkpoints" / "last.ckpt").is_file() and (out / "backbone.pt").is_file()


def logged_losses(run) -> list[tuple[int, float]]:
    """(step, training loss) of each logged step of a run."""
    rows = read_csv_rows(run / "metrics.csv")
    return [(int(r["step"]), float(r["train/loss"])) for r in rows if r.get("train/loss")]


def test_killed_run_resumes_to_the_uninterrupted_run(tmp_path):
    """kill -9 once the first checkpoint is written (after epoch 1's monitor), then --resume:
    the same per-step losses and final kNN as a run never interrupted, since every epoch's
    random streams (views, shuffling) are seeded from (seed, epoch)."""
    args = ["--max_epochs", "4"]
    whole = main(tiny_args(tmp_path / "whole", *args))
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *tiny_args(out, *args)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        while proc.poll() is None and not (out / "checkpoints" / "last.ckpt").exists():
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert not (out / "summary.json").exists(), "the run finished before it could be killed"
    assert not list((out / "checkpoints").glob("*.partial"))
    resumed = main(tiny_args(out, *args, "--resume", "true"))
    with pytest.raises(UserError, match="already holds a finished run; choose another"):
        main(tiny_args(out, *args))

    resumed_log = logged_losses(out)
    assert len(resumed_log) == whole["steps"] == 16
    steps, resumed_losses = zip(*resumed_log, strict=True)
    assert list(steps) == list(range(16))
    assert resumed_losses == pytest.approx(
        [loss for _, loss in logged_losses(tmp_path / "whole")], rel=1e-5
    )
    assert resumed["knn_top1"] == pytest.approx(whole["knn_top1"], abs=1e-6)

    # What each kNN figure cost runs on across the kill: the FLOPs as in the uninterrupted run,
    # the energy from where the checkpoint left it (the new tracker starts at 0).
    def spent(run, key):
        return [float(r[key]) for r in read_csv_rows(run / "metrics.csv") if r.get(key)]

    assert spent(out, "cost/gflops") == pytest.approx(spent(tmp_path / "whole", "cost/gflops"))
    kwh = spent(out, "cost/energy_kwh")
    assert len(kwh) == 5 and all(a < b for a, b in zip(kwh, kwh[1:], strict=False)), kwh


def test_killed_mid_epoch_run_resumes_to_the_uninterrupted_run(tmp_path):
    """kill -9 after a checkpoint taken mid-epoch (--checkpoint_minutes 0.001: after nearly every
    step), then --resume: the loader skips the batches the epoch had trained on and the random
    streams continue from the checkpoint, so the losses and kNN are the uninterrupted run's."""
    args = ["--max_epochs", "3", "--batch_size", "8", "--checkpoint_minutes", "0.001"]
    steps_per_epoch = 64 // 8
    whole = main(tiny_args(tmp_path / "whole", *args))
    for attempt in range(3):  # until the kept checkpoint is a mid-epoch one
        out = tmp_path / f"killed{attempt}"
        ckpt = out / "checkpoints" / "last.ckpt"
        proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *tiny_args(out, *args)],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            seen = set()
            while proc.poll() is None and len(seen) < 4 + attempt:  # a few checkpoints in
                if ckpt.exists():
                    seen.add(ckpt.stat().st_mtime_ns)
                time.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait()
        assert not (out / "summary.json").exists(), "the run finished before it could be killed"
        step = torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"]
        if step % steps_per_epoch:
            break
    assert step % steps_per_epoch, f"no mid-epoch checkpoint in 3 tries (last at step {step})"
    resumed = main(tiny_args(out, *args, "--resume", "true"))

    # Lightning writes a step's row after that step's checkpoint: killed in between, the row of
    # the checkpoint's own step is lost (the kill here comes within 10 ms of the checkpoint).
    resumed_losses, whole_losses = dict(logged_losses(out)), dict(logged_losses(tmp_path / "whole"))
    assert len(whole_losses) == whole["steps"] == 24
    assert set(whole_losses) - set(resumed_losses) <= {step - 1}, sorted(resumed_losses)
    assert resumed_losses == pytest.approx({k: whole_losses[k] for k in resumed_losses}, rel=1e-5)
    assert resumed["knn_top1"] == pytest.approx(whole["knn_top1"], abs=1e-6)


def test_long_epochs_are_checkpointed_every_checkpoint_minutes(tmp_path):
    """With no monitor epoch in the run (kNN every 5 of 2 epochs), only the time trigger can
    have written last.ckpt: 0.001 minutes puts one after nearly every step."""
    out = tmp_path / "run"
    main(tiny_args(out, "--max_epochs", "2", "--knn_every_n_epochs", "5",
                   "--checkpoint_minutes", "0.001"))  # fmt: skip
    saved = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert 2 <= saved["global_step"] <= 8
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["last.ckpt"]


def test_corrupt_checkpoint_on_resume_is_one_line_and_kept(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"truncated")
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, tiny_args(out, "--resume", "true"))
    assert exit_info.value.code == 2
    assert "last.ckpt is unreadable (UnpicklingError); it was kept" in capsys.readouterr().err
    assert (out / "checkpoints" / "last.ckpt").read_bytes() == b"truncated"


def mount_tmpfs(path, megabytes: int, remount: bool = False) -> bool:
    path.mkdir(exist_ok=True)
    options = f"{'remount,' if remount else ''}size={megabytes}m"
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode == 0  # fmt: skip


def test_a_full_disk_keeps_the_last_checkpoint_and_the_run_resumes(tmp_path, capsys):
    """A disk with room for one checkpoint (42 MB here) but not for the next one's copy beside
    it: epoch 2's write fails, epoch 1's last.ckpt stays whole, the run ends in one line, and
    with space freed --resume finishes it."""
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, 70):
        pytest.skip("needs permission to mount a small tmpfs")
    try:
        out = disk / "run"
        with pytest.raises(SystemExit) as exit_info:
            run_main(main, tiny_args(out, "--max_epochs", "2"))
        assert exit_info.value.code == 1
        err = capsys.readouterr().err
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: no space left on the device writing "), last
        assert "last.ckpt" in last and "--resume true" in last and "Traceback" not in err
        assert [p.name for p in (out / "checkpoints").iterdir()] == ["last.ckpt"]
        saved = torch.load(
            out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
        )
        assert saved["global_step"] == 4  # epoch 1's, whole
        assert not (out / "summary.json").exists()
        assert mount_tmpfs(disk, 300, remount=True)
        resumed = main(tiny_args(out, "--max_epochs", "2", "--resume", "true"))
        assert resumed["steps"] == 8 and (out / "summary.json").is_file()
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_wandb_offline_run_records_the_metrics(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no key, so offline
    out = tmp_path / "run"
    summary = main(tiny_args(out, "--logger", "wandb", "--wandb_group", "tests"))
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((out / "wandb").iterdir())
    run_files = list(runs[0].glob("*.wandb"))
    assert len(run_files) == 1
    keys = history_keys(run_files[0])
    assert {"train/loss", "val/knn_top1"} <= keys, keys
    assert (out / "metrics.csv").is_file() and summary["knn_top1"] is not None


BAD_INPUTS = [
    (["--method", "simclrr"], "unknown method 'simclrr'; valid choices: barlowtwins, byol, dino"),
    (["--backbone", "resnet7"], "unknown backbone 'resnet7'; valid choices:"),
    (["--dataset", "mnist"], "unknown dataset 'mnist'; valid choices:"),
    (["--logger", "tensorboard"], "unknown logger 'tensorboard'; valid choices: csv, wandb"),
    (["--max_epochs", "0"], "max_epochs must be >= 1"),
    (["--batch_size", "1000"], "batch_size 1000 is larger than the training set (64 images)"),
    (
        ["--dataset", "imagefolder", "--data_dir", "/no/such/dir"],
        "directory not found: /no/such/dir",
    ),
    (["--method_args", "{tau: 1}"], "unknown method_args tau for simclr"),
    (["--precision", "fp8"], "unknown precision 'fp8'; valid choices:"),
    (["--precision", "64-true"], "unknown precision '64-true'; valid choices:"),  # was a traceback
    (["--accelerator", "abacus"], "unknown accelerator 'abacus'; valid choices: auto, cpu, cuda"),
    (["--collapse", "ignore"], "collapse must be one of warn, stop, off"),
    (["--strategy", "fsdp"], "unknown strategy 'fsdp'; valid choices: auto, ddp"),
    (["--devices", "0"], "devices must be >= 1 (got 0)"),
    (["--seed", "-5"], "seed must be in [0, 2**32) (got -5)"),  # was numpy's traceback
    (["--train_samples", "0"], "train_samples must be >= 1 (got 0)"),  # was an IndexError
    # jsonargparse's own refusals, on one line instead of a usage dump and a wrapped message:
    (
        ["--max_epochs", "abc"],
        "Parser key \"max_epochs\": Expected a <class 'int'>. Got value: abc",
    ),
    (
        ["--no_such_option", "1"],
        "unrecognized arguments: --no_such_option 1 (options: train.py --help)",
    ),
    # Refused by lightly's or torchvision's transforms when made, or only when first drawn (a
    # crop scale above 1 was a traceback from the first training step):
    (["--views", "{cj_prob: 3}"], "the views cannot be made with the options {'cj_prob': 3}"),
    (["--views", "{min_scale: 2}"], "(uniform_ expects to return a [from, to) range"),
]
if not torch.cuda.is_available():
    BAD_INPUTS.append((["--accelerator", "gpu"], "--accelerator gpu: this machine has none"))


@pytest.mark.parametrize(("extra", "message"), BAD_INPUTS, ids=[b[0][1] for b in BAD_INPUTS])
def test_bad_input_is_one_line_and_nonzero(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, tiny_args(out, *extra))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, err
    assert "Traceback" not in err and "usage:" not in err, err
    assert not (out / "summary.json").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("views:\n  cj_prob: [0.8,\n", "is not valid YAML: "),  # named with its line, below
        ("max_epochs: 1\nno_such_key: 2\n", "Option 'no_such_key' is not accepted"),
    ],
)
def test_a_config_that_does_not_parse_is_one_line(tmp_path, capsys, text, message):
    """With several --config files, jsonargparse's own message named none of them."""
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("max_epochs: 1\n")
    bad.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, tiny_args(tmp_path / "run", "--config", str(good), f"--config={bad}"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err
    if "YAML" in message:
        assert err.startswith(f"error: --config {bad} is not valid YAML: ") and "(line 3, " in err


def test_an_output_dir_that_cannot_be_made_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:  # /proc takes no new directories, even from root
        run_main(main, tiny_args(Path("/proc/ssl_zoo_run")))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: cannot create --output_dir /proc/ssl_zoo_run: No such file or directory"


def test_output_dir_that_is_a_file_is_refused(tmp_path, capsys):
    taken = tmp_path / "notes.txt"
    taken.write_text("not a run")
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, tiny_args(taken))
    assert exit_info.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(f"--output_dir {taken} is a file; name a directory")
    )
    assert taken.read_text() == "not a run"


@pytest.mark.parametrize(
    ("lr", "message"),
    [("1e30", "at step 1: loss nan"), ("1e6", "the backbone's features are not finite")],
)
def test_diverging_run_stops_with_one_line(tmp_path, capsys, lr, message):
    """A NaN loss stops training before the optimizer step; a finite loss whose model overflows
    stops at the monitor (it used to die in RankMe's SVD). No summary, exit code 2."""
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        run_main(main, tiny_args(out, "--lr", lr, "--max_epochs", "2"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: training diverged") and message in last, last
    assert "lower the learning rate (--lr, now" in last
    assert not (out / "summary.json").exists()


def uniform_image_folder(root):
    """Images of one flat colour: with views that only crop, resize and flip (colour jitter and
    grey-scaling off, PIL views so no float noise is added), every view of every image is the
    same picture, so every embedding is the same point: collapse, as a real run can reach it."""
    for split in ("train", "test"):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(16):
                Image.new("RGB", (32, 32), (120, 90, 60)).save(root / split / name / f"{i}.png")
    return ["--dataset", "imagefolder", "--data_dir", str(root), "--augment", "pil",
            "--views", "{cj_prob: 0, random_gray_scale: 0, gaussian_blur: 0}",
            "--batch_size", "8", "--knn_k", "5", "--collapse_steps", "3", "--max_epochs", "2"]  # fmt: skip


def test_collapsing_run_stops_on_request(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        run_main(
            main, tiny_args(out, *uniform_image_folder(tmp_path / "flat"), "--collapse", "stop")
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: embeddings collapsed at step 2:"), last  # the 3rd step
    assert "lower the learning rate (--lr, now" in last
    assert not (out / "summary.json").exists()


def test_collapse_warns_by_default_and_only_when_collapsed(tmp_path, caplog):
    flat = uniform_image_folder(tmp_path / "flat")
    main(tiny_args(tmp_path / "a", *flat))
    warned = [r.getMessage() for r in caplog.records if "embeddings collapsed" in r.getMessage()]
    # Once per collapse: the count restarts only when the spread recovers.
    assert len(warned) == 1 and warned[0].startswith("embeddings collapsed at step 2:"), warned
    assert all(r.levelname == "WARNING" for r in caplog.records if r.getMessage() in warned)
    caplog.clear()
    main(tiny_args(tmp_path / "b", "--max_epochs", "2"))
    assert "collapsed" not in caplog.text


def test_unreadable_image_in_a_worker_names_its_path(tmp_path, image_folder):
    (image_folder / "train" / "b" / "broken.png").write_bytes(b"garbage")
    proc = run_script("train.py", *tiny_args(tmp_path / "run", "--dataset", "imagefolder",
                      "--data_dir", str(image_folder), "--batch_size", "4", "--num_workers", "1"))  # fmt: skip
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot read image") and "broken.png" in last, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_method_configs_start_from_the_shared_files_their_config_key_names(tmp_path, monkeypatch):
    """configs/common/ holds what the method configs share. Their `config:` key resolves beside
    the file, so a config read from another working directory (a SuperNode's, say) is the same
    recipe; the method's own keys override the shared ones, and the command line overrides both."""
    import yaml

    shared = yaml.safe_load((ROOT / "configs/common/photos-32px.yaml").read_text())
    cpu = yaml.safe_load((ROOT / "configs/common/cpu.yaml").read_text())
    monkeypatch.chdir(tmp_path)

    def parsed(method: str, *flags: str) -> TrainConfig:
        path = str(ROOT / "configs" / "methods" / f"{method}.yaml")
        return parse_config(TrainConfig, ["--config", path, *flags], "train.py")

    simclr = parsed("simclr")
    assert (simclr.views, simclr.backbone_args) == (shared["views"], shared["backbone_args"])
    assert simclr.lr == cpu["lr"] and simclr.method_args["temperature"] == 0.1
    nnclr = parsed("nnclr")  # its own views replace the shared block (32-px crops), the rest holds
    assert nnclr.backbone_args == shared["backbone_args"] and "input_size" not in nnclr.views
    dino = parsed("dino")  # views of its own (DINOTransform's names), the shared 2x2 last stage
    assert dino.backbone_args == shared["backbone_args"] and dino.views["global_crop_size"] == 28
    assert "input_size" not in dino.views and dino.lr == cpu["lr"]
    flags = parsed("simclr", "--lr", "0.01", "--views.min_scale", "0.5")
    assert flags.lr == 0.01 and flags.views == {**shared["views"], "min_scale": 0.5}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_configs_hold_the_cpu_recipe_and_compose_with_the_gpu_setting(method):
    path = f"configs/methods/{method}.yaml"
    cpu = parse_config(TrainConfig, ["--config", path], "train.py")
    assert cpu.method == method and cpu.optimizer == "adamw" and cpu.batch_size == 256
    gpu = parse_config(TrainConfig, ["--config", path, "--config", "configs/gpu/cifar10.yaml"],
                       "train.py")  # fmt: skip
    assert (gpu.method, gpu.method_args, gpu.views) == (method, cpu.method_args, cpu.views)
    assert (gpu.dataset, gpu.backbone, gpu.optimizer, gpu.max_epochs) == (
        "cifar10",
        "resnet18",
        "sgd",
        200,
    )
    assert gpu.lr == pytest.approx(0.06 * gpu.batch_size / 128) and gpu.weight_decay == 5e-4
    # The recipe's backbone keywords fit the README's CPU backbone, and the GPU setting drops
    # them for its torchvision ResNet.
    build_backbone(BackboneSpec("timm:resnet18", args=cpu.backbone_args))
    assert gpu.backbone_args == {}


@pytest.mark.slow
def test_compiled_backbone_matches_eager_and_saves_plain_weights(tmp_path):
    eager = main(tiny_args(tmp_path / "eager"))
    compiled = main(tiny_args(tmp_path / "compiled", "--compile", "true"))
    first_loss = [
        float(
            next(r["train/loss"] for r in read_csv_rows(d / "metrics.csv") if r.get("train/loss"))
        )
        for d in (tmp_path / "eager", tmp_path / "compiled")
    ]
    # Same seed, same batches: compilation may reorder float sums, nothing more.
    assert first_loss[1] == pytest.approx(first_loss[0], rel=1e-3)
    assert compiled["steps"] == eager["steps"]
    payload = torch.load(tmp_path / "compiled" / "backbone.pt", weights_only=False)
    assert not any("_orig_mod" in key for key in payload["state_dict"])


def test_ddp_on_two_processes_monitors_each_image_once_and_writes_once(tmp_path):
    """Lightning DDP on two CPU processes (gloo): one summary line and one run directory, and a
    monitor that saw every bank and test image exactly once: 63 and 39 images do not split
    evenly, so each rank's share is padded and interleaved. Its kNN must equal one process's
    kNN of the same weights."""
    import lightning.pytorch as L

    from ssl_zoo.components import build_components
    from ssl_zoo.data import SSLDataModule

    sizes = ["--train_samples", "63", "--test_samples", "39"]
    out = tmp_path / "ddp"
    proc = run_script("train.py", *tiny_args(out, *sizes, "--accelerator", "cpu", "--devices", "2",
                                             "--strategy", "ddp"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, lines  # the second process reports nothing
    summary = json.loads(lines[0])
    assert summary["devices"] == 2 and summary["steps"] == 1  # 31 images a rank, batch 16
    assert summary["gflops"] == pytest.approx(2 * summary["gflops_per_step"], abs=0.01)
    assert json.loads((out / "summary.json").read_text()) == summary
    cfg = parse_config(TrainConfig, tiny_args(tmp_path / "one", *sizes), prog="test")
    parts = build_components(cfg)
    weights = torch.load(out / "backbone.pt", weights_only=False)["state_dict"]
    parts.model.backbone.load_state_dict(weights)
    datamodule = SSLDataModule(parts.splits, parts.views, parts.normalize, 16, 0)
    L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[parts.monitor]).validate(
        parts.model, datamodule=datamodule, verbose=False)  # fmt: skip
    one = parts.monitor.last_metrics
    assert (one["val/knn_top1"], one["val/knn_top5"]) == (summary["knn_top1"], summary["knn_top5"])
    # Both processes continue from last.ckpt for a second epoch.
    proc = run_script("train.py", *tiny_args(out, *sizes, "--accelerator", "cpu", "--devices", "2",
                                             "--max_epochs", "2", "--resume"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = last_json_line(proc.stdout)
    assert (resumed["epochs"], resumed["steps"], resumed["devices"]) == (2, 2, 2)
    assert resumed["knn_top1_init"] == summary["knn_top1_init"]
    knn_rows = [r for r in read_csv_rows(out / "metrics.csv") if r.get("val/knn_top1")]
    assert len(knn_rows) == 3  # at initialisation (not again on resume), after epochs 1 and 2


@pytest.mark.parametrize(("method", "sizes"), [("simclr", [32, 32]), ("dino", [32, 32] + [16] * 6)])
def test_view_grid_shows_each_image_beside_the_views_the_method_trains_on(tmp_path, method, sizes):
    from ssl_zoo.view_grid import main as view_grid

    out = tmp_path / "views.png"
    summary = view_grid(["--method", method, "--train_samples", "64", "--test_samples", "16",
                         "--images", "3", "--out", str(out)])  # fmt: skip
    assert [v[1] for v in summary["views"]] == sizes and summary["images"] == 3
    width, height = Image.open(out).size
    assert (
        width == 130 * (1 + len(sizes)) and height == 130 * 3
    )  # a column per view, a row per image


@pytest.mark.parametrize(
    ("out", "message"),
    [("dir", "is a directory"), ("views.jpg", "is a PNG"), ("file.txt/views.png", "is a file")],
)
def test_view_grid_refuses_an_unwritable_picture_before_any_work(tmp_path, capsys, out, message):
    from ssl_zoo.view_grid import main as view_grid

    (tmp_path / "dir").mkdir()
    (tmp_path / "file.txt").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        run_main(view_grid, ["--out", str(tmp_path / out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err.strip().splitlines()[-1] and "Traceback" not in err
