"""The benchmarks as a user runs them, on tiny synthetic budgets."""

import json
import runpy
import shutil
import sys
from datetime import date
from pathlib import Path

import pytest
from conftest import ROOT, last_json_line, run_script

from ssl_zoo.published import marked_tables, markers

TINY_TRAIN = ["--train_samples", "64", "--test_samples", "40", "--batch_size", "16",
              "--max_epochs", "1", "--num_workers", "0", "--knn_k", "10"]  # fmt: skip


def run_here(monkeypatch, capsys, script: str, *args: str):
    """Run a script in this process as `python script args` would; its captured out and err."""
    monkeypatch.setattr(sys, "argv", [str(ROOT / script), *args])
    capsys.readouterr()
    runpy.run_path(str(ROOT / script), run_name="__main__")
    return capsys.readouterr()


def copies_of_the_pages(tmp_path, pages: str) -> list:
    """Copies of the docs pages a benchmark writes, to regenerate in a test."""
    copies = []
    for page in pages.split(","):
        copy = tmp_path / "pages" / page
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text((ROOT / page).read_text())
        copies.append(copy)
    return copies


def outside_the_markers(page, name: str) -> str:
    start, end = markers(name)
    text = page.read_text()
    return text[: text.index(start)] + text[text.index(end) :]


