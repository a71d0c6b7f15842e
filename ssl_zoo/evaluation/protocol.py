"""What an evaluation protocol is (`evaluate.py --protocol NAME`): a class, registered in
ssl_zoo/evaluation/protocols.py, whose options are its constructor's keywords. Those named like an
evaluate.py option (`knn_k`, `det_epochs`, ...) take that option's value; any other comes from
`--protocol_args`, checked against the signature.

Most protocols score the encoder's features of a labeled dataset's train and test images, which
a FeatureBench (ssl_zoo/evaluation/bench.py) computes once for all of them (`--protocol all` runs
every such protocol on one bench); each returns its entry of results.json's `results`. A protocol
on data of its own (detection: images with boxes) sets `on_features = False` and returns the
whole of what results.json reports.
"""

from __future__ import annotations

from typing import ClassVar


class Protocol:
    name: ClassVar[str]
    on_features: ClassVar[bool] = True
    # Trains on a labeled subset (--label_fraction, or --labels and --select) even where the
    # others use every label: fine-tuning with few labels.
    labeled_subset: ClassVar[bool] = False
    self_trains: ClassVar[bool] = False  # --self_train applies: it learns from the unlabeled rest
    # The datasets it runs on (evaluate.py --dataset); None: those with labeled train and test
    # images (ssl_zoo.data.DATASETS).
    datasets: ClassVar[tuple[str, ...] | None] = None
    # The side of the images the backbone sees, where the protocol sets it (a random backbone's
    # stem follows it); None: the dataset's.
    input_size: int | None = None

    def run(self, bench) -> dict:
        raise NotImplementedError
