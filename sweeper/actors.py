"""A pool of Ray actors that trains one trial's clients: fl_core's `ClientExecutor` on Ray.

Each trial owns `fl.workers` `ClientWorker` actors, created inside the trial's placement
group (one bundle each, reserved by the sweeper's `PlacementGroupFactory`, so actors never
oversubscribe the cluster and never wait forever for resources the trial did not book).
The trial puts its `FederatedData` into the object store once; every actor maps it
zero-copy and wraps one `fl_core.client.ClientRunner`. A lazy population
(`fl_core.data.population`, e.g. 10^6 synthetic writers) is not put: it pickles as its
parameters, each actor rebuilds it (the n_k array) and fetches only its slice's writers. Each round the global weights are
put once and passed by reference; the round's tasks are split into contiguous slices, one
per actor, and the results reassembled in task order.

Actors are stateless between rounds (as in Flower's `ray_actor.py`): a task carries its
client, role and derived seed, so any actor may train any task. A dead actor (killed,
OOM, node lost) is therefore replaced in the same bundle and its slice retried; the
round's result is unchanged, and no result depends on the number of workers.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np
import ray
import torch
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from fl_core.config import SimulationConfig
from fl_core.types import ClientResult, ClientTask

MAX_RETRIES_PER_SLICE = 3


def set_determinism(num_cpus: float, gpu_ids: Sequence[Any] = ()) -> None:
    """Per-process settings for bit-exact results (STYLE §3.3).

    Thread count is fixed from the bundle's CPUs: intra-op reductions may split
    differently with a different number of threads. Without a GPU of its own the process
    hides CUDA, so `fl.device: auto` resolves to the CPU it was scheduled for.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if not gpu_ids:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.set_num_threads(max(1, int(num_cpus)))


@ray.remote
class ClientWorker:
    """One actor: a `ClientRunner` over the trial's data, training slices of a round."""

    def __init__(self, config: SimulationConfig, data: Any, num_cpus: float, device: str | None):
        set_determinism(num_cpus, ray.get_gpu_ids())
        import warnings

        from fl_core.client import ClientRunner

        # The data arrive zero-copy from the object store, hence read-only; the runner
        # only ever reads them, so torch's warning about non-writable arrays is noise.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")

        self.runner = ClientRunner(config, data, device)

    def run(self, tasks: Sequence[ClientTask], global_params: torch.Tensor) -> "PackedResults":
        return pack(self.runner.run(tasks, global_params))

    def where(self) -> tuple[int, str]:
        """(pid, Ray node id): for placement checks and tests."""
        return os.getpid(), ray.get_runtime_context().get_node_id()


PackedResults = tuple[list[ClientResult], np.ndarray]


def pack(results: list[ClientResult]) -> PackedResults:
    """Move a slice's updates into one (n, P) float32 array, freeing each tensor as it is
    copied, and return (results with empty deltas, array).

    Why: Ray pickles a torch tensor into the actor's heap before it reaches the object
    store, so returning n updates of 4.8 MB each would hold them twice at the end of every
    round; a numpy array is written out-of-band straight into the object store. The
    actor's private memory then peaks at about one copy of its slice's updates."""
    if not results:
        return [], np.empty((0, 0), dtype=np.float32)
    out = np.empty((len(results), results[0].delta.numel()), dtype=np.float32)
    light = []
    for i in range(len(results)):
        r = results[i]
        out[i] = r.delta.numpy()
        results[i] = None  # type: ignore[call-overload]  # drop the tensor now
        light.append(dataclasses.replace(r, delta=_EMPTY))
        del r
    return light, out


def unpack(packed: PackedResults) -> list[ClientResult]:
    """The inverse of `pack`, on the driver: one writable copy of the array (the object
    store's buffer is read-only), each result's delta a row of it."""
    light, arr = packed
    deltas = torch.from_numpy(np.array(arr, dtype=np.float32, copy=True))
    return [dataclasses.replace(r, delta=deltas[i]) for i, r in enumerate(light)]


_EMPTY = torch.empty(0, dtype=torch.float32)


