"""Real Ray on a local 3-node cluster (`ray.cluster_utils.Cluster`, shared by the module):
the actor executor (task order, 1 vs 2 workers bit-identical, a killed actor replaced
with an unchanged round), and whole sweeps driven from this process: trials spread over
nodes, worker count does not change results, a diverged trial ends as `diverged`
without stopping the sweep, fractional (logical) GPUs are reserved, and a trial that
cannot fit the cluster is refused before anything is written."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from fl_core.config import parse_config  # noqa: E402
from fl_core.data import load_data  # noqa: E402
from fl_core.simulate import Simulation  # noqa: E402
from sweeper.actors import RayActorExecutor, pack, split, unpack  # noqa: E402
from fl_core.types import ClientResult  # noqa: E402
from sweeper.errors import SweeperError  # noqa: E402
from sweeper.grid import load_grid  # noqa: E402
from sweeper.runner import run_sweep  # noqa: E402
from sweeper.status import sweep_status  # noqa: E402
from sweeper.tracking import STATUS, TRIAL_KEY, Tracker  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TINY = {
    "data": {"source": "synthetic", "num_writers": 12, "examples_per_writer": 20},
    "fl": {"rounds": 3, "clients_per_round": 5, "local_epochs": 1, "device": "cpu"},
    "attack": {"kind": "model-replacement", "fraction": 0.2, "frequency": 2, "num_tasks": 3},
}
TIMING = ("round_seconds", "eval_seconds", "aggregate_seconds")


@pytest.fixture(scope="module")
def cluster():
    """Two nodes of 2 CPUs and one logical GPU each (the head is one of them)."""
    from ray.cluster_utils import Cluster

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), old) if p)
    node = {"num_cpus": 2, "num_gpus": 1, "object_store_memory": 100 * 2**20}
    c = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    c.add_node(**node)
    ray.init(address=c.address, logging_level="WARNING")
    yield c, sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
    ray.shutdown()
    c.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


@pytest.fixture(scope="module")
def storage(tmp_path_factory):
    return tmp_path_factory.mktemp("sweeps")


def _run(cfg, executor=None, data=None):
    sim = Simulation(cfg, data=data, executor=executor)
    metrics = []
    while not sim.done:
        m = sim.step()
        metrics.append({k: v for k, v in m.items() if k not in TIMING})
    return sim.state.global_params, metrics


def test_pack_moves_updates_into_one_array_and_unpack_restores_them_exactly():
    g = torch.Generator().manual_seed(0)
    deltas = [torch.randn(7, generator=g) for _ in range(3)]
    results = [ClientResult(k, 0, "benign" if k else "attacker", 10 + k, d.clone(), {"train_loss": 0.5 * k})
               for k, d in enumerate(deltas)]
    light, arr = pack(list(results))
    assert arr.shape == (3, 7) and arr.dtype.name == "float32"
    assert all(r.delta.numel() == 0 for r in light)  # no tensor travels twice
    arr.setflags(write=False)  # what ray.get returns: a read-only buffer
    back = unpack((light, arr))
    for r, b in zip(results, back):
        assert (b.client_index, b.slot, b.role, b.num_examples, b.metrics) == (
            r.client_index, r.slot, r.role, r.num_examples, r.metrics)
        assert b.delta.dtype == torch.float32 and torch.equal(b.delta, r.delta)
    back[0].delta.add_(1.0)  # writable, and the caller owns it
    assert pack([])[0] == [] and unpack(pack([])) == []


def test_split_is_contiguous_and_balanced():
    assert split(5, 2) == [(0, 3), (3, 5)]
    assert split(2, 4) == [(0, 1), (1, 2)]
    assert split(7, 3) == [(0, 3), (3, 5), (5, 7)]


def test_executor_gives_the_serial_result_and_survives_killed_actors(cluster):
    torch.set_num_threads(1)
    cfg = parse_config(TINY)
    data = load_data(cfg.data, cfg.seed)
    ref_w, ref_m = _run(cfg, data=data)  # SerialExecutor in this process

    two = RayActorExecutor(cfg, data, workers=2, cpus_per_worker=0.5)
    before = two.where()
    sim = Simulation(cfg, data=data, executor=two)
    got = [sim.step()]
    ray.kill(two.actors[0])            # dies between rounds ...
    got.append(sim.step())
    killer = threading.Timer(0.05, lambda: ray.kill(two.actors[1]))
    killer.start()                     # ... and (most likely) during one
    got.append(sim.step())
    killer.join()
    after = two.where()
    assert two.replacements >= 2
    assert before[0][0] != after[0][0] and before[1][0] != after[1][0]  # new processes
    assert torch.equal(sim.state.global_params, ref_w)
    assert [{k: v for k, v in m.items() if k not in TIMING} for m in got] == ref_m
    two.close()


GRID = """\
name: {name}
base:
  data: {{source: synthetic, num_writers: 12, examples_per_writer: 20}}
  fl: {{rounds: 3, clients_per_round: 5, local_epochs: 1, checkpoint_every: 2}}
  attack: {{kind: model-replacement, fraction: 0.2, frequency: 2, num_tasks: 3}}
