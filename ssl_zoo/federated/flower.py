"""Flower engine: a ServerApp and a ClientApp (Message API) around the same client-training and
aggregation code as the embedded loop.

- `--engine flower` runs both in this process with Flower's simulation runtime (one virtual
  SuperNode per client, `partition-id` = client number).
- `server_app` / `client_app` below are the deployable apps for `flwr run` on a SuperLink with
  SuperNodes (docs/deployment.md); they read the ssl_zoo config named by the run config key `config`.

Per-client state that must survive rounds (memory banks, FedBN's BatchNorm, FedEMA's model) stays
on the client's own disk, in `RUN_DIR/clients/client-K.pt` (see `ClientStateFile`): a deployed
ClientApp runs in a fresh process every round, and Flower's `context.state` would not survive a
restarted run, so a resumed federation could not continue where its clients were. The server runs
the embedded engine's round loop (aggregation, server optimizer, evaluation, checkpoints, resume,
time budget) with Flower carrying the messages: Flower's own FedAvg would also average integer
buffers such as BatchNorm's num_batches_tracked, so both engines produce the same global model.
"""

from __future__ import annotations

import json
import logging
import shlex
from pathlib import Path

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
from torch.utils.data import Subset

from ssl_zoo.config import replacing
from ssl_zoo.errors import UserError
from ssl_zoo.federated.algorithms.base import split_entries
from ssl_zoo.federated.client import ClientUpdate, fit_client, private_state
from ssl_zoo.federated.config import FedConfig
from ssl_zoo.federated.federation import build_federation, finish_run
from ssl_zoo.federated.loop import FedState, run_rounds
from ssl_zoo.federated.records import to_record, to_state
from ssl_zoo.lifecycle import RunLife

log = logging.getLogger("ssl_zoo.federated")
_CACHE: dict[str, tuple] = {}


def _key(cfg) -> str:
    return json.dumps(cfg.as_dict(), sort_keys=True, default=str)


def _remember(cfg, parts, clients, algorithm) -> tuple:
    initial_private = private_state(parts.model, algorithm.local_keys(parts.model))
    _CACHE[_key(cfg)] = (parts, clients, algorithm, initial_private)
    return _CACHE[_key(cfg)]


def _federation(cfg):
    """Components, partitions and the algorithm, built once per process (Flower calls the app
    every round)."""
    return _CACHE.get(_key(cfg)) or _remember(cfg, *build_federation(cfg))


class ClientStateFile:
    """A client's private state after the rounds it trained in, on its own disk.

    The server names the round to start from (the last one this client trained in, as its
    checkpoint knows it). A server killed after a client replied but before its own checkpoint
    repeats that round after `--resume`, so besides the newest round the file keeps the one
    before it: the state that repeated round must start from."""

    def __init__(self, run_dir: str, client: int):
        self.path = Path(run_dir) / "clients" / f"client-{client}.pt"
        self.client = client

    def _rounds(self) -> dict[int, dict]:
        if not self.path.exists():
            return {}
        return torch.load(self.path, map_location="cpu", weights_only=True)

    def load(self, round_number: int, initial: dict) -> dict:
        if round_number == 0:  # it never trained in this run
            return initial
        saved = self._rounds()
        if round_number not in saved:
            raise RuntimeError(
                f"client {self.client} has no state saved after round {round_number} in "
                f"{self.path} (removed, or the run was resumed on another machine)"
            )
        return saved[round_number]

    def save(self, round_number: int, private: dict) -> None:
        saved = self._rounds()
        earlier = max((r for r in saved if r < round_number), default=None)
        kept = {} if earlier is None else {earlier: saved[earlier]}
        kept[round_number] = private
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(self.path) as partial:
            torch.save(kept, partial)


