"""What the benchmarks share as command-line programs: argparse types, so that a value out of
range is one line and exit code 2 before any run starts (instead of a table of failed rows or a
hang), and publishing a table (to its file and between its markers in the docs, see
ssl_zoo/published.py) only when every run in it succeeded."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ssl_zoo.errors import UserError
from ssl_zoo.published import require_markers, stamp, write_table


def split_at_dashes(argv: list[str]) -> tuple[list[str], list[str]]:
    """A benchmark's own arguments, and those after `--`, which go to every run it starts."""
    if "--" not in argv:
        return argv, []
    at = argv.index("--")
    return argv[:at], argv[at + 1 :]


def photo_arguments(parser: argparse.ArgumentParser) -> None:
    """--dataset and --data_dir, by default the real photos beside the project
    (../shared/data/cifar10-12k), which the real-data benchmarks measure on."""
    root = Path(__file__).resolve().parents[1]
    parser.add_argument("--dataset", default="imagefolder")
    parser.add_argument("--data_dir", default=str(root.parent / "shared" / "data" / "cifar10-12k"))


def run_arguments(parser: argparse.ArgumentParser, runs: str | None) -> None:
    """What the benchmarks that train runs with train.py (recipes.py, cost.py) share: the
    budget, the data and where the runs are kept."""
    parser.add_argument("--minutes", type=positive, default=8.0, help="training budget per run")
    photo_arguments(parser)
    parser.add_argument("--runs", default=runs)


def output_arguments(parser: argparse.ArgumentParser, table: str) -> None:
    """--out and --docs: where the table goes. Left out, they default to the benchmark's own
    file and pages, but only for a run as wide as the published one (see table_writers)."""
    parser.add_argument("--out", default=None, help="the table's file ('' for none)")
    parser.add_argument("--docs", type=listed(str), default=None,
                        help=f"pages whose '{table}' table this replaces ('' for none)")  # fmt: skip


def at_defaults(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> bool:
    """Whether each named option holds its default (as parsed), as in the published table's run."""
    defaults = parser.parse_args([])
    return all(getattr(args, name) == getattr(defaults, name) for name in names)


def table_writers(parser: argparse.ArgumentParser, args: argparse.Namespace, table: str,
                  whole: bool, out: str, docs: str) -> list[Callable[[str], object]]:  # fmt: skip
    """Writers of the table: to --out and into each --docs page where they were given; where not,
    to the benchmark's own file (out) and pages (docs), but only if the run is `whole` (as wide
    as the published table: its methods, data and settings, no options after `--`), so that a
    subset or a quick check never replaces published figures. A page without the
    table's markers is a usage error now, before any run, not after hours of them."""
    kept = [f"{out} (--out FILE writes one)"] if args.out is None else []
    kept += [f"{docs} (--docs PAGES writes them)"] if args.docs is None and docs else []
    if not whole and kept:
        print(f"a narrower run than the published '{table}' table: {' and '.join(kept)} left as "
              "they are", file=sys.stderr)  # fmt: skip
    if args.out is None:
        args.out = out if whole else ""
    if args.docs is None:
        args.docs = docs.split(",") if whole and docs else []
    for page in args.docs:
        try:
            require_markers(Path(page), table)
        except UserError as error:
            parser.error(str(error))
    pages = [lambda text, page=page: write_table(Path(page), table, text) for page in args.docs]
    return ([Path(args.out).write_text] if args.out else []) + pages


def relative(path: str | Path) -> str:
    """A path as the project sees it (tables never print a machine's own directories)."""
    return os.path.relpath(Path(path).resolve(), Path(__file__).resolve().parents[1])


def run_once(script: str, args: list[str], done: Path, what: str) -> dict:
    """An entry point of this repository run in a process of its own: the JSON in `done` if an
    earlier call finished it (so a killed benchmark resumes at the run it was in), else its last
    stdout line (the JSON summary), or {"error": its last stderr line}. The run's stderr (its
    progress bars) streams to run.log beside `done`, to follow a run of hours. `what` names the
    run in the one line printed for it."""
    if done.exists():
        print(f"{what}: finished run found in {done.parent}, not run again", file=sys.stderr)
        return json.loads(done.read_text())
    root = Path(__file__).resolve().parents[1]
    done.parent.mkdir(parents=True, exist_ok=True)
    log = done.parent / "run.log"
    print(f"{what} ... (progress: tail -f {log})", file=sys.stderr, flush=True)
    with log.open("w") as err:
        proc = subprocess.run([sys.executable, str(root / script), *args], stdout=subprocess.PIPE,
                              stderr=err, text=True, cwd=root)  # fmt: skip
    if proc.returncode != 0:
        lines = [line for line in log.read_text().replace("\r", "\n").splitlines() if line.strip()]
        return {"error": (lines or ["failed"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def command_stamp(script: str) -> str:
    """The date, machine and this command, to head a published table."""
    return stamp(shlex.join(["python", script, *sys.argv[1:]]))


def publish(text: str, rows: list[dict], summary: dict, *writers: Callable[[str], object]) -> None:
    """How every benchmark ends: prints the table, hands it to each writer (the table file, a docs
    page) only if no row failed, as a failed run must never replace published figures, prints the
    one JSON line (summary), and exits 1 if a row failed."""
    print(text, file=sys.stderr)
    failed = [r for r in rows if "error" in r]
    if failed:
        print(f"{len(failed)} run(s) failed (their rows above): the table was not written",
              file=sys.stderr)  # fmt: skip
    else:
        for write in writers:
            write(text)
    print(json.dumps(summary))
    if failed:
        sys.exit(1)


def at_least(low: float, cast: Callable = int) -> Callable[[str], float]:
    def parse(text: str):
        value = cast(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low:g}, got {text}")
        return value

    parse.__name__ = cast.__name__  # argparse names the type in "invalid int value"
    return parse


def positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def listed(item: Callable) -> Callable[[str], list]:
    """A comma-separated list, each entry parsed by `item` ('' is the empty list)."""

    def parse(text: str) -> list:
        return [item(part.strip()) for part in text.split(",") if part.strip()]

    parse.__name__ = f"list of {getattr(item, '__name__', 'value')}"
    return parse


def seed_list(text: str) -> list[int]:
    """Comma-separated seeds (>= 0), each named once, at least one."""
    seeds = listed(at_least(0))(text)
    if not seeds or len(set(seeds)) < len(seeds):
        raise argparse.ArgumentTypeError(f"name each seed once, at least one (got {text!r})")
    return seeds


def method_name(text: str) -> str:
    from ssl_zoo.methods import METHODS

    if text not in METHODS:
        raise argparse.ArgumentTypeError(f"unknown method {text!r}; valid: {', '.join(METHODS)}")
    return text
