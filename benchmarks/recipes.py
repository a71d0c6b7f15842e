"""Train several methods on one budget and tabulate kNN top-1 at initialisation and after training.

    python benchmarks/recipes.py --config configs/quickstart.yaml --out recipes-synthetic.md
    python benchmarks/recipes.py --config configs/quickstart.yaml --methods simclr,byol -- --max_epochs 2

Arguments after `--` go to every train.py run. Each run is a separate process, so one method's
memory or threads never affect the next. Ends with a one-line JSON summary of all rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ssl_zoo.methods import METHODS  # noqa: E402


def run_method(method: str, args: argparse.Namespace, extra: list[str]) -> dict:
    run_dir = Path(args.runs) / method
    command = [sys.executable, str(ROOT / "train.py"), "--config", args.config, "--method", method,
               "--output_dir", str(run_dir), *extra]  # fmt: skip
    if args.method_configs:
        command[4:4] = ["--config", str(ROOT / "configs" / "methods" / f"{method}.yaml")]
    if args.minutes:
        command += ["--max_time", str(args.minutes), "--max_epochs", "1000"]
    start = time.time()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        error = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        print(f"{method}: {error}", file=sys.stderr)
        return {"method": method, "error": error}
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    epochs = max(summary["epochs"], 1)
    summary["seconds_per_epoch"] = round(summary["seconds"] / epochs, 1)
    summary["wall_seconds"] = round(time.time() - start, 1)
    return summary


def table(rows: list[dict], title: str) -> str:
    lines = [f"{title}", "", "| method | family | kNN top-1 at init | kNN top-1 | epochs | s/epoch | s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        family = METHODS[r["method"]].family
        if "error" in r:
            lines.append(f"| {r['method']} | {family} | failed: {r['error']} | | | | |")
            continue
        lines.append(
            f"| {r['method']} | {family} | {r['knn_top1_init']:.3f} | {r['knn_top1']:.3f} | "
            f"{r['epochs']} | {r['seconds_per_epoch']} | {r['seconds']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/quickstart.yaml")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--minutes", type=float, default=None, help="time budget per method")
    parser.add_argument("--method_configs", action="store_true",
                        help="also apply configs/methods/<name>.yaml (before --config)")  # fmt: skip
    parser.add_argument("--runs", default="runs/recipes")
    parser.add_argument("--out", default="recipes.md")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        sys.exit(f"error: unknown method(s) {', '.join(unknown)}; valid: {', '.join(METHODS)}")
    rows = []
    for method in methods:
        print(f"[{len(rows) + 1}/{len(methods)}] {method} ...", file=sys.stderr, flush=True)
        rows.append(run_method(method, args, extra))
    budget = f"{args.minutes} min each" if args.minutes else "the config's epochs"
    title = (f"{date.today()}, {platform.machine()} with {os.cpu_count()} CPUs, config "
             f"{args.config} {' '.join(extra)}, {budget}")  # fmt: skip
    Path(args.out).write_text(table(rows, title))
    print(table(rows, title), file=sys.stderr)
    print(json.dumps({"config": args.config, "extra": extra, "rows": rows}))


if __name__ == "__main__":
    main()