def train_on_client(cfg, msg: Message, context: Context) -> Message:
    parts, clients, algorithm, initial_private = _federation(cfg)
    client = int(context.node_config["partition-id"])
    config = msg.content["config"]
    round_index = int(config["server-round"]) - 1
    state_file = ClientStateFile(str(config["run-dir"]), client)
    private = state_file.load(int(config["last-trained"][client]), initial_private)
    # Flower's strategies expect one ArrayRecord per message: an algorithm's tensors share it.
    global_state, received = split_entries(to_state(msg.content["arrays"]))
    update = fit_client(parts.model, global_state, private, algorithm,
                        Subset(parts.splits.train, clients[client].tolist()), parts.views,
                        parts.normalize, parts.splits.image_size, cfg, round_index, client,
                        int(config.get("planned-rounds", cfg.rounds)), received)  # fmt: skip
    state_file.save(round_index + 1, update.private)
    metrics = {"num-examples": update.num_examples, "client": client, "flops": update.flops,
               "step-seconds": update.step_seconds,
               **update.metrics}  # fmt: skip
    if update.loss is not None:
        metrics["train_loss"] = update.loss
    arrays = to_record({**update.state, **update.upload})
    content = RecordDict({"arrays": arrays, "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


def run_server(cfg, grid: Grid, run_dir: Path, on_round=None, energy=None) -> FedState:
    """The ServerApp's work: the same round loop as the embedded engine (loop.py), whose clients
    are reached through Flower: its FedAvg strategy samples the SuperNodes and builds the
    messages, the Grid carries them, and the replies are aggregated in client order."""
    parts, clients, algorithm, _ = _federation(cfg)
    local_keys = algorithm.local_keys(parts.model)  # never sent: each client has its own
    strategy = FlowerFedAvg(fraction_train=cfg.fraction_fit, fraction_evaluate=0.0,
                            min_train_nodes=cfg.min_clients, min_available_nodes=cfg.num_clients)  # fmt: skip

    def fit_round(round_number: int, global_state: dict, state: FedState, total_rounds: int, bar,
                  received: dict):  # fmt: skip
        bar.set_postfix_str("clients training")
        trained = [state.trained.get(client, 0) for client in range(cfg.num_clients)]
        config = ConfigRecord({"planned-rounds": total_rounds, "run-dir": str(run_dir.resolve()),
                               "last-trained": trained})  # fmt: skip
        # The algorithm's broadcast (shared features) travels in the record of the weights.
        sent = {k: v for k, v in global_state.items() if k not in local_keys}
        arrays = to_record({**sent, **received})
        messages = list(strategy.configure_train(round_number, arrays, config, grid))
        replies = list(grid.send_and_receive(messages, timeout=cfg.round_timeout))
        # A reply names the message it answers; its sender may be the SuperLink itself (an
        # error such as "Node Unavailable" for a SuperNode that stopped sending heartbeats).
        # The Grid gave each message its id when it sent it.
        node_of = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        answered = {reply.metadata.reply_to_message_id for reply in replies}
        for message_id, node in node_of.items():
            if message_id not in answered:
                yield -1, None, (f"node {node}: no reply within --round_timeout "
                                 f"{cfg.round_timeout:g} s")  # fmt: skip
        for reply in replies:
            if reply.has_error():
                node = node_of.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
                yield -1, None, f"node {node}: {reply.error.reason}"
        updates = []
        for reply in (r for r in replies if not r.has_error()):
            metrics = reply.content["metrics"]
            state, upload = split_entries(to_state(reply.content["arrays"]))
            decided = {k: float(v) for k, v in metrics.items()
                       if k not in ("client", "num-examples", "train_loss", "flops", "step-seconds")}  # fmt: skip
            updates.append(ClientUpdate(int(metrics["client"]), state, int(metrics["num-examples"]),
                                        {}, metrics.get("train_loss"), upload, decided,
                                        int(metrics["flops"]), float(metrics["step-seconds"])))  # fmt: skip
        for update in sorted(updates, key=lambda u: u.client):  # the embedded engine's order
            yield update.client, update, None

    return run_rounds(cfg, parts, algorithm, clients, run_dir, on_round, fit_round, energy)


def run_flower_simulation(cfg, parts, clients, algorithm, run_dir: Path, on_round=None,
                          energy=None) -> FedState:  # fmt: skip
    from flwr.simulation import run_simulation

    # For the server thread; Flower's client actors are processes of their own and build theirs
    # (build_federation seeds, so their initial models are this one).
    _remember(cfg, parts, clients, algorithm)
    result: dict = {}
    server = ServerApp()
    client = ClientApp()

    @server.main()
    def _server(grid: Grid, context: Context) -> None:
        result["state"] = run_server(cfg, grid, run_dir, on_round, energy)

    @client.train()
    def _client(msg: Message, context: Context) -> Message:
        return train_on_client(cfg, msg, context)

    run_simulation(server_app=server, client_app=client, num_supernodes=cfg.num_clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"logging_level": "ERROR", "log_to_driver": False}})  # fmt: skip
    if "state" not in result:
        raise UserError(
            "the Flower simulation ended without finishing its rounds; see the log above"
        )
    return result["state"]


# ---- deployable apps for `flwr run` ----------------------------------------------------------
def config_from_run(context: Context):
    """The ssl_zoo config of a deployed run: the YAMLs named by run config `config`, the other
    declared keys (`num-clients`, `rounds`, `output-dir`) as overrides, then `options`."""
    from ssl_zoo.config import parse_config

    run = dict(context.run_config)
    # `config` may name several YAMLs, comma-separated: a base and a method's recipe.
    args = [a for path in str(run.pop("config")).split(",") for a in ("--config", path.strip())]
    # Flower refuses run config keys the app does not declare, so any other option travels in
    # `options`, as typed on federate.py's command line.
    extra = shlex.split(str(run.pop("options", "")))
    for key, value in run.items():
        args += [f"--{key.replace('-', '_')}", str(value)]
    args += extra
    # Last, so that checks of Flower-only options (round_timeout) see the engine they run on.
    return parse_config(FedConfig, [*args, "--engine", "flower"], prog="flower")


server_app = ServerApp()
client_app = ClientApp()


@server_app.main()
def _deployed_server(grid: Grid, context: Context) -> None:
    from ssl_zoo.components import prepare_run_dir

    cfg = config_from_run(context)
    run_dir = prepare_run_dir(cfg, progress="fed_state.pt", prefix="flower-")
    # The server's energy is not the federation's: its clients train on machines of their own.
    with RunLife(cfg, run_dir, "federated", track_energy=False) as life:
        state = run_server(cfg, grid, run_dir)
        summary = finish_run(cfg, _federation(cfg)[0], state, life)
    log.warning("finished: %s", json.dumps(summary))


@client_app.train()
def _deployed_client(msg: Message, context: Context) -> Message:
    return train_on_client(config_from_run(context), msg, context)
