"""One client's local round: load the global state, fit the method's own LightningModule with a
Lightning Trainer for `local_epochs` on the client's images, return the new state.

Clients hold no labels: their images are served with label -1, so the online probe stays idle.
Per-client state that must survive between rounds (MoCo's queue, NNCLR's support set, the keys an
algorithm keeps local, such as FedBN's BatchNorm layers, and an algorithm's own entries) is
returned separately and handed back at the client's next round. The algorithm (algorithms/) acts
through its hooks around the method's own fit.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import lightning.pytorch as L
import numpy as np
import torch
from torch.utils.data import Subset

from ssl_zoo.cost import StepFlops, TimeSplit
from ssl_zoo.data import Splits, SSLDataModule, Unlabeled, normalized, uint8_images
from ssl_zoo.federated.aggregate import from_wire, to_wire
from ssl_zoo.federated.algorithms import Stack
from ssl_zoo.federated.algorithms.base import split_entries
from ssl_zoo.methods import SSLMethod
from ssl_zoo.methods.base import LossTerms, ScheduleWindow


@dataclass
class ClientUpdate:
    client: int
    state: dict[str, torch.Tensor]
    num_examples: int
    private: dict[str, torch.Tensor]
    loss: float | None
    upload: dict[str, torch.Tensor] = field(default_factory=dict)  # sent besides the weights
    metrics: dict[str, float] = field(default_factory=dict)  # what the algorithm decided
    flops: int = 0  # of its training steps (ssl_zoo/cost.py)
    # Wall seconds of its training steps alone: the rest of its fit (Trainer, data, state in and
    # out) is the per-client overhead, which decides what many small clients cost.
    step_seconds: float = 0.0


def client_seed(seed: int, round_index: int, client: int) -> int:
    """Every (round, client) fit is seeded on its own, so a resumed run repeats it exactly."""
    return (seed * 1_000_003 + round_index * 10_007 + client) % (2**31)


def clients_per_round(cfg) -> int:
    return min(cfg.num_clients, max(cfg.min_clients, round(cfg.fraction_fit * cfg.num_clients)))


def client_batch_size(cfg, images: int, train_images: int) -> int:
    """A client's batch: --client_batch_size, or by default batch_size times the client's share
    of the images a round trains on, so that every client takes as many steps per local epoch
    as centralized training takes per epoch at batch_size (docs/federated.md#the-clients-batch).

    Why: with a fixed client batch, K clients of n/K images each take n/(K x batch) steps per
    epoch, and their average moves the model about as far as one of them: a round costs an
    epoch of compute but advances training by 1/K of one. At batch_size x share, the average of
    the K clients' steps is, to first order in the learning rate, one step of batch_size on
    their union, and a round advances training as far as a centralized epoch."""
    if cfg.client_batch_size:
        return min(cfg.client_batch_size, images)
    round_images = train_images * clients_per_round(cfg) / cfg.num_clients
    return max(2, min(images, round(cfg.batch_size * images / round_images)))


# Keeps the dropout draws apart from any other stream seeded by (seed, round, client).
DROPOUT_STREAM = 7


def drops_out(cfg, round_index: int, client: int) -> bool:
    """--client_dropout: whether this client goes offline in this round, drawn from (seed, round,
    client) apart from its training randomness, so both engines and a resumed run drop the same
    clients and the others train exactly as they would have."""
    if not cfg.client_dropout:
        return False
    draw = np.random.default_rng([cfg.seed, round_index, client, DROPOUT_STREAM]).random()
    return draw < cfg.client_dropout


def private_state(model: SSLMethod, local_keys: set[str]) -> dict[str, torch.Tensor]:
    """Non-persistent buffers (memory banks) and the keys kept local, e.g. FedBN's BatchNorm."""
    persistent = model.state_dict()
    private = {k: v for k, v in model.named_buffers() if k not in persistent}
    private.update({k: persistent[k] for k in local_keys})
    return {k: v.detach().cpu().clone() for k, v in private.items()}


def load_private(model: SSLMethod, private: dict[str, torch.Tensor]) -> None:
    """The client's own buffers and local keys (state-dict entries only) into the model."""
    buffers, params = dict(model.named_buffers()), dict(model.named_parameters())
    with torch.no_grad():
        for key, value in private.items():
            target = buffers.get(key, params.get(key))
            target.copy_(value.to(target.device))


# Counting a step's FLOPs slows that step about twofold (benchmarks/cost_overhead.py), so a
# client's step is counted once per model, not at every fit: its batch is the same every round.
# It is counted again when the algorithms or the shapes of what the server broadcast change
# (fusion's negatives arrive from round 2 on).
_step_flops: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def step_flops_key(algorithm: Stack, client: int, batch_size: int, received: dict) -> tuple:
    """Clients share a count when their steps are the same computation: the same batch size
    and nothing received. What a client makes of a broadcast can depend on who it is (fusion
    leaves out its own features), so with a broadcast each client counts its own. Sharing
    matters with many clients sampled once each: a counted step takes about twice as long."""
    shapes = tuple((k, tuple(v.shape)) for k, v in sorted(received.items()))
    return tuple(algorithm.names), client if received else None, batch_size, shapes


def fit_client(
    model: SSLMethod,
    global_state: dict[str, torch.Tensor],
    private: dict[str, torch.Tensor],
    algorithm: Stack,
    images: Subset,
    views,
    normalize: dict,
    image_size: int,
    cfg,
    round_index: int,
    client: int,
    total_rounds: int | None = None,
    received: dict[str, torch.Tensor] | None = None,
) -> ClientUpdate:
    """Train on one client for one round (round_index counts from 0) of `total_rounds` (default:
    cfg.rounds; fewer when a time budget cuts the federation short); `received` is what the
    server broadcast besides the weights."""
    if drops_out(cfg, round_index, client):
        # Raised before any work, as a device that went offline returns nothing: both engines
        # count the client as failed, and it was sent the model (bytes down) all the same.
        raise RuntimeError(
            f"client {client} dropped out of round {round_index + 1} (simulated: --client_dropout "
            f"{cfg.client_dropout:g})"
        )
    n = len(images)
    if n < 2:
        raise ValueError(f"client {client} has {n} image(s); at least 2 are needed for a batch")
    batch_size = client_batch_size(cfg, n, len(images.dataset))
    # With several devices the client's batch is split over them (the remainder dropped), so the
    # client takes the steps it would on one device.
    device_batch = batch_size // cfg.devices
    if device_batch < 2:
        raise ValueError(f"client {client}'s batch of {batch_size} over {cfg.devices} devices "
                         "leaves fewer than 2 images a device; lower --devices")  # fmt: skip
    batch_size = device_batch * cfg.devices
    # A fixed number of steps, so that a fraction of an epoch (--local_epochs 0.5) is as exact
    # as a whole number; a fit that crosses an epoch boundary reshuffles as a centralized one.
    steps_per_round = max(1, round(cfg.local_epochs * (n // batch_size)))
    private = dict(private)  # amended by the algorithm; the caller's copy stays as it was
    # The keys a client keeps local are its own, whatever the server holds for them (Flower's
    # message does not carry them): the algorithm's hooks (FedProx's anchor) see the client's.
    local_keys = algorithm.local_keys(model)
    own = {k: private[k] for k in local_keys if k in private}
    global_state = {**from_wire(global_state, model.state_dict()), **own}
    model.load_state_dict(global_state)
    load_private(model, split_entries(private)[0])
    L.seed_everything(client_seed(cfg.seed, round_index, client), workers=True, verbose=False)
    received = received or {}
    metrics = algorithm.client_start(model, global_state, private, received, client)
    total_rounds = total_rounds or cfg.rounds
    window = (ScheduleWindow(0, steps_per_round) if cfg.restart_schedule_every_round else
              ScheduleWindow(round_index * steps_per_round, total_rounds * steps_per_round))  # fmt: skip
    counted = _step_flops.setdefault(model, {})
    flops_key = step_flops_key(algorithm, client, device_batch, received)
    splits = Splits(Unlabeled(images), None, None, 0, image_size)
    datamodule = SSLDataModule(splits, views, normalize, device_batch, cfg.num_workers,
                               seed=client_seed(cfg.seed, round_index, client))  # fmt: skip
    trainer = L.Trainer(
        max_steps=steps_per_round,
        max_epochs=-1,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy="ddp" if cfg.devices > 1 else "auto",
        precision=cfg.precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[
            *algorithm.callbacks(global_state),
            flops := StepFlops(counted.get(flops_key)),
            steps := TimeSplit(),
            window,
            LossTerms(algorithm.client_loss),
        ],  # fmt: skip
    )
    trainer.fit(model, datamodule=datamodule)
    if flops.per_step is not None:
        counted[flops_key] = flops.per_step
    # The model keeps a reference to this Trainer until the next client's, and a Trainer's
    # reference cycles wait for a full garbage collection: without this, every client left its
    # momentum buffers behind (64 clients: peak RSS 1.29 -> 1.70 GB; now flat).
    for optimizer in trainer.optimizers:
        optimizer.state.clear()
    loss = trainer.callback_metrics.get("train/loss")
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    # The last step's loss was finite, yet its update may not be: such a client is dropped
    # (both engines count a raising client as failed), so it never reaches the average.
    overflowed = next(
        (k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()), None
    )
    if overflowed:
        raise model.diverged(f"client {client}'s {overflowed} is not finite")
    # A client's own keys stay with it, except the backbone's (FedBN's BatchNorm): the server
    # averages those into the model its monitor evaluates and backbone.pt holds. A momentum
    # network kept local (FedEMA, FedU) is never uploaded; that halved their upload.
    state = {k: v for k, v in state.items() if k not in local_keys or k.startswith("backbone.")}
    state = to_wire(state, cfg.update_dtype)
    upload = algorithm.upload(
        model, lambda: normalized(uint8_images(images, image_size), normalize)
    )
    kept = split_entries(private)[1]  # the algorithms' own entries, as client_start amended them
    kept |= private_state(model, local_keys)
    kept |= algorithm.client_end(model, global_state)
    return ClientUpdate(client, state, n, kept, None if loss is None else float(loss), upload,
                        metrics, flops.total(trainer.global_step) * trainer.world_size,
                        steps.training)  # fmt: skip
