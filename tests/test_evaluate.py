"""evaluate.py on encoders trained by train.py and on the random-init baseline."""

import json

import pytest
from conftest import last_json_line, run_script, tiny_args

from ssl_zoo.errors import run_main
from ssl_zoo.evaluate import main as evaluate_main
from ssl_zoo.train import main as train_main


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    train_main(tiny_args(out))
    return out


def test_knn_of_a_trained_backbone_and_of_random_init(trained, tmp_path):
    common = ["--protocol", "knn", "--dataset", "synthetic", "--train_samples", "64",
              "--test_samples", "40", "--knn_k", "10", "--num_workers", "0"]  # fmt: skip
    proc = run_script("evaluate.py", "--checkpoint", str(trained / "backbone.pt"), *common)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = last_json_line(proc.stdout)
    assert result["protocol"] == "knn" and 0 <= result["top1"] <= result["top5"] <= 1
    assert json.loads((trained / "results.json").read_text()) == result
    random = evaluate_main(["--checkpoint", "random", "--backbone", "timm:resnet10t",
                            "--output_dir", str(tmp_path), *common])  # fmt: skip
    assert 0 <= random["top1"] <= 1 and (tmp_path / "results.json").is_file()


def test_missing_checkpoint_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main(evaluate_main, ["--checkpoint", str(tmp_path / "nope.pt")])
    assert exit_info.value.code == 2
    assert "error: backbone file not found" in capsys.readouterr().err
