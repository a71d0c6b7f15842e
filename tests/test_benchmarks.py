"""benchmarks/recipes.py as a user runs it, on a tiny synthetic budget."""

from conftest import last_json_line, run_script

TINY_TRAIN = ["--train_samples", "64", "--test_samples", "40", "--batch_size", "16",
              "--max_epochs", "1", "--num_workers", "0", "--knn_k", "10"]  # fmt: skip


def test_recipes_reuses_a_finished_run_only_while_its_settings_hold(tmp_path):
    table = tmp_path / "recipes.md"
    args = ["--methods", "simclr", "--minutes", "5", "--dataset", "synthetic", "--data_dir", "",
            "--backbone", "timm:resnet10t", "--runs", str(tmp_path / "runs"), "--out", str(table),
            "--", *TINY_TRAIN]  # fmt: skip

    first = run_script("benchmarks/recipes.py", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    trained = last_json_line(first.stdout)["rows"][0]
    assert trained["method"] == "simclr" and 0 <= trained["knn_top1"] <= 1, trained
    assert (tmp_path / "runs" / "simclr" / "summary.json").is_file()

    again = run_script("benchmarks/recipes.py", *args)
    assert "not trained again" in again.stderr
    assert last_json_line(again.stdout)["rows"][0] == trained

    # An edited recipe (here: another learning rate) must not be answered with the old figure.
    edited = run_script("benchmarks/recipes.py", *args, "--lr", "0.01")
    row = last_json_line(edited.stdout)["rows"][0]
    assert "error" in row and "(lr:" in row["error"], row
    assert "failed" in table.read_text()