def split(n_tasks: int, n_workers: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) slices, sizes differing by at most one; empty slices are
    dropped (a small cohort leaves some workers idle)."""
    base, extra = divmod(n_tasks, n_workers)
    out, start = [], 0
    for i in range(n_workers):
        stop = start + base + (1 if i < extra else 0)
        if stop > start:
            out.append((start, stop))
        start = stop
    return out


class RayActorExecutor:
    """`ClientExecutor` over `workers` Ray actors.

    Args:
        config: the trial's config (pickled to each actor once).
        data: the trial's `FederatedData`, or an ObjectRef to it (put once if not); a lazy
            population is sent as is (it pickles as its few parameters).
        workers: number of actors.
        cpus_per_worker, gpus_per_worker: each actor's resources (its bundle's).
        bundle_offset: index of the first worker bundle in the current placement group
            (0 is the trial itself). Outside a placement group actors are scheduled
            normally.
        device: torch device for the actors' runners; None resolves `fl.device`.
    """

    def __init__(
        self,
        config: SimulationConfig,
        data: Any,
        workers: int,
        cpus_per_worker: float = 1.0,
        gpus_per_worker: float = 0.0,
        bundle_offset: int = 1,
        device: str | None = None,
    ):
        if workers < 1:
            raise ValueError(f"workers must be ≥ 1, got {workers}")
        self.config = config
        lazy = getattr(data, "lazy", False)
        self.data_ref = data if isinstance(data, ray.ObjectRef) or lazy else ray.put(data)
        self.cpus, self.gpus, self.device = cpus_per_worker, gpus_per_worker, device
        self.pg = ray.util.get_current_placement_group()
        self.bundle_offset = bundle_offset
        self.replacements = 0  # actors replaced after dying (for metrics and tests)
        self.actors = [self._new_actor(i) for i in range(workers)]

    def _new_actor(self, i: int):
        opts: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": self.gpus, "max_restarts": 0}
        if self.pg is not None:
            opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                placement_group=self.pg, placement_group_bundle_index=self.bundle_offset + i
            )
        return ClientWorker.options(**opts).remote(self.config, self.data_ref, self.cpus, self.device)

    def _replace(self, i: int) -> None:
        try:
            ray.kill(self.actors[i], no_restart=True)
        except Exception:  # already gone
            pass
        self.actors[i] = self._new_actor(i)
        self.replacements += 1

    def map(self, tasks: Sequence[ClientTask], global_params: torch.Tensor) -> list[ClientResult]:
        """Train `tasks` from `global_params`; results in task order."""
        tasks = list(tasks)
        if not tasks:
            return []
        params_ref = ray.put(global_params)  # sent once per round, by reference
        slices = split(len(tasks), len(self.actors))
        refs = {i: self.actors[i].run.remote(tasks[a:b], params_ref) for i, (a, b) in enumerate(slices)}
        out: list[ClientResult] = []
        for i, (a, b) in enumerate(slices):
            out.extend(self._get_slice(i, refs[i], tasks[a:b], params_ref))
        if len(out) != len(tasks):
            raise RuntimeError(f"executor returned {len(out)} results for {len(tasks)} tasks")
        return out

    def _get_slice(self, i: int, ref, tasks: list[ClientTask], params_ref) -> list[ClientResult]:
        for attempt in range(MAX_RETRIES_PER_SLICE + 1):
            try:
                return unpack(ray.get(ref))
            except (RayActorError, ActorUnavailableError) as e:
                # an error in ClientRunner.__init__ is a bug or bad input, not a lost actor:
                # a fresh actor would fail the same way
                if attempt == MAX_RETRIES_PER_SLICE or getattr(e, "actor_init_failed", False):
                    raise
                # stateless actors: a fresh one in the same bundle gives the same result
                self._replace(i)
                ref = self.actors[i].run.remote(tasks, params_ref)
        raise AssertionError("unreachable")

    def where(self) -> list[tuple[int, str]]:
        """(pid, node id) of each actor, in worker order."""
        return ray.get([a.where.remote() for a in self.actors])

    def close(self) -> None:
        for a in self.actors:
            try:
                ray.kill(a, no_restart=True)
            except Exception:
                pass
        self.actors = []