def test_recipes_reuses_a_finished_run_only_while_its_settings_hold(tmp_path, monkeypatch, capsys):
    """Also the quick regeneration of docs/methods.md's recipes table."""
    from benchmarks.recipes import DOCS

    table = tmp_path / "recipes.md"
    pages = copies_of_the_pages(tmp_path, DOCS[8.0])
    args = ["--methods", "simclr", "--minutes", "8", "--dataset", "synthetic", "--data_dir", "",
            "--backbone", "timm:resnet10t", "--runs", str(tmp_path / "runs"), "--out", str(table),
            "--seeds", "0,1", "--docs", ",".join(map(str, pages)), "--", *TINY_TRAIN]  # fmt: skip

    first = run_script("benchmarks/recipes.py", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    trained = last_json_line(first.stdout)["rows"]
    assert [(r["method"], r["seed"]) for r in trained] == [("simclr", 0), ("simclr", 1)], trained
    assert all(0 <= r["knn_top1"] <= 1 and 0 <= r["linear_top1"] <= 1 for r in trained), trained
    for seed, run in enumerate(("simclr", "simclr-seed1")):  # each seed's run, its backbone probed
        assert f"seed: {seed}\n" in (tmp_path / "runs" / run / "config.yaml").read_text()
        assert (tmp_path / "runs" / run / "linear" / "results.json").is_file()
    written = table.read_text()
    assert (
        written.startswith(str(date.today()))
        and "`python benchmarks/recipes.py --methods" in written
    )
    # one row: the mean of the two seeds, then each seed's figure
    linear = [r["linear_top1"] for r in trained]
    assert f"| {sum(linear) / 2:.3f} ({linear[0]:.3f}, {linear[1]:.3f}) |" in written, written
    for page in pages:  # the table replaced what lay between the markers, and nothing else
        original = ROOT / page.relative_to(tmp_path / "pages")
        assert f"{markers('recipes')[0]}\n{written}{markers('recipes')[1]}" in page.read_text()
        assert outside_the_markers(page, "recipes") == outside_the_markers(original, "recipes")

    # The reruns train nothing: run in this process, they spare two interpreter starts (~16 s).
    again = run_here(monkeypatch, capsys, "benchmarks/recipes.py", *args)
    assert "not trained again" in again.err
    assert last_json_line(again.out)["rows"] == trained
    # Without --docs, a subset of the methods leaves the published whole-zoo table alone.
    published_page = (ROOT / DOCS[8.0]).read_text()
    at = args.index("--docs")
    subset = run_here(monkeypatch, capsys, "benchmarks/recipes.py", *args[:at], *args[at + 2 :])
    assert "left as they are" in subset.err
    assert (ROOT / DOCS[8.0]).read_text() == published_page

    # An edited recipe (here: another learning rate) must not be answered with the old figure.
    published = table.read_text()
    with pytest.raises(SystemExit) as exit_info:  # a failed row fails the benchmark
        run_here(monkeypatch, capsys, "benchmarks/recipes.py", *args, "--lr", "0.01")
    assert exit_info.value.code == 1
    out, err = capsys.readouterr()
    row = last_json_line(out)["rows"][0]
    assert "error" in row and "(lr:" in row["error"] and row["seed"] == 0, row
    # ... and the failed row is shown, never written over the published table.
    assert "failed" in err and "the table was not written" in err
    assert table.read_text() == published
    assert all(written in page.read_text() for page in pages)

    # A finished run copied into another --runs folder is still that run (where it lives is not
    # one of its settings). Last: this run rewrites the table with its own --runs in the command.
    shutil.copytree(tmp_path / "runs", tmp_path / "copied")
    at = args.index("--runs") + 1
    copied = run_here(monkeypatch, capsys, "benchmarks/recipes.py",
                      *args[:at], str(tmp_path / "copied"), *args[at + 1 :])  # fmt: skip
    assert copied.err.count("not trained again") == 2, copied.err
    assert all("error" not in r for r in last_json_line(copied.out)["rows"])


def test_finetune_tabulates_each_backbone_against_its_probe(tmp_path, monkeypatch, capsys):
    """Also the quick regeneration of docs/evaluation.md's finetune table: a row per backbone
    and label fraction with the mean over the label draws and each draw's value, a missing
    backbone a failed row that writes nothing, and a rerun of the same evaluate.py command reused
    while another command runs again."""
    from benchmarks.finetune import DOCS

    runs, table = tmp_path / "runs", tmp_path / "finetune.md"
    trained = run_script("train.py", "--method", "simclr", "--dataset", "synthetic", *TINY_TRAIN,
                         "--output_dir", str(runs / "simclr"))  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-3000:]
    pages = copies_of_the_pages(tmp_path, DOCS)
    args = ["--fractions", "0.25", "--seeds", "0,1", "--dataset", "synthetic", "--data_dir", "",
            "--runs", str(runs), "--out", str(table), "--docs", ",".join(map(str, pages)), "--",
            "--train_samples", "64", "--test_samples", "40", "--num_workers", "0",
            "--linear_epochs", "5", "--finetune_steps", "2"]  # fmt: skip

    missing = run_script("benchmarks/finetune.py", "--methods", "simclr,byol", *args)
    assert missing.returncode == 1 and "runs/byol/backbone.pt not found" in missing.stderr
    assert not table.exists()

    first = run_here(monkeypatch, capsys, "benchmarks/finetune.py", "--methods", "simclr", *args)
    rows = last_json_line(first.out)["rows"]
    assert [(r["seed"], r["label_fraction"]) for r in rows] == [(0, 0.25), (1, 0.25)], rows
    assert (runs / "simclr" / "finetune-0.25").is_dir()
    assert (runs / "simclr" / "finetune-0.25-seed1").is_dir()
    for row in rows:
        assert 0 < row["labels"] < 64, row
        assert all(0 <= row[k] <= 1 for k in ("probe_top1", "finetune_top1", "end_top1")), row
        assert row["gain"] == pytest.approx(row["finetune_top1"] - row["probe_top1"])

    def draws(key: str, fmt: str = ".3f") -> str:
        values = [r[key] for r in rows]
        each = ", ".join(format(v, fmt) for v in values)
        return f"{format(sum(values) / len(values), fmt)} ({each})"

    assert (
        f"| simclr | {rows[0]['labels']} (25%) | {draws('probe_top1')} | "
        f"{draws('finetune_top1')} | {draws('end_top1')} | {draws('gain', '+.3f')} |"
    ) in table.read_text()
    for page in pages:
        assert table.read_text() in page.read_text()

    again = run_here(monkeypatch, capsys, "benchmarks/finetune.py", "--methods", "simclr", *args)
    assert again.err.count("reused") == 2 and last_json_line(again.out)["rows"] == rows
    other = run_here(monkeypatch, capsys, "benchmarks/finetune.py", "--methods", "simclr", *args,
                     "--finetune_steps", "3")  # fmt: skip
    assert "reused" not in other.err


