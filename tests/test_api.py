"""The Python API as the README and docs/api.md show it: their code blocks run as written (with
the output directories moved to a temporary folder)."""

import json
import re
import subprocess
import sys

import pytest
from conftest import ROOT

import ssl_zoo
from ssl_zoo.errors import UserError


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / page).read_text(), flags=re.S)


@pytest.mark.parametrize("page", ["README.md", "docs/api.md"])
def test_the_documented_examples_run(tmp_path, page):
    blocks = python_blocks(page)
    assert blocks, f"{page} shows no Python example"
    for block in blocks:
        code = block.replace('"runs/', f'"{tmp_path}/')
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "kNN" in proc.stdout


def test_keywords_become_the_scripts_options(tmp_path):
    argv = ssl_zoo.arguments(("a.yaml", "b.yaml"), {"lr": 0.1, "resume": True, "views": {"min_scale": 0.3},
                                                    "wandb_tags": ("x", "y"), "seed": None})  # fmt: skip
    assert argv == ["--config", "a.yaml", "--config", "b.yaml", "--lr", "0.1", "--resume", "true",
                    "--views", '{"min_scale": 0.3}', "--wandb_tags", '["x", "y"]', "--seed", "null"]  # fmt: skip
    summary = ssl_zoo.train(max_epochs=1, train_samples=64, test_samples=16, batch_size=32,
                            views={"min_scale": 0.5}, track_energy=False, output_dir=str(tmp_path / "r"))  # fmt: skip
    assert (
        summary["steps"] == 2
        and json.loads((tmp_path / "r" / "summary.json").read_text()) == summary
    )
    config = (tmp_path / "r" / "config.yaml").read_text()
    assert "min_scale: 0.5" in config


def test_a_bad_config_raises_the_scripts_message():
    with pytest.raises(UserError, match="unknown method 'simclear'"):
        ssl_zoo.train(method="simclear")
