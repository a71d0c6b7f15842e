"""ssl_zoo: centralized and federated self-supervised learning with PyTorch Lightning.

The three jobs as functions, for notebooks and scripts; each takes what its script takes (YAML
configs, composed left to right, then options as keywords) and returns the summary the script
prints as its last line:

    import ssl_zoo
    run = ssl_zoo.train("configs/quickstart.yaml", max_epochs=2, output_dir="runs/demo")
    ssl_zoo.evaluate(checkpoint=run["run_dir"] + "/backbone.pt", protocol="knn")
    ssl_zoo.federate("configs/federated/quickstart.yaml", rounds=2)

Nested options take dicts (`views={"min_scale": 0.3}`). A bad config raises ssl_zoo.errors.
UserError with the message the script would print. The building blocks are importable on their
own: ssl_zoo.methods.build_method (each method a LightningModule), ssl_zoo.backbones.
build_backbone, ssl_zoo.views.build_views and ssl_zoo.batch_views.BatchViews, ssl_zoo.data.
SSLDataModule (docs/api.md).
"""

__version__ = "0.1.0"

import json
import logging
import warnings

# Lightning 2.6 on torch 2.14 warns about a torch pytree API on every fit; it is not ours to fix.
warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")
# Lightning's notes that a user of this package cannot act on: its advertisement for its cloud
# logger and model registry ("💡 Tip: ... install litlogger") and how it counts the schedule's
# steps. They go through the logger of whichever Lightning package was imported last (lightly
# imports pytorch_lightning too).
_NOT_FOR_USERS = ("Tip:", "to estimate number of stepping batches")
for _name in ("lightning.pytorch", "pytorch_lightning", "lightning.fabric", "lightning_fabric"):
    logging.getLogger(f"{_name}.utilities.rank_zero").addFilter(
        lambda record: not any(note in record.getMessage() for note in _NOT_FOR_USERS)
    )


def arguments(configs: tuple[str, ...], options: dict) -> list[str]:
    """The command line a script would be given: --config for each YAML, then --key value."""
    argv = [a for path in configs for a in ("--config", str(path))]
    for key, value in options.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif value is None or isinstance(value, dict | list | tuple):
            text = json.dumps(value)  # YAML reads JSON (a tuple as a list)
        else:
            text = str(value)
        argv += [f"--{key}", text]
    return argv


def train(*configs: str, **options) -> dict:
    """Train one SSL method centrally, as `python train.py`; returns its summary."""
    from ssl_zoo.jobs.train import main

    return main(arguments(configs, options))


def federate(*configs: str, **options) -> dict:
    """A federation (or, with compare=FILE, a comparison), as `python federate.py`; returns its
    summary."""
    from ssl_zoo.jobs.federate import main

    return main(arguments(configs, options))


def evaluate(*configs: str, **options) -> dict:
    """Evaluate an encoder (checkpoint=...), as `python evaluate.py`; returns its results."""
    from ssl_zoo.jobs.evaluate import main

    return main(arguments(configs, options))
