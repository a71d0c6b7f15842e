"""FedConfig: what a federation is made of (clients, partition, rounds, algorithm, server step,
engine), on top of the options every run shares (ssl_zoo.config.RunConfig)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ssl_zoo.config import RunConfig
from ssl_zoo.errors import unknown_choice
from ssl_zoo.federated.aggregate import WIRE_DTYPES
from ssl_zoo.federated.algorithms import build_algorithm
from ssl_zoo.federated.partition import PARTITIONS
from ssl_zoo.federated.server_optimizer import SERVER_OPTIMIZERS

ENGINES = ("embedded", "flower")


@dataclass(kw_only=True)
class FedConfig(RunConfig):
    """Federated SSL: clients train the same method modules as train.py; a federated algorithm
    (ssl_zoo/federated/algorithms) says how they merge the global model and how the server
    aggregates.

    The compute of a federation is counted in epochs-equivalent (rounds.csv `epochs`): each round
    adds every trained client's local_epochs x its share of the training images.

    Args:
        engine: embedded (one process, runs anywhere) or flower (Flower's simulation engine).
        num_clients: Number of clients the training split is divided over.
        partition: iid, dirichlet (non-IID by label proportions) or shards (k classes per client).
        alpha: Dirichlet concentration; small is skewed, large approaches IID.
        classes_per_client: Classes per client for the shards partition.
        rounds: Federated rounds.
        fraction_fit: Fraction of clients sampled each round.
        local_epochs: Epochs each sampled client trains per round; a fraction (0.5) trains that
            share of an epoch's steps on a fresh shuffle, so more, shorter rounds can spend the
            same compute (less client drift between averages).
        restart_schedule_every_round: Each round's local training runs the whole schedule
            (warm-up, cosine learning rate, momentum) anew, as FEDn's FedSimSiam example does,
            instead of one schedule across all rounds (default, as a centralized run's).
        min_clients: Fewest clients that must train successfully for a round to count.
        client_batch_size: Images per step on a client. Default: batch_size x the client's share
            of the images a round trains on (IID, 5 clients: batch_size / 5), so each local
            epoch takes as many steps as a centralized epoch at batch_size.
        devices: Devices each client trains on (embedded engine), each a process of Lightning's
            DDP: a client's batch is split over them, so its steps, and the federation, stay
            those of one device; only the seconds change. Every process runs the whole loop,
            and the first one evaluates and writes (docs/deployment.md).
        update_dtype: float32, float16 or bfloat16: the precision the global model and the
            clients' weights travel in (bytes_down, bytes_up); each side computes in float32
            and the server sums in float64. float16 halves the bytes and keeps 10 mantissa bits
            but overflows past 65504; bfloat16 keeps float32's range with 7 bits.
        client_dropout: Chance that a sampled client goes offline in a round (simulated, drawn
            from seed, round and client): it is sent the model, returns nothing and is counted
            in rounds.csv `failed`. For studying unreliable clients; 0 on real deployments.
        round_timeout: Flower engine and `flwr run`: seconds the server waits for a round's
            replies (Flower's Grid timeout); clients that have not answered by then count as
            failed and their late replies are ignored. Default: wait for every client.
        fed_algorithm: fedavg, fedema (FedEMA), fedu (FedU), ldawa (L-DAWA), fedx (FedX) or
            fusion (feature fusion + neighbourhood matching, Wu et al.; shares features).
        fed_algorithm_args: The algorithm's own options, its constructor's keywords: fedema
            {tau: 0.7}, fedu {threshold: 0.4}, fusion {shared_features: 1024, match_weight: 1.0}.
        fedbn: Keep BatchNorm layers local to each client (FedBN), beside any algorithm.
        fedprox_mu: Weight of FedProx's proximal term (0: none), beside any algorithm.
        share_optimizer_state: Clients start each round from the mean of the optimizer states
            (AdamW's moments) the last round's clients ended with, instead of fresh ones, beside
            any algorithm; about triples the bytes each way.
        server_optimizer: The server's step on the clients' averaged update: sgd (FedAvg; FedAvgM
            with server_lr or server_momentum), adam (FedAdam) or yogi (FedYogi), as Flower's
            strategies define them.
        server_lr: Server learning rate on the averaged update (sgd: 1 is plain FedAvg).
        server_momentum: sgd: FedAvgM's momentum (default 0); adam/yogi: beta_1 (default 0.9).
        compare: A comparison file: several runs side by side and a report (see configs/federated).
        compare_only: With compare: run and report only the runs whose names match these
            comma-separated patterns (shell-style, e.g. '*-shards2,fedbyol-*').
    """

    # Options that became an algorithm's own: named with the new spelling when given.
    renamed: ClassVar[dict[str, str]] = {
        "fedema_tau": "fed_algorithm_args.tau",
        "fedu_threshold": "fed_algorithm_args.threshold",
        "shared_features": "fed_algorithm_args.shared_features",
        "fusion_match_weight": "fed_algorithm_args.match_weight",
    }

    engine: str = "embedded"
    num_clients: int = 4
    partition: str = "dirichlet"
    alpha: float = 0.5
    classes_per_client: int = 2
    rounds: int = 5
    fraction_fit: float = 1.0
    local_epochs: float = 1.0
    restart_schedule_every_round: bool = False
    min_clients: int = 1
    client_batch_size: int | None = None
    devices: int = 1
    update_dtype: str = "float32"
    client_dropout: float = 0.0
    round_timeout: float | None = None
    fed_algorithm: str = "fedavg"
    fed_algorithm_args: dict[str, Any] = field(default_factory=dict)
    fedbn: bool = False
    fedprox_mu: float = 0.0
    share_optimizer_state: bool = False
    server_optimizer: str = "sgd"
    server_lr: float = 1.0
    server_momentum: float | None = None
    compare: str | None = None
    compare_only: str | None = None

    @property
    def resolved_server_momentum(self) -> float:
        if self.server_momentum is not None:
            return self.server_momentum
        return 0.0 if self.server_optimizer == "sgd" else 0.9

    def checks(self) -> list[tuple[bool, str]]:
        return [
            *super().checks(),
            (self.alpha > 0, f"alpha must be > 0 (got {self.alpha})"),
            (self.num_clients >= 1, f"num_clients must be >= 1 (got {self.num_clients})"),
            (
                0 < self.fraction_fit <= 1,
                f"fraction_fit must be in (0, 1] (got {self.fraction_fit})",
            ),
            (self.rounds >= 1, f"rounds must be >= 1 (got {self.rounds})"),
            (self.local_epochs > 0, f"local_epochs must be > 0 (got {self.local_epochs})"),
            (1 <= self.min_clients <= self.num_clients, "min_clients must be in [1, num_clients]"),
            (
                self.client_batch_size is None or self.client_batch_size >= 2,
                f"client_batch_size must be >= 2 (got {self.client_batch_size})",
            ),
            (self.devices >= 1, f"devices must be >= 1 (got {self.devices})"),
            (
                not self.client_batch_size or self.client_batch_size >= 2 * self.devices,
                f"client_batch_size {self.client_batch_size} over {self.devices} devices leaves "
                "fewer than 2 images a device",
            ),
            (
                self.devices == 1 or (self.engine == "embedded" and not self.compare),
                "devices > 1 needs the embedded engine and one run (DDP starts copies of the "
                "command; a Flower SuperNode's ClientApp trains on one device)",
            ),
            (
                0 <= self.client_dropout < 1,
                f"client_dropout must be in [0, 1) (got {self.client_dropout})",
            ),
            (
                self.round_timeout is None or self.round_timeout > 0,
                f"round_timeout must be > 0 seconds (got {self.round_timeout})",
            ),
            (
                self.round_timeout is None or self.engine == "flower",
                "round_timeout needs --engine flower (the embedded loop trains its clients one "
                "after another in this process, with nothing to wait for)",
            ),
            (self.fedprox_mu >= 0, "fedprox_mu must be >= 0"),
            (
                self.update_dtype in WIRE_DTYPES,
                f"unknown update_dtype '{self.update_dtype}'; valid choices: "
                + ", ".join(WIRE_DTYPES),
            ),
            (not self.compare_only or self.compare, "--compare_only needs --compare FILE"),
            (self.server_lr > 0, f"server_lr must be > 0 (got {self.server_lr})"),
            (
                0 <= self.resolved_server_momentum < 1,
                f"server_momentum must be in [0, 1) (got {self.server_momentum})",
            ),
        ]

    def validate(self) -> None:
        super().validate()
        if self.engine not in ENGINES:
            raise unknown_choice("engine", self.engine, ENGINES)
        build_algorithm(self)  # its name and its own options, before any run starts
        if self.partition not in PARTITIONS:
            raise unknown_choice("partition", self.partition, PARTITIONS)
        if self.server_optimizer not in SERVER_OPTIMIZERS:
            raise unknown_choice("server_optimizer", self.server_optimizer, SERVER_OPTIMIZERS)
