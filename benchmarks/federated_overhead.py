"""What a federated round costs besides local training, and whether server memory grows with the
number of clients.

For each client count (default 4, 16, 64) a separate process runs the embedded loop on synthetic
images (the same number of images per client) and reports, per round: local training, aggregation,
server evaluation and the peak resident memory of the process. The embedded loop moves no bytes;
what Flower adds is timed on the same global state, as Flower 1.4x moves it:
- simulation (`--engine flower`): messages stay in memory, so the cost is the state dict to an
  ArrayRecord and back (ssl_zoo/federated/records.py): the global record
  written and read (for the server's evaluation) once, and per client the state read, the update
  written, and the update read by the server;
- deployment (`flwr run` on a SuperLink): on top of that every record is cut into content-
  addressed objects (a SHA-256 per object) and rebuilt at the other end: the global record once
  per round at the server, and per client one inflate, one deflate and the server's inflate.
Aggregation and serialisation are fixed costs per client, so their share of a round is set by how
long a client trains: the table also gives the local training per client at which the
simulation's overhead would be 3% of it.

Cross-device (phones: many clients, few images each): `--sampled N` trains N clients per round
whatever their number, and `client_overhead_s` is what a sampled client's fit costs beyond its
training steps (Trainer, data module, seeding, state in and out), from rounds.csv's
train_seconds / clients - client_step_seconds.

    python benchmarks/federated_overhead.py [--clients 4,16,64] [--images_per_client 500]
        [--batch_size 128] [--local_epochs 1] [--rounds 2] [--method simsiam]
        [--backbone timm:resnet10t] [--sampled N]
    python benchmarks/federated_overhead.py --clients 100,1000 --images_per_client 20 --sampled 20
    python benchmarks/federated_overhead.py --clients 100,1000,10000 --total_images 20000 --sampled 20

`--total_images N` shares N images among however many clients, so that only the number of clients
changes from row to row: peak RSS then shows what the unsampled clients cost the server (with
--images_per_client the images, and the monitor's bank with them, grow with the clients).

Prints a table and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cli import at_least, listed, method_name  # noqa: E402


def child(args) -> None:
    import torch

    from ssl_zoo.config import parse_config
    from ssl_zoo.federated.config import FedConfig
    from ssl_zoo.federated.run import federate

    out = Path(tempfile.mkdtemp()) / "run"
    images = args.total_images or args.child * args.images_per_client
    cfg = parse_config(FedConfig, [
        "--method", args.method, "--backbone", args.backbone, "--dataset", "synthetic",
        "--train_samples", str(images), "--test_samples", "100",
        "--num_clients", str(args.child), "--partition", "iid", "--rounds", str(args.rounds),
        # The recipe's batch (at most all the images), as a user passes it: the client-batch
        # rule sizes each client's batch (never above its images). Shrinking --batch_size to a
        # client's images made the server's monitor embed its bank 2 images at a time instead.
        "--batch_size", str(min(args.batch_size, images)), "--num_workers", "0",
        "--knn_k", "20", "--min_clients", "1", "--local_epochs", str(args.local_epochs),
        "--output_dir", str(out),
        "--fraction_fit", str(min(1.0, (args.sampled or args.child) / args.child)),
    ], prog="overhead")  # fmt: skip
    summary = federate(cfg)
    state = torch.load(out / "fed_state.pt", weights_only=False)["global_state"]
    record_s, state_s, deflate_s, inflate_s = flower_costs(state)
    import csv

    with (out / "rounds.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if int(r["round"]) > 0]
    mean = lambda key: sum(float(r[key]) for r in rows) / len(rows)  # noqa: E731
    trained = mean("clients")  # what travels: the sampled clients' updates
    simulation = record_s + state_s + trained * (state_s + record_s + state_s)
    deployment = simulation + deflate_s + trained * (inflate_s + deflate_s + inflate_s)
    train, aggregate = mean("train_seconds"), mean("aggregate_seconds")
    print(json.dumps({
        "clients": args.child,
        "images": images,
        "sampled": round(trained),
        "train_s": round(train, 2),
        "client_overhead_s": round(train / trained - mean("client_step_seconds"), 3),
        "aggregate_s": round(aggregate, 4),
        "flower_sim_s": round(simulation, 3),
        "flower_deploy_s": round(deployment, 3),
        "eval_s": round(mean("eval_seconds"), 2),
        "aggregate_pct": round(100 * aggregate / train, 2),
        "aggregate_sim_pct": round(100 * (aggregate + simulation) / train, 2),
        "aggregate_deploy_pct": round(100 * (aggregate + deployment) / train, 2),
        "train_s_per_client_for_3pct": round((aggregate + simulation) / trained / 0.03, 2),
        "model_mb": round(summary["bytes_up"] / len(rows) / trained / 1e6, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0),
    }))  # fmt: skip


def flower_costs(state, repeats: int = 5) -> tuple[float, float, float, float]:
    """Seconds (the fastest of `repeats`) for: state -> ArrayRecord, ArrayRecord -> state, the
    record -> content-addressed objects, and objects -> record."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    from ssl_zoo.federated.records import to_record, to_state

    def deflate():
        record = to_record(state)  # fresh, so no object id is cached
        tic = time.perf_counter()
        objects = {oid: obj.deflate() for oid, obj in get_all_nested_objects(record).items()}
        return time.perf_counter() - tic, record.object_id, objects

    def timed(fn):
        tic = time.perf_counter()
        fn()
        return time.perf_counter() - tic

    record = to_record(state)
    record_s = min(timed(lambda: to_record(state)) for _ in range(repeats))
    state_s = min(timed(lambda: to_state(record)) for _ in range(repeats))
    deflations = [deflate() for _ in range(repeats)]
    deflate_s = min(d[0] for d in deflations)
    _, root, objects = deflations[0]
    inflate_s = min(
        timed(lambda: inflate_object_from_contents(root, dict(objects))) for _ in range(repeats)
    )
    return record_s, state_s, deflate_s, inflate_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=listed(at_least(1)), default="4,16,64")
    parser.add_argument("--images_per_client", type=at_least(2), default=500)
    parser.add_argument("--total_images", type=at_least(2), default=None,
                        help="share this many images among the clients instead")  # fmt: skip
    parser.add_argument("--batch_size", type=at_least(1), default=128)
    parser.add_argument("--local_epochs", type=at_least(1), default=1)
    parser.add_argument("--rounds", type=at_least(1), default=2)
    parser.add_argument("--method", type=method_name, default="simsiam")
    parser.add_argument("--backbone", default="timm:resnet10t")
    parser.add_argument("--sampled", type=at_least(1), default=None, help="clients per round (all)")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args)
        return
    if args.total_images and args.total_images < 2 * max(args.clients):
        parser.error(f"--total_images {args.total_images} gives {max(args.clients)} clients under "
                     "2 images each")  # fmt: skip
    rows = []
    for count in args.clients:
        print(f"{count} clients ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", str(count)],
                              capture_output=True, text=True, cwd=ROOT)  # fmt: skip
        if proc.returncode != 0:
            sys.exit(
                f"error: the {count}-client run failed: {proc.stderr.strip().splitlines()[-1]}"
            )
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        # Each row as soon as it is measured: a large count can outlast a session's patience,
        # and the rows before it should not be lost with it.
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    header = list(rows[0])
    print(" | ".join(header), file=sys.stderr)
    for r in rows:
        print(" | ".join(str(r[h]) for h in header), file=sys.stderr)
    print(json.dumps({"per_round": rows}))


if __name__ == "__main__":
    main()
