"""What a federated round costs besides local training, and whether server memory grows with the
number of clients.

For each client count (default 4, 16, 64) a separate process runs the embedded loop on synthetic
images (the same number of images per client) and reports, per round: local training, aggregation,
server evaluation, and the (de)serialisation a Flower transfer adds (the state dict to Flower's
ArrayRecord protobuf bytes and back, once down and once up per client; the embedded loop itself
serialises nothing), plus the process's peak resident memory. Aggregation and serialisation are
fixed costs per client, so their share of a round is set by how long a client trains: the table
also gives the local training per client at which they would be 3% of it.

    python benchmarks/federated_overhead.py [--clients 4,16,64] [--images_per_client 500]
        [--batch_size 128] [--local_epochs 1] [--rounds 2] [--method simsiam]
        [--backbone timm:resnet10t]

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


def child(args) -> None:
    import torch

    from ssl_zoo.config import parse_config
    from ssl_zoo.federate import FedConfig, federate

    out = Path(tempfile.mkdtemp()) / "run"
    cfg = parse_config(FedConfig, [
        "--method", args.method, "--backbone", args.backbone, "--dataset", "synthetic",
        "--train_samples", str(args.child * args.images_per_client), "--test_samples", "100",
        "--num_clients", str(args.child), "--partition", "iid", "--rounds", str(args.rounds),
        "--batch_size", str(min(args.batch_size, args.images_per_client)), "--num_workers", "0",
        "--knn_k", "20", "--min_clients", "1", "--local_epochs", str(args.local_epochs),
        "--output_dir", str(out),
    ], prog="overhead")  # fmt: skip
    summary = federate(cfg)
    state = torch.load(out / "fed_state.pt", weights_only=False)["global_state"]
    transfer = min(flower_round_trip(state) for _ in range(3))
    serialise = transfer * 2 * args.child  # down and up, every client
    import csv

    with (out / "rounds.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if int(r["round"]) > 0]
    mean = lambda key: sum(float(r[key]) for r in rows) / len(rows)  # noqa: E731
    train, aggregate = mean("train_seconds"), mean("aggregate_seconds")
    print(json.dumps({
        "clients": args.child,
        "train_s": round(train, 2),
        "aggregate_s": round(aggregate, 4),
        "serialise_s": round(serialise, 3),
        "eval_s": round(mean("eval_seconds"), 2),
        "aggregate_pct": round(100 * aggregate / train, 2),
        "aggregate_serialise_pct": round(100 * (aggregate + serialise) / train, 2),
        "train_s_per_client_for_3pct": round((aggregate + serialise) / args.child / 0.03, 2),
        "model_mb": round(summary["bytes_up"] / len(rows) / args.child / 1e6, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0),
    }))  # fmt: skip


def flower_round_trip(state) -> float:
    """Seconds to turn a state dict into the bytes Flower sends and back into a state dict."""
    from flwr.app import ArrayRecord
    from flwr.common.serde import ProtoArrayRecord, array_record_from_proto, array_record_to_proto

    tic = time.perf_counter()
    wire = array_record_to_proto(ArrayRecord(state)).SerializeToString()
    array_record_from_proto(ProtoArrayRecord.FromString(wire)).to_torch_state_dict()
    return time.perf_counter() - tic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="4,16,64")
    parser.add_argument("--images_per_client", type=int, default=500)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--local_epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--method", default="simsiam")
    parser.add_argument("--backbone", default="timm:resnet10t")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    rows = []
    for count in [int(c) for c in args.clients.split(",")]:
        print(f"{count} clients ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", str(count)],
                              capture_output=True, text=True, cwd=ROOT)  # fmt: skip
        if proc.returncode != 0:
            sys.exit(
                f"error: the {count}-client run failed: {proc.stderr.strip().splitlines()[-1]}"
            )
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    header = list(rows[0])
    print(" | ".join(header), file=sys.stderr)
    for r in rows:
        print(" | ".join(str(r[h]) for h in header), file=sys.stderr)
    print(json.dumps({"per_round": rows}))


if __name__ == "__main__":
    main()
