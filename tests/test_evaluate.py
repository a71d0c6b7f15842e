"""evaluate.py: protocols on known features, label subsets, label-free metrics, end to end."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, last_json_line, run_script, tiny_args

from ssl_zoo.data import load_splits
from ssl_zoo.errors import run_main
from ssl_zoo.evaluation.knn import knn_accuracy, knn_scores
from ssl_zoo.evaluation.label_free import alignment, embedding_std, rankme, uniformity
from ssl_zoo.evaluation.selection import balanced_subset
from ssl_zoo.jobs.evaluate import main as evaluate_main
from ssl_zoo.jobs.train import main as train_main


def clusters(n_per_class=50, classes=4, dim=16, spread=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:classes] * 5
    x = torch.cat([c + spread * torch.randn(n_per_class, dim, generator=g) for c in centres])
    return x, torch.arange(classes).repeat_interleave(n_per_class)


def test_knn_on_separable_features_is_perfect_and_on_shuffled_labels_is_chance():
    bank, bank_y = clusters(seed=0)
    query, query_y = clusters(seed=1)
    top1, top5 = knn_accuracy(query, query_y, bank, bank_y, 4, k=20)
    assert top1 == 1.0 and top5 == 1.0
    # Labels unrelated to the features: about 1 in 4 right.
    g = torch.Generator().manual_seed(0)
    bank, query = torch.randn(2000, 16, generator=g), torch.randn(1000, 16, generator=g)
    bank_y, query_y = (
        torch.randint(0, 4, (2000,), generator=g),
        torch.randint(0, 4, (1000,), generator=g),
    )
    top1, _ = knn_accuracy(query, query_y, bank, bank_y, 4, k=20)
    assert abs(top1 - 0.25) < 0.05, top1


def test_chunked_knn_equals_unchunked():
    g = torch.Generator().manual_seed(0)
    bank, query = torch.randn(300, 8, generator=g), torch.randn(77, 8, generator=g)
    labels = torch.randint(0, 5, (300,), generator=g)
    whole = knn_scores(query, bank, labels, 5, k=15, chunk_size=1000)
    chunked = knn_scores(query, bank, labels, 5, k=15, chunk_size=10)
    assert torch.equal(whole, chunked)


def test_label_subset_is_class_balanced_seeded_and_disjoint_from_test():
    splits = load_splits("synthetic", train_samples=500, test_samples=100)
    labels = [splits.bank[i][1] for i in range(len(splits.bank))]
    subset = balanced_subset(labels, 0.1, seed=3)
    assert subset == balanced_subset(labels, 0.1, seed=3)
    assert subset != balanced_subset(labels, 0.1, seed=4)
    assert np.bincount(np.asarray(labels)[subset]).tolist() == [5] * 10
    test_images = {np.asarray(splits.test[i][0]).tobytes() for i in range(len(splits.test))}
    assert not any(np.asarray(splits.bank[i][0]).tobytes() in test_images for i in subset)
    assert len(balanced_subset(labels, 0.001)) == 10  # at least one label per class


def test_rankme_of_isotropic_and_rank_two_features():
    g = torch.Generator().manual_seed(0)
    assert rankme(torch.randn(2000, 32, generator=g)) > 0.9 * 32
    low = torch.randn(2000, 2, generator=g) @ torch.randn(2, 32, generator=g)
    assert rankme(low) == pytest.approx(2, abs=0.3)


def test_collapse_alignment_and_uniformity_extremes():
    g = torch.Generator().manual_seed(0)
    spread = torch.randn(500, 16, generator=g)
    collapsed = torch.ones(500, 16)
    assert embedding_std(collapsed) < 1e-6 < embedding_std(spread)
    assert alignment(spread, spread) == pytest.approx(0.0, abs=1e-6)
    assert uniformity(collapsed) == pytest.approx(0.0, abs=1e-6)  # log E exp(0): the worst
    assert uniformity(spread) < -1.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    train_main(tiny_args(out))
    return out


COMMON = ["--dataset", "synthetic", "--train_samples", "64", "--test_samples", "40",
          "--knn_k", "10", "--num_workers", "0", "--linear_epochs", "5", "--finetune_steps", "2",
          "--label_fraction", "0.25"]  # fmt: skip


def test_all_protocols_on_a_trained_backbone(trained):
    proc = run_script("evaluate.py", "--checkpoint", str(trained / "backbone.pt"),
                      "--protocol", "all", *COMMON)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = last_json_line(proc.stdout)
    keys = {"protocol", "dataset", "checkpoint", "top1", "top5", "rankme", "embedding_std",
            "alignment", "uniformity", "peak_rss_mb", "energy_kwh", "energy_method", "seconds"}  # fmt: skip
    assert keys <= set(result)
    assert result["energy_kwh"] > 0 and result["energy_method"] in ("measured", "estimated")
    for protocol in ("knn", "linear", "finetune"):
        assert 0 <= result["top1"][protocol] <= result["top5"][protocol] <= 1
    labels = [
        label for _, label in load_splits("synthetic", train_samples=64, test_samples=40).bank
    ]
    assert result["results"]["finetune"]["labels"] == len(balanced_subset(labels, 0.25)) < 64
    assert result["gflops"] == result["results"]["finetune"]["gflops"] > 0  # its training steps
    probe = result["results"]["finetune"]["linear_same_labels"]  # where fine-tuning starts
    end = result["results"]["finetune"]["end_of_finetuning"]  # before WiSE-FT's average
    assert 0 <= probe["top1"] <= probe["top5"] <= 1 and 0 <= end["top1"] <= end["top5"] <= 1
    assert json.loads((trained / "results.json").read_text()) == result
    assert (trained / "embedding.png").stat().st_size > 10_000


def test_the_probe_as_a_head_on_raw_features_gives_the_probes_logits():
    from ssl_zoo.evaluation.finetune import probe_as_head

    torch.manual_seed(0)
    x = torch.randn(20, 6) * 3 + 5
    mean, std = x.mean(0), x.std(0)
    probe = torch.nn.Linear(6, 4)
    assert torch.allclose(probe_as_head(probe, mean, std)(x), probe((x - mean) / std), atol=1e-5)


def test_the_reported_fine_tuned_classifier_lies_between_its_start_and_end():
    """WiSE-FT: alpha 0 is the start, 1 the end, 0.5 the midpoint of every weight; BatchNorm's
    step counter (an integer) is the end's, not averaged."""
    from ssl_zoo.evaluation.finetune import weight_average

    torch.manual_seed(0)
    start = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4))
    end = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.BatchNorm1d(4))
    end[1].num_batches_tracked += 7
    x = torch.randn(5, 6)
    for alpha, expected in ((0.0, start), (1.0, end)):
        assert torch.allclose(weight_average(start, end, alpha).eval()(x), expected.eval()(x))
    middle = weight_average(start, end, 0.5)
    assert torch.allclose(middle[0].weight, (start[0].weight + end[0].weight) / 2)
    assert (
        middle[1].num_batches_tracked == 7
        and end[0].weight.data_ptr() != middle[0].weight.data_ptr()
    )


