"""glibc malloc settings: a training step stops faulting in its activations every time."""

import json
import os
import platform
import subprocess
import sys

import pytest
from conftest import ROOT

# Minor page faults per step of a small ResNet, in a fresh process (malloc settings are global).
STEP_FAULTS = """
import json, resource, sys, timm, torch
from ssl_zoo.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "1" else False
model = timm.create_model("resnet10t", num_classes=0)
x = torch.randn(32, 3, 32, 32)
for _ in range(2):
    model(x).sum().backward()
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    model(x).sum().backward()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start) / 4
print(json.dumps({"applied": applied, "faults_per_step": faults}))
"""


def step_faults(apply: bool, **env: str) -> dict:
    environment = {**os.environ, **env}
    proc = subprocess.run([sys.executable, "-c", STEP_FAULTS, str(int(apply))], cwd=ROOT,
                          env=environment, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the settings are glibc's")
def test_kept_memory_spares_the_page_faults_of_every_step():
    default, kept = step_faults(False), step_faults(True)
    assert kept["applied"] is True
    # Seen here: about 4,600 faults per step by default, none with the settings.
    assert default["faults_per_step"] > 1000, default
    assert kept["faults_per_step"] < default["faults_per_step"] / 10, (default, kept)


def test_a_users_own_malloc_settings_are_left_alone():
    assert step_faults(True, MALLOC_TRIM_THRESHOLD_="131072")["applied"] is False
