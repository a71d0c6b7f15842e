"""The lifecycle of every run, train.py's, federate.py's and evaluate.py's alike:

    with RunLife(cfg, run_dir, job="train") as life:  # the clock and the energy meter start
        life.snapshot()                                # config.yaml: the config as resolved
        ... the job's work, its files ...
        summary = {...the job's figures..., **life.cost()}   # what it cost, named here once
        life.finish(summary, wandb_run)                # W&B's summary and finish, then
                                                       # summary.json, written last
The summary file's presence marks a finished run (resume and the benchmarks rely on it); the
entry point prints the summary as the last line of stdout (ssl_zoo.config.json_entry_point).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import yaml

from ssl_zoo.config import write_atomically
from ssl_zoo.cost import EnergyMeter, peak_rss_mb


class RunLife:
    def __init__(self, cfg, run_dir: Path, job: str, track_energy: bool | None = None,
                 summary_file: str = "summary.json"):  # fmt: skip
        """track_energy: default the config's (a DDP copy or a deployed server tracks none)."""
        self.cfg, self.run_dir, self.job, self.summary_file = cfg, run_dir, job, summary_file
        self.start = time.time()
        track = cfg.track_energy if track_energy is None else track_energy
        self.energy = EnergyMeter(track, cfg.energy_args)

    def __enter__(self) -> RunLife:
        return self

    def __exit__(self, *exc) -> None:
        self.energy.__exit__(*exc)

    def snapshot(self) -> None:
        """config.yaml: every option as the run resolved it."""
        (self.run_dir / "config.yaml").write_text(
            yaml.safe_dump(self.cfg.as_dict(), sort_keys=False)
        )

    def start_wandb(self, name: str | None = None):
        """The run's W&B run (offline without an API key), where --logger wandb asks for one;
        named --wandb_name, else `name`, else after the run directory."""
        import wandb

        from ssl_zoo.loggers import wandb_mode

        cfg = self.cfg
        return wandb.init(project=cfg.wandb_project, group=cfg.wandb_group,
                          tags=list(cfg.wandb_tags) or None,
                          name=cfg.wandb_name or name or self.run_dir.name, dir=str(self.run_dir),
                          mode=wandb_mode(), config=cfg.as_dict(), job_type=self.job)  # fmt: skip

    def cost(self, with_run_dir: bool = True) -> dict:
        """What every summary ends with, measured now: the peak memory, the energy (codecarbon;
        the meter stops), where the run wrote and how long it took."""
        spent = {"peak_rss_mb": peak_rss_mb(), **self.energy.stop()}
        if with_run_dir:
            spent["run_dir"] = str(self.run_dir)
        return {**spent, "seconds": round(time.time() - self.start, 1)}

    def finish(self, summary: dict, wandb_run=None, artifact: Path | None = None,
               wandb_also: dict | None = None) -> dict:  # fmt: skip
        """W&B's summary (the summary's numbers, and `wandb_also`), an artifact and its end;
        then the summary file."""
        if wandb_run is not None:
            import wandb

            numbers = {k: v for k, v in summary.items() if isinstance(v, int | float)}
            wandb_run.summary.update({**numbers, **(wandb_also or {})})
            if artifact is not None:
                record = wandb.Artifact(f"{artifact.stem}-{wandb_run.id}", type="model",
                                        metadata=summary)  # fmt: skip
                record.add_file(str(artifact))
                wandb_run.log_artifact(record)
            wandb_run.finish()
        write_atomically(self.run_dir / self.summary_file, json.dumps(summary, indent=2))
        return summary
