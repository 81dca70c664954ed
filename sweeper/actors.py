"""A pool of Ray actors that trains one trial's clients: fl_core's `ClientExecutor` on Ray.

Each trial owns `fl.workers` `ClientWorker` actors, created inside the trial's placement
group (one bundle each, reserved by the sweeper's `PlacementGroupFactory`, so actors never
oversubscribe the cluster and never wait forever for resources the trial did not book).
The trial puts its `FederatedData` into the object store once; every actor maps it
zero-copy and wraps one `fl_core.client.ClientRunner`. A lazy population
(`fl_core.data.population`, e.g. 10^6 synthetic writers) is not put: it pickles as its
parameters, each actor rebuilds it (the n_k array) and fetches only its slice's writers. Each round the global weights are
put once and passed by reference; the round's tasks are cut into contiguous pieces (at least
one per actor, at most `max_piece` tasks each) dealt round-robin, and each piece's results
are handed on as it finishes (`stream`, which `fl_core.round` folds into its running sum)
or reassembled in task order (`map`).

Actors are stateless between rounds (as in Flower's `ray_actor.py`): a task carries its
client, role and derived seed, so any actor may train any task. A dead actor (killed,
OOM, node lost) is therefore replaced in the same bundle and its slice retried; the
round's result is unchanged, and no result depends on the number of workers.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator, Sequence

import numpy as np
import ray
import torch
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from fl_core.config import SimulationConfig
from fl_core.types import ClientResult, ClientTask

MAX_RETRIES_PER_SLICE = 3
#: default `max_piece`: tasks per actor call (64 updates of the paper CNN: ~300 MB)
MAX_PIECE = 64


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
        max_piece: the most tasks one actor call trains (`pieces`): bounds each actor's
            and the driver's updates in flight, whatever the cohort size.
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
        max_piece: int = MAX_PIECE,
    ):
        if workers < 1:
            raise ValueError(f"workers must be ≥ 1, got {workers}")
        self.config = config
        lazy = getattr(data, "lazy", False)
        self.data_ref = data if isinstance(data, ray.ObjectRef) or lazy else ray.put(data)
        self.cpus, self.gpus, self.device = cpus_per_worker, gpus_per_worker, device
        self.pg = ray.util.get_current_placement_group()
        self.bundle_offset = bundle_offset
        self.max_piece = max(1, int(max_piece))
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
        out: list[ClientResult | None] = [None] * len(tasks)
        for i, res in self.stream(tasks, global_params):
            out[i] = res
        if any(r is None for r in out):
            raise RuntimeError(f"executor returned {sum(r is not None for r in out)} results for {len(tasks)} tasks")
        return out  # type: ignore[return-value]

    def pieces(self, n_tasks: int) -> list[tuple[int, int]]:
        """Contiguous [start, stop) pieces of at most `max_piece` tasks, as many as needed
        but at least one per actor; piece j goes to actor j mod workers."""
        n_pieces = max(len(self.actors), -(-n_tasks // self.max_piece))
        return split(n_tasks, n_pieces)

    def stream(self, tasks: Sequence[ClientTask], global_params: torch.Tensor) -> Iterator[tuple[int, ClientResult]]:
        """Train `tasks` from `global_params`, yielding (position, result) as pieces finish.

        The tasks are cut into `pieces`, dealt round-robin (each actor runs its pieces in
        the order it got them), so pieces finish roughly in task order and the caller,
        which folds results in task order, buffers about one piece per actor: the driver
        holds O(workers × max_piece) updates, not the cohort's. A piece whose actor died
        is retried on a fresh actor in the same bundle (stateless actors: same result)."""
        tasks = list(tasks)
        if not tasks:
            return
        params_ref = ray.put(global_params)  # sent once per round, by reference
        pieces = self.pieces(len(tasks))
        pending: dict[Any, tuple[int, int, Any]] = {}  # ref → (piece, attempt, the actor it ran on)

        def submit(j: int, attempt: int) -> None:
            a, b = pieces[j]
            actor = self.actors[j % len(self.actors)]
            pending[actor.run.remote(tasks[a:b], params_ref)] = (j, attempt, actor)

        for j in range(len(pieces)):
            submit(j, 0)
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            j, attempt, actor = pending.pop(ref)
            try:
                packed = ray.get(ref)
            except (RayActorError, ActorUnavailableError) as e:
                # an error in ClientRunner.__init__ is a bug or bad input, not a lost actor:
                # a fresh actor would fail the same way
                if attempt == MAX_RETRIES_PER_SLICE or getattr(e, "actor_init_failed", False):
                    raise
                i = j % len(self.actors)
                if self.actors[i] is actor:  # not yet replaced for another of its pieces
                    self._replace(i)
                submit(j, attempt + 1)
                continue
            del ref
            a, b = pieces[j]
            results = unpack(packed)
            del packed
            if len(results) != b - a:
                raise RuntimeError(f"an actor returned {len(results)} results for {b - a} tasks")
            for k in range(len(results)):
                res, results[k] = results[k], None  # type: ignore[call-overload]
                yield a + k, res
                del res

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
