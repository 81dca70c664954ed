"""What a trial reserves on the cluster: the grid-time check of `resources:` against the
trial's config, the Ray placement-group bundles the runner asks for, and the trial table
(trials.csv, `validate`'s table) that shows them."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from fl_core.config import SimulationConfig
from sweeper.errors import GridError
from sweeper.gridspec import Resources

if TYPE_CHECKING:
    from sweeper.gridspec import Grid


def check_resources(file: str, cfg: SimulationConfig, res: Resources) -> None:
    """The trial's reservation suits its config: a GPU share for fl.device = cuda, and
    enough CPUs for its torch threads."""
    if cfg.fl.device == "cuda" and res.gpus_per_trial == 0:
        raise GridError(
            file, "resources.gpus_per_trial",
            "fl.device = cuda needs a GPU share per trial (e.g. 0.5); or use fl.device: auto",
        )
    # torch runs fl.threads threads in the trial (evaluation, in-process training) and in
    # each worker; Ray does not cap them, so more threads than reserved CPUs oversubscribe
    threads = getattr(cfg.fl, "threads", 1)
    procs = [("cpus_per_trial", res.cpus_per_trial)]
    if res.executor == "actors":
        procs.append(("cpus_per_worker", res.cpus_per_worker))
    for key, cpus in procs:
        if threads > max(1, math.floor(cpus + 1e-9)):
            raise GridError(
                file, f"resources.{key}",
                f"{cpus:g} CPUs for fl.threads = {threads} torch threads; reserve at least "
                f"{threads} or lower fl.threads",
            )


def bundles(cfg: SimulationConfig, res: Resources, gpus_available: bool = True) -> list[dict[str, float]]:
    """Placement-group bundles of one trial: [trial head, worker 1, ..., worker W].

    The trial's GPU share is split evenly over the bundles that touch the model (with
    actors: the head evaluates, the workers train). With no GPU in the cluster the GPU
    request is dropped (the trial then runs on CPU).
    """
    gpu = res.gpus_per_trial if gpus_available else 0.0
    if res.executor == "in-process":
        head = {"CPU": res.cpus_per_trial}
        if gpu:
            head["GPU"] = gpu
        return [head]
    n = cfg.fl.workers
    # Ray keeps resource amounts to 4 decimals: round down so the shares never exceed `gpu`
    share = math.floor(gpu / (n + 1) * 10_000) / 10_000 if gpu else 0.0
    out = [{"CPU": res.cpus_per_trial}] + [{"CPU": res.cpus_per_worker} for _ in range(n)]
    if share:
        for b in out:
            b["GPU"] = share
    return out


def trial_rows(grid: Grid) -> list[dict[str, Any]]:
    """The resolved trial table (also written as trials.csv)."""
    rows = []
    for t in grid.trials:
        b = bundles(t.config, grid.spec.resources)
        rows.append(
            {
                "index": t.index,
                "trial_key": t.trial_key,
                **{k: t.overrides[k] for k in grid.varied_keys},
                "rounds": t.config.fl.rounds,
                "workers": 0 if grid.spec.resources.executor == "in-process" else t.config.fl.workers,
                "cpus": sum(x.get("CPU", 0.0) for x in b),
                "gpus": sum(x.get("GPU", 0.0) for x in b),
            }
        )
    return rows