grid:
{grid}
resources: {resources}
"""


def _grid(tmp_path: Path, name: str, grid: str, resources: str):
    p = tmp_path / f"{name}.yaml"
    p.write_text(GRID.format(name=name, grid=textwrap.indent(grid, "  "), resources=resources))
    return load_grid(p)


def _histories(tracker: Tracker, run_id: str) -> dict[str, list[tuple[int, float]]]:
    run = tracker.get_run(run_id)
    return {k: sorted((m.step, m.value) for m in tracker.client.get_metric_history(run_id, k))
            for k in run.data.metrics if k not in TIMING}


def test_sweep_spreads_over_nodes_workers_change_nothing_divergence_is_contained(cluster, storage, tmp_path):
    """One sweep, 4 trials: fl.workers 1 vs 2 give bit-identical metric histories and
    final weights; lr = 1e9 diverges in round 2 and ends as `diverged` while the others
    finish; each trial reserves a 0.5 (logical) GPU share; no node can hold more than two
    of the trials (CPU and GPU), so they spread over both nodes."""
    g = _grid(tmp_path, "workers", "fl.client_lr: [0.05, 1.0e+9]\nfl.workers: [1, 2]",
              "{cpus_per_trial: 0.5, cpus_per_worker: 0.5, gpus_per_trial: 0.5}")
    # a real `fl-sweep run --address` driver attached to the running cluster
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from sweeper.cli import main; sys.exit(main(sys.argv[1:]))",
         "run", g.path, "--address", cluster[0].address, "--storage", str(storage)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
        timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "4 trials: 2 finished, 2 diverged" in proc.stdout
    assert proc.stdout.count("diverged (diverged: global weights became NaN/inf in round 2") == 2
    s = sweep_status("workers", str(storage))
    tracker = Tracker(s.manifest["tracking_uri"])
    by = {(t.overrides["fl.client_lr"], t.overrides["fl.workers"]): t for t in s.trials}
    ok1, ok2 = by[(0.05, 1)], by[(0.05, 2)]
    assert ok1.state == ok2.state == "finished"
    assert ok1.round == ok1.rounds == 3
    h1, h2 = _histories(tracker, ok1.run_id), _histories(tracker, ok2.run_id)
    assert set(h1) >= {"main_acc", "backdoor_acc", "aggregate_norm", "round"}
    assert h1 == h2
    art = [Path(tracker.client.download_artifacts(r, "final_weights.pt", str(tmp_path / r)))
           for r in (ok1.run_id, ok2.run_id)]
    assert torch.equal(torch.load(art[0]), torch.load(art[1]))
    for w in (1, 2):
        d = by[(1.0e9, w)]
        run = tracker.get_run(d.run_id)
        assert d.state == "diverged" and run.info.status == "FAILED"
        assert run.data.tags["fl_sweep.diverged_round"] == "2"
        assert d.main_acc is not None  # round 1 was evaluated and logged
    nodes = set()
    for t in s.trials:
        tags = tracker.get_run(t.run_id).data.tags
        assert tags["fl_sweep.gpu_ids"] != ""
        assert set(tags["fl_sweep.worker_nodes"].split(",")) <= set(cluster[1])
        assert tags[STATUS] in ("finished", "diverged") and tags[TRIAL_KEY] == t.trial_key
        nodes.add(tags["fl_sweep.node"])
    assert sorted(nodes) == cluster[1]
    arts = {a.path for a in tracker.client.list_artifacts(ok1.run_id)}
    assert arts == {"config.yaml", "metrics.jsonl", "final_weights.pt", "curves.png"}
    parent_arts = {a.path for a in tracker.client.list_artifacts(s.manifest["parent_run_id"])}
    # the grid as run, the trial table, every trial's final metrics and the report (the
    # dashboard's landing page, sweeper/landing.py)
    assert parent_arts == {"grid.yaml", "trials.csv", "trials_final.json", "report"}
    assert tracker.get_run(s.manifest["parent_run_id"]).info.status == "FINISHED"


def test_a_trial_that_cannot_fit_is_refused_before_anything_is_written(cluster, storage, tmp_path):
    g = _grid(tmp_path, "toobig", "seed: [0]", "{workers: 2, cpus_per_worker: 2}")
    with pytest.raises(SweeperError, match=r"needs CPU=5 .* the cluster has CPU=4, GPU=2"):
        run_sweep(g, storage=str(storage), echo=lambda s: None)
    g = _grid(tmp_path, "nonode", "seed: [0]", "{workers: 1, cpus_per_worker: 3}")
    with pytest.raises(SweeperError, match="fits on no node"):
        run_sweep(g, storage=str(storage), echo=lambda s: None)
    assert not (storage / "toobig").exists() and not (storage / "nonode").exists()