def test_killed_evaluation_rerun_gives_the_uninterrupted_results(trained, tmp_path):
    """evaluate.py keeps no partial state: killed with SIGKILL mid fine-tuning it leaves no
    results.json, and running it again gives what an uninterrupted run gives (every protocol
    is seeded), so a rerun is its resume."""
    args = ["--checkpoint", str(trained / "backbone.pt"), "--protocol", "all", *COMMON,
            "--finetune_steps", "10", "--plot", "false"]  # fmt: skip
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(ROOT / "evaluate.py"), *args, "--output_dir", str(killed)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    seen = ""
    while proc.poll() is None and "GPU available" not in seen:
        seen += proc.stderr.read(16)  # the fine-tuning Trainer is built (after the probes)
    proc.kill()
    proc.wait()
    assert not (killed / "results.json").exists(), "it finished before it could be killed"
    again = evaluate_main([*args, "--output_dir", str(killed)])
    whole = evaluate_main([*args, "--output_dir", str(tmp_path / "whole")])

    def measured(result):
        return {k: v for k, v in result.items()
                if k not in ("seconds", "seconds_per_protocol", "peak_rss_mb", "energy_kwh",
                             "co2_kg")}  # fmt: skip

    assert measured(again) == measured(whole)


def test_lightning_checkpoint_and_random_baseline(trained, tmp_path):
    ckpt = evaluate_main(["--checkpoint", str(trained / "checkpoints" / "last.ckpt"),
                          "--output_dir", str(tmp_path), "--plot", "false", *COMMON])  # fmt: skip
    pt = evaluate_main(["--checkpoint", str(trained / "backbone.pt"),
                        "--output_dir", str(tmp_path), "--plot", "false", *COMMON])  # fmt: skip
    assert ckpt["top1"] == pt["top1"] and ckpt["backbone"] == "timm:resnet10t"
    random = evaluate_main(["--checkpoint", "random", "--backbone", "timm:resnet10t",
                            "--output_dir", str(tmp_path), "--plot", "false", *COMMON])  # fmt: skip
    assert 0 <= random["top1"] <= 1 and random["checkpoint"] == "random"


