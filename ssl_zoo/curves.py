"""The picture of a run: its loss and its kNN (and probe) curves, from the CSV the run wrote.
train.py writes curves.png from metrics.csv; a federation writes rounds.png from rounds.csv."""

from __future__ import annotations

from pathlib import Path

from ssl_zoo.loggers import read_csv_rows

Series = dict[str, tuple[list[float], list[float]]]  # label -> (x, y)


def column(rows: list[dict], x: str, y: str) -> tuple[list[float], list[float]]:
    """(x, y) of the rows that have a y: metrics.csv holds step rows and epoch rows apart."""
    pairs = [(float(r[x]), float(r[y])) for r in rows if r.get(y) not in (None, "") and r.get(x)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_panels(path: Path, title: str, panels: list[tuple[str, str, Series]]) -> Path:
    """One panel per (x label, y label, series) side by side; a series with one point shows as
    a dot, an empty one is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), dpi=100, squeeze=False)
    for ax, (xlabel, ylabel, series) in zip(axes[0], panels, strict=True):
        for label, (xs, ys) in series.items():
            if xs:
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3, label=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps and rounds
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if len([s for s in series.values() if s[0]]) > 1:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def training_curves(run_dir: Path, title: str) -> Path:
    """curves.png: the training loss, and kNN top-1 and the online probe at every monitor
    epoch, both against the training step (metrics.csv's epoch column is 0 both at
    initialisation and after the first epoch; its step is not)."""
    rows = read_csv_rows(run_dir / "metrics.csv")
    monitor = {"kNN top-1": column(rows, "step", "val/knn_top1"),
               "probe top-1": column(rows, "step", "val/probe_top1")}  # fmt: skip
    return plot_panels(run_dir / "curves.png", title, [
        ("training step", "training loss", {"loss": column(rows, "step", "train/loss")}),
        ("training step (0: at initialisation)", "accuracy on the test split", monitor),
    ])  # fmt: skip


def round_curves(run_dir: Path, title: str) -> Path:
    """rounds.png: the clients' mean training loss and the global model's kNN top-1 per round."""
    rows = read_csv_rows(run_dir / "rounds.csv")
    return plot_panels(run_dir / "rounds.png", title, [
        ("round", "clients' training loss", {"loss": column(rows, "round", "train_loss")}),
        ("round (0: at initialisation)", "global kNN top-1", {"kNN top-1": column(rows, "round", "knn_top1")}),
    ])  # fmt: skip