def test_reference_trains_both_pipelines_on_one_budget_and_scores_them_alike(
    tmp_path, monkeypatch, capsys
):
    """Also the quick regeneration of docs/methods.md's reference table."""
    from benchmarks.reference import DOCS

    table = tmp_path / "reference.md"
    pages = copies_of_the_pages(tmp_path, DOCS)
    args = ["--minutes", "0.05", "--dataset", "synthetic", "--data_dir", "", "--backbone",
            "timm:resnet10t", "--train_samples", "64", "--test_samples", "40", "--batch_size", "16",
            "--num_workers", "0", "--runs", str(tmp_path / "runs"), "--out", str(table),
            "--docs", ",".join(map(str, pages))]  # fmt: skip
    first = run_script("benchmarks/reference.py", *args)
    assert first.returncode == 0, first.stderr[-3000:]
    rows = last_json_line(first.stdout)["rows"]
    assert [r["pipeline"] for r in rows] == ["reference", "ssl_zoo"], rows
    assert all(r["steps"] >= 1 and 0 <= r["knn_top1"] <= 1 for r in rows), rows
    for run in ("reference-0.05min", "ssl_zoo-0.05min/simclr"):  # both scored by evaluate.py's kNN
        assert (tmp_path / "runs" / run / "knn" / "results.json").is_file(), run
    written = table.read_text()
    lead = rows[1]["knn_top1"] - rows[0]["knn_top1"]
    assert f"| 0.05 min | ssl_zoo | {rows[1]['steps']} |" in written
    assert f"| {lead:+.3f} (target +0.05: " in written, written
    for page in pages:
        original = ROOT / page.relative_to(tmp_path / "pages")
        assert f"{markers('reference')[0]}\n{written}{markers('reference')[1]}" in page.read_text()
        assert outside_the_markers(page, "reference") == outside_the_markers(original, "reference")

    # The rerun trains nothing and gives the same rows.
    again = run_here(monkeypatch, capsys, "benchmarks/reference.py", *args)
    assert "finished run found" in again.err and "not trained again" in again.err
    assert last_json_line(again.out)["rows"] == rows
    # Another setting (here the batch) is never answered with the runs of the old one.
    at = args.index("--batch_size") + 1
    with pytest.raises(SystemExit) as exit_info:
        run_here(monkeypatch, capsys, "benchmarks/reference.py", *args[:at], "8", *args[at + 1 :])
    assert exit_info.value.code == 1
    out, err = capsys.readouterr()
    assert all("other settings" in r["error"] for r in last_json_line(out)["rows"]), out
    assert "the table was not written" in err and table.read_text() == written


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("benchmarks/cost.py", ["--methods", "simclrr"], "unknown method 'simclrr'; valid: simclr"),
        ("benchmarks/cost.py", ["--minutes", "0"], "--minutes: must be > 0"),
        ("benchmarks/cost.py", ["--target", "-1"], "--target: must be >= 0"),
        ("benchmarks/recipes.py", ["--methods", "simclr,foo"], "unknown method 'foo'"),
        ("benchmarks/recipes.py", ["--seeds", "0,0"], "--seeds: name each seed once"),
        ("benchmarks/detection.py", ["--fractions", "0.1,2"], "--fractions: must be in (0, 1]"),
        ("benchmarks/finetune.py", ["--fractions", "0.01,0"], "--fractions: must be in (0, 1]"),
        ("benchmarks/finetune.py", ["--fractions", ""], "--fractions: give at least one"),
        ("benchmarks/finetune.py", ["--seeds", "0,1,1"], "--seeds: name each seed once"),
        ("benchmarks/reference.py", ["--minutes", "4,0"], "--minutes: must be > 0"),
        ("benchmarks/reference.py", ["--minutes", ""], "--minutes: give at least one budget"),
        # --clients 0 used to start itself again and again (0 read as "not a child run").
        ("benchmarks/federated_overhead.py", ["--clients", "4,0"], "--clients: must be >= 1"),
        ("benchmarks/federated_overhead.py", ["--clients", "4,x"], "invalid list of int value"),
        (
            "benchmarks/federated_overhead.py",
            ["--clients", "10,100", "--total_images", "100"],
            "--total_images 100 gives 100 clients under 2 images each",
        ),
        ("benchmarks/throughput.py", ["--steps", "0"], "--steps: must be >= 1"),
        ("benchmarks/cost_overhead.py", ["--steps", "2"], "--steps: must be >= 3"),
    ],
)
def test_bad_benchmark_input_is_one_line_before_any_run(monkeypatch, capsys, script, args, message):
    with pytest.raises(SystemExit) as exit_info:
        run_here(monkeypatch, capsys, script, *args)
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # argparse's usage, then one line naming the error
    assert exit_info.value.code == 2 and ": error: " in last and message in last, err
    assert "Traceback" not in err and err.count("error") == 1