def test_wandb_offline_evaluation_records_metrics_and_plot(trained, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    evaluate_main(["--checkpoint", str(trained / "backbone.pt"), "--output_dir", str(tmp_path),
                   "--logger", "wandb", *COMMON])  # fmt: skip
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    media = list(runs[0].rglob("*.png"))
    assert media, "the embedding plot was not logged"


BAD = [
    (["--checkpoint", "nope.pt"], "backbone file not found: nope.pt"),
    (["--checkpoint", "BACKBONE", "--backbone", "resnet18"], "holds a timm:resnet10t backbone, not the requested resnet18"),
    (["--checkpoint", "BACKBONE", "--label_fraction", "0"], "label_fraction must be in (0, 1], got 0.0"),
    (["--checkpoint", "BACKBONE", "--label_fraction", "1.5"], "label_fraction must be in (0, 1], got 1.5"),
    (["--checkpoint", "BACKBONE", "--protocol", "svm"], "unknown protocol 'svm'; valid choices: all, detection, finetune, knn, linear"),
    (["--checkpoint", "random"], "--checkpoint random needs --backbone NAME"),
    (["--checkpoint", "BACKBONE", "--backbone_args", "{output_stride: 16}"], "built with backbone_args {}, not {'output_stride': 16}"),
    (["--checkpoint", "BACKBONE", "--seed", "-1"], "seed must be in [0, 2**32) (got -1)"),
    (["--checkpoint", "BACKBONE", "--knn_k", "0"], "knn_k must be >= 1 and knn_t > 0 (got 0, 0.1)"),  # was accepted
    (["--checkpoint", "BACKBONE", "--train_samples", "0"], "train_samples must be >= 1 (got 0)"),
]  # fmt: skip


@pytest.mark.parametrize(("args", "message"), BAD, ids=[m[:20] for _, m in BAD])
def test_bad_input_is_one_line_and_nonzero(trained, tmp_path, capsys, args, message):
    args = [str(trained / "backbone.pt") if a == "BACKBONE" else a for a in args]
    with pytest.raises(SystemExit) as exit_info:
        run_main(evaluate_main, [*COMMON, *args, "--output_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last and "Traceback" not in err, err


def test_a_short_quickstart_run_beats_the_random_init_baseline(tmp_path):
    """The quickstart recipe on half its data and a third of its steps already beats random init."""
    data = ["--dataset", "synthetic", "--train_samples", "2000", "--test_samples", "500",
            "--num_workers", "0", "--plot", "false", "--knn_k", "50"]  # fmt: skip
    trained = train_main(["--config", "configs/quickstart.yaml", "--output_dir", str(tmp_path / "run"),
                          "--train_samples", "2000", "--test_samples", "500", "--max_epochs", "6",
                          "--knn_k", "50"])  # fmt: skip
    ours = evaluate_main(["--checkpoint", str(tmp_path / "run" / "backbone.pt"), *data])
    random = evaluate_main(["--checkpoint", "random", "--backbone", "timm:resnet10t",
                            "--output_dir", str(tmp_path / "random"), *data])  # fmt: skip
    assert ours["top1"] == pytest.approx(trained["knn_top1"], abs=1e-6)
    assert ours["top1"] > random["top1"] + 0.02, (ours["top1"], random["top1"])


@pytest.mark.slow
def test_the_quickstart_beats_random_init_by_five_points(tmp_path):
    """The README's promise, end to end (about 2 minutes on 2 cores)."""
    proc = run_script(
        "train.py", "--config", "configs/quickstart.yaml", "--output_dir", str(tmp_path)
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = last_json_line(proc.stdout)
    assert summary["knn_top1"] >= summary["knn_top1_init"] + 0.05, summary