def test_cost_table_gives_the_cost_of_reaching_a_knn_target(tmp_path, monkeypatch, capsys):
    table, picture, page = tmp_path / "cost.md", tmp_path / "cost.png", tmp_path / "page.md"
    page.write_text("# page\n<!-- cost table -->\nold\n<!-- /cost table -->\nafter\n")
    args = ["--methods", "simclr", "--backbone", "timm:resnet10t", "--edge_backbones", "",
            "--dataset", "synthetic", "--data_dir", "", "--runs", str(tmp_path / "runs"),
            "--out", str(table), "--plot", str(picture), "--docs", str(page)]  # fmt: skip

    def cost(*more):
        return [*args, *more, "--", *TINY_TRAIN]

    proc = run_script("benchmarks/cost.py", *cost("--target", "1.01"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = last_json_line(proc.stdout)["rows"][0]
    assert (row["method"], row["backbone"]) == ("simclr", "timm:resnet10t")
    assert row["target_gflops"] is None and "not reached" in table.read_text()
    gain = row["knn_top1"] - row["knn_top1_init"]
    assert row["knn_points_per_wh"] == pytest.approx(gain / row["energy_kwh"] / 10, abs=0.01)
    assert picture.stat().st_size > 10_000
    start, end = markers("cost")
    assert page.read_text() == f"# page\n{start}\n{table.read_text()}{end}\nafter\n"

    # A target the initial encoder already meets costs nothing; one met after the epoch costs
    # the whole (one-epoch) run. The finished run is reused, not trained again.
    met = run_here(monkeypatch, capsys, "benchmarks/cost.py", *cost("--target", "0"))
    row = last_json_line(met.out)["rows"][0]
    assert row["target_gflops"] == 0 and 0 < row["target_kwh"] < row["energy_kwh"]
    target = str(row["knn_top1"] - 1e-6) if row["knn_top1"] > row["knn_top1_init"] else None
    if target:
        late = run_here(monkeypatch, capsys, "benchmarks/cost.py", *cost("--target", target))
        assert last_json_line(late.out)["rows"][0]["target_gflops"] == pytest.approx(
            row["gflops"], abs=0.01
        )

    # Without --out, --plot and --docs, this narrower run (one method, no edge backbones,
    # synthetic data) writes nothing: the published table, pages and picture stay as they are.
    from benchmarks.cost import DOCS, PLOT

    published = [ROOT / "benchmarks" / "cost.md", ROOT / PLOT, *(ROOT / p for p in DOCS.split(","))]
    before = [path.read_bytes() for path in published]
    at = args.index("--out")
    quiet = run_here(monkeypatch, capsys, "benchmarks/cost.py", *args[:at], "--", *TINY_TRAIN)
    assert "left as they are" in quiet.err and "error" not in last_json_line(quiet.out)["rows"][0]
    assert [path.read_bytes() for path in published] == before


# bf16 runs the same script as 32-true: kept out of the default suite for its time (57 s).
@pytest.mark.parametrize(
    "precision", ["32-true", pytest.param("bf16-mixed", marks=pytest.mark.slow)]
)
def test_throughput_prints_the_three_rates_and_their_ratios(precision):
    proc = run_script("benchmarks/throughput.py", "--backbone", "timm:resnet10t", "--batch_size",
                      "16", "--steps", "2", "--warmup", "1", "--rounds", "1",
                      "--num_workers", "0", "--precision", precision)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = last_json_line(proc.stdout)
    assert row["precision"] == precision
    rates = [row[f"{k}_views_per_s"] for k in ("limit", "ssl_zoo", "reference")]
    assert all(rate > 0 for rate in rates), row
    # The ratios come from the unrounded rates, printed to 0.1 views/s: at a few views/s (a
    # busy machine) that rounding alone moves the quotient by more than 0.01.
    for ratio, below in (("ratio_to_limit", rates[0]), ("ratio_to_reference", rates[2])):
        rounding = rates[1] / below * (0.05 / rates[1] + 0.05 / below)
        assert abs(row[ratio] - rates[1] / below) <= rounding + 0.001, row


def test_federated_overhead_splits_a_round_for_each_client_count():
    proc = run_script("benchmarks/federated_overhead.py", "--clients", "2,4", "--total_images",
                      "16", "--rounds", "1", "--sampled", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = last_json_line(proc.stdout)["per_round"]
    assert [(r["clients"], r["images"], r["sampled"]) for r in rows] == [(2, 16, 2), (4, 16, 2)]
    for r in rows:
        assert r["train_s"] > 0 and r["aggregate_s"] > 0, r
        assert 0 < r["client_overhead_s"] < r["train_s"] / r["sampled"], r
        # A deployment pays the simulation's record conversions and the object store on top.
        assert 0 < r["flower_sim_s"] < r["flower_deploy_s"], r
        assert r["model_mb"] > 1 and r["peak_rss_mb"] > 100, r


def test_cost_overhead_times_the_counted_step_against_the_plain_one():
    proc = run_script("benchmarks/cost_overhead.py", "--backbone", "timm:resnet10t", "--batch_size",
                      "8", "--steps", "3", "--epoch_images", "80")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = last_json_line(proc.stdout)
    assert row["gflops_per_step"] > 0 and row["step_s"] > 0, row
    difference = row["first_step_counted_s"] - row["first_step_plain_s"]
    assert abs(row["overhead_s"] - difference) <= 0.002, row


@pytest.mark.slow
def test_detection_benchmark_writes_its_table_between_the_markers(tmp_path):
    """Also: the random backbone is built as the pretrained one (here with a stride-16 last
    stage, a pretraining the benchmark finds finished and reuses), so both cost the same."""
    from benchmarks.detection import QUICK_PRETRAIN

    pretrain = run_script("train.py", "--config", "configs/detection/pretrain-scenes.yaml",
                          *QUICK_PRETRAIN, "--backbone_args", "{output_stride: 16}",
                          "--output_dir", str(tmp_path / "runs" / "pretrain"))  # fmt: skip
    assert pretrain.returncode == 0, pretrain.stderr[-3000:]
    docs = tmp_path / "detection.md"
    docs.write_text("# page\n<!-- detection table -->\nold\n<!-- /detection table -->\nafter\n")
    proc = run_script("benchmarks/detection.py", "--quick", "--fractions", "0.5", "--runs",
                      str(tmp_path / "runs"), "--out", str(tmp_path / "table.md"), "--docs",
                      str(docs))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = last_json_line(proc.stdout)["rows"]
    assert [r["init"] for r in rows] == ["ssl", "random"]
    assert all("error" not in r and 0 <= r["map_50"] <= 1 for r in rows), rows
    assert rows[0]["gflops"] == rows[1]["gflops"], rows
    page = docs.read_text()
    assert "old" not in page and page.endswith("<!-- /detection table -->\nafter\n")
    assert (tmp_path / "table.md").read_text() in page


def test_every_table_marked_in_the_docs_has_the_program_that_writes_it():
    """No results table in README or docs/ is typed by hand: each one marked there is written by
    a benchmark or a shipped comparison (which check their markers before any run), and each
    page a benchmark or comparison writes holds its markers."""
    from benchmarks.cost import DOCS as COST
    from benchmarks.detection import DOCS as DETECTION
    from benchmarks.finetune import DOCS as FINETUNE
    from benchmarks.label_efficiency import DOCS as LABEL_EFFICIENCY
    from benchmarks.recipes import DOCS as RECIPES
    from benchmarks.recipes import table_name
    from benchmarks.reference import DOCS as REFERENCE
    from benchmarks.vehicles import DOCS as VEHICLES
    from benchmarks.vehicles import README as VEHICLES_HEADLINE
    from ssl_zoo.jobs.compare import read_comparison

    written = {(page, table_name(m)) for m, pages in RECIPES.items() for page in pages.split(",")}
    written |= {(page, "detection") for page in DETECTION.split(",")}
    written |= {(page, "finetune") for page in FINETUNE.split(",")}
    written |= {(page, "label-efficiency") for page in LABEL_EFFICIENCY.split(",")}
    written |= {(page, "cost") for page in COST.split(",")}
    written |= {(page, "reference") for page in REFERENCE.split(",")}
    written |= {(page, "vehicles") for page in VEHICLES.split(",")}
    written |= {(VEHICLES_HEADLINE, "vehicles-headline")}
    for comparison in sorted((ROOT / "configs" / "federated").glob("compare*.yaml")):
        tables = read_comparison(str(comparison.relative_to(ROOT)))[2]
        written |= {(page, name) for page, name, _ in tables}
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    marked = {(str(p.relative_to(ROOT)), name) for p in pages for name in marked_tables(p)}
    assert marked == written
    assert {"README.md"} < {page for page, _ in marked}  # the README's tables are among them
    for page, name in marked:  # one pair of markers per table
        text = (ROOT / page).read_text()
        assert [text.count(m) for m in markers(name)] == [1, 1], (page, name)


@pytest.mark.slow
def test_label_efficiency_tabulates_every_part_and_resumes(tmp_path):
    """benchmarks/label_efficiency.py on a random-init backbone and 300 synthetic images: the
    linear rows (random with two draws), a fine-tuning row with self-training, and selection on
    a federated encoder centrally and per client; a second run measures nothing again."""
    out, runs = tmp_path / "table.md", tmp_path / "runs"
    args = ["--backbones", "random", "--finetune_backbones", "random", "--dataset", "synthetic",
            "--data_dir", "", "--budgets", "10,20", "--rules", "random,typiclust", "--draws",
            "0,1", "--finetune_budgets", "20", "--federated_budgets", "10", "--clients", "3",
            "--rounds", "1", "--train_samples", "300", "--test_samples", "60",
            "--finetune_steps", "2", "--runs", str(runs), "--out", str(out), "--docs", "",
            "--plot", str(tmp_path / "plot.png")]  # fmt: skip
    proc = run_script("benchmarks/label_efficiency.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = last_json_line(proc.stdout)["rows"]
    parts = [r["part"] for r in rows]
    # linear: 2 budgets x (2 random draws + typiclust); finetune: 2 draws + typiclust; federated:
    # 2 splits x (2 random draws + typiclust central + typiclust per client), 3 clients
    assert parts.count("linear") == 6 and parts.count("finetune") == 3
    assert parts.count("federated") == 8
    table = out.read_text()
    assert "| random | typiclust |" in table and "self-trained" in table and "per client" in table
    assert (tmp_path / "plot.png").stat().st_size > 10_000
    again = run_script("benchmarks/label_efficiency.py", *args)
    assert again.returncode == 0 and "} ..." not in again.stderr  # every row reused
    assert last_json_line(again.stdout)["rows"] == rows


@pytest.mark.slow
@pytest.mark.skipif(not all((ROOT.parent / "shared" / "data" / d).is_dir() for d in ("vehicles", "cifar10-12k")),
                    reason="../shared/data/vehicles or cifar10-12k is absent (the shared photos)")  # fmt: skip
def test_vehicles_quick_runs_the_fleet_story_and_resumes(tmp_path):
    """benchmarks/vehicles.py --quick on 20 of the vehicle photos: the starting backbone (on 24
    CIFAR photos), central and three federated pretrainings from it, detection from each backbone
    and random init (the rule's picks with self-training on the central one), the variants (BYOL,
    coco128 photos added, RetinaNet, FCOS), the table, the curve and the detections; a second
    run trains nothing again."""
    out, runs = tmp_path / "table.md", tmp_path / "runs"
    args = ["--quick", "--runs", str(runs), "--out", str(out), "--docs", ""]
    proc = run_script("benchmarks/vehicles.py", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = last_json_line(proc.stdout)
    assert set(found["pretraining"]) == {"start", "central", "fedavg-iid", "fedavg-dirichlet",
                                         "fedx-dirichlet", "byol", "coco128"}  # fmt: skip
    assert found["pretraining"]["fedx-dirichlet"]["fed_algorithm"] == "fedx"
    rows = found["rows"]
    # 5 labeled: random init, the start alone, central (random picks, typiclust +
    # self-training), three fleets; all 20: random init and central
    assert [(r["backbone"], r["labels"], r["pick"]) for r in rows] == [
        ("random", 5, "random"), ("start", 5, "random"), ("central", 5, "random"),
        ("central", 5, "typiclust"),
        ("fedavg-iid", 5, "random"), ("fedavg-dirichlet", 5, "random"),
        ("fedx-dirichlet", 5, "random"), ("random", 20, "random"), ("central", 20, "random"),
    ]  # fmt: skip
    assert rows[3]["self_train"] is not None and rows[3]["selection"]["rule"] == "typiclust"
    assert all(r["labeled_images"] == r["labels"] for r in rows)
    variants = found["variants"]
    assert [(r["backbone"], r.get("variant"), r["detector"]) for r in variants] == [
        ("byol", None, "fasterrcnn"), ("coco128", None, "fasterrcnn"),
        ("central", "retinanet", "retinanet"), ("central", "fcos", "fcos"),
    ]  # fmt: skip
    picked = [json.loads((Path(r["out"]) / "selection.json").read_text())["ids"]
              for r in [rows[2], *variants]]  # fmt: skip
    assert all(ids == picked[0] for ids in picked)  # the central row's picks
    # the coco128 run trains on 24 + 256 photos at the central run's steps: fewer epochs
    assert found["pretraining"]["coco128"]["steps"] >= found["pretraining"]["central"]["steps"]
    assert found["pretraining"]["byol"]["method"] == "byol"
    table = out.read_text()
    assert "| FCOS instead of Faster R-CNN | the central run's |" in table
    assert "| SSL federated (FedX, Dirichlet) | random |" in table and "self-training" in table
    assert "SSL centralized - random init at 5 labeled" in table
    assert (runs / "vehicles-curve.png").stat().st_size > 10_000
    assert (runs / "vehicles-detections.png").stat().st_size > 10_000
    again = run_script("benchmarks/vehicles.py", *args)
    assert again.returncode == 0
    assert again.stderr.count("finished run found") == 7 + len(rows) + len(variants)
    assert last_json_line(again.stdout)["rows"] == rows
