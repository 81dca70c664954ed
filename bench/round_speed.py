"""Seconds per FedAvg round on the paper's workload, for every client-training path, in one
run on one machine (issue 4). Not a test: `python bench/round_speed.py --help`.

Workload (defaults): 30 clients, all in every round (the population IS the cohort, so every
path trains exactly the same clients), 5 local epochs, ~100 synthetic writer-styled digits
per client (`data.source: synthetic`; sizes vary per writer), batch 20, plain SGD lr 0.1,
no attack, no evaluation inside the timed rounds.

Measured, in this order:
  floor       the bare-SGD floor: the same number of SGD steps of the same CNN (train mode,
              dropout on) on batches of the same shapes, inputs pre-made, no framework; in
              1 process × 1 thread, 1 process × N threads, and N processes × 1 thread
              (N = --cpus, each process doing a contiguous half of the clients, like actors)
  backends    `Simulation.step()` in this process with fl.backend sequential / vectorized
  ray pool    `sweeper.actors.RayActorExecutor` with 1 and 2 workers (1 CPU, 1 thread each):
              trial start-up, s/round, peak RSS per actor and an idle torch actor's RSS
  flower      Flower's simulation (`flwr.simulation.run_simulation`, message-API FedAvg,
              one ClientApp actor per CPU) of the same clients, run in a SEPARATE venv
              (--flower-python, default .venv-flwr/bin/python) because flwr pins its own ray
  throughput  rounds/s per backend × precision with evaluation every --eval-every rounds,
              and the paper grid's projected time (on CUDA: fp32/tf32/bf16; on CPU
              --precisions, default fp32)
  precisions  --precisions fp32,bf16 on a CPU (issue 24) adds, in the same run: the floor in
              fp32 channels-last, bf16 autocast (NCHW) and bf16 channels-last (what
              `fl.precision: bf16` runs on a CPU), the 2-process floor in bf16 channels-last,
              and the sequential, vectorized and Ray-pool rows at bf16; every bf16 row is
              also divided by the fp32 floor of the same run. The machine line gives the
              CPU's model and its bf16-related flags.

Ratios: in-process rows and the 1-worker pool are divided by the 1-process × 1-thread floor;
the 2-worker pool and Flower by the N-process floor (the same cores in use). Rows at another
precision are divided by the fp32 floors (the floor's own variants too).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Paper grid (NOTES.md "Experiments"): distinct configurations of figs 1/5 (4), 2/6 (4),
# 3 (4), 4a (4), 4b (3), 300 rounds each; multiply by the number of seeds you run.
PAPER_GRID_TRIALS = 19
PAPER_ROUNDS = 300


# -- helpers ------------------------------------------------------------------------------
def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def proc_memory(pid: int) -> dict[str, float]:
    """MB: peak RSS (VmHWM), RSS, anonymous/shared-memory RSS, and USS (private pages)."""
    out: dict[str, float] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(rest.split()[0]) / 1024
        uss = 0
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                uss += int(line.split()[1])
        out["USS"] = uss / 1024
    except OSError:
        pass
    return out


_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) a live process has used so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime
    except (OSError, IndexError, ValueError):
        return 0.0


def steal_fraction(seconds: float = 1.0) -> float:
    """Share of CPU time the hypervisor stole over `seconds` (`/proc/stat` steal column)."""
    def read():
        vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return vals[7] if len(vals) > 7 else 0, sum(vals)
    try:
        s0, t0 = read()
        time.sleep(seconds)
        s1, t1 = read()
        return (s1 - s0) / max(t1 - t0, 1)
    except OSError:
        return float("nan")


def machine() -> dict[str, Any]:
    import torch

    model = platform.processor()
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    info = {
        "cpu": model,
        "cores": os.cpu_count(),
        "load_avg": os.getloadavg(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    try:
        from fl_core.backends import cpu_bf16_support

        cap = cpu_bf16_support()
        info["cpu_bf16"] = {"supported": cap.supported, "present": list(cap.present), "source": cap.source}
    except ImportError:
        pass
    info["cpu_flags"] = cpu_flags()
    info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


#: the CPU flags reported next to the figures (what decides fp32 and bf16 speed)
REPORTED_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                  "amx_bf16", "amx_int8", "bf16", "asimd", "sve")


def cpu_flags() -> list[str]:
    """Which of `REPORTED_FLAGS` /proc/cpuinfo lists (Linux; empty elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            if key.strip() in ("flags", "Features"):
                have = set(val.split())
                return [f for f in REPORTED_FLAGS if f in have]
    except OSError:
        pass
    return []


# -- workload -----------------------------------------------------------------------------
def build_data(clients: int, examples: int, seed: int):
    """The synthetic writers via `fl_core.data.load_data` when the data package exposes it,
    else the synthetic module directly, else random digits of ~`examples` images each."""
    from fl_core.config import DataConfig

    cfg = DataConfig(source="synthetic", num_writers=clients, examples_per_writer=examples)
    try:
        from fl_core.data import load_data

        return load_data(cfg, seed), "fl_core.data.load_data(source=synthetic)"
    except ImportError:
        pass
    try:
        from fl_core.data.synthetic import load

        return load(cfg, seed), "fl_core.data.synthetic.load"
    except ImportError:
        import numpy as np

        from fl_core.data.base import from_writer_arrays

        rng = np.random.default_rng(seed)
        train, test = {}, {}
        for k in range(clients):
            n = int(rng.integers(int(examples * 0.8), int(examples * 1.2) + 1))
            lab = rng.integers(0, 10, n).astype(np.int64)
            lab[:2] = 7
            train[f"w{k:04d}"] = (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), lab)
            test[f"w{k:04d}"] = (rng.integers(0, 256, (10, 28, 28), dtype=np.uint8), rng.integers(0, 10, 10))
        return from_writer_arrays(train, test, "random"), "random uint8 (no synthetic source found)"


def workload_config(args, backend: str = "sequential", precision: str = "fp32", eval_every: int = 10**6):
    from fl_core.config import parse_config

    return parse_config(
        {
            "seed": args.seed,
            "data": {"source": "synthetic", "num_writers": args.clients, "examples_per_writer": args.examples},
            "fl": {
                "rounds": 10**6,  # never the last round: no evaluation unless eval_every says so
                "clients_per_round": args.clients,
                "local_epochs": args.epochs,
                "batch_size": args.batch,
                "client_lr": 0.1,
                "eval_every": eval_every,
                "eval_subsample": args.eval_subsample,
                "backend": backend,
                "precision": precision,
                "device": args.device,
                "threads": args.threads,
            },
            "attack": {"num_tasks": min(10, args.clients)},
        }
    )


def round_batches(data, cohort: list[int], epochs: int, batch: int) -> list[list[int]]:
    """Per client of the cohort, the batch sizes of all its steps (the last partial one too)."""
    out = []
    for k in cohort:
        n = data.num_train(k)
        per_epoch = [min(batch, n - s) for s in range(0, n, batch)]
        out.append(per_epoch * epochs)
    return out


# -- the bare-SGD floor -------------------------------------------------------------------
def bare_sgd(batch_sizes: list[int], device: str, threads: int, reps: int, lr: float = 0.1,
             barrier=None, bf16: bool = False, channels_last: bool = False) -> list[tuple[float, float]]:
    """(start, end, cpu seconds) of `reps` repetitions of the steps (`time.monotonic()`,
    `time.process_time()`); nothing but forward, backward and `p -= lr·g` of the CNN on
    pre-made batches. `bf16`: the steps inside one `torch.autocast(bfloat16)` region with
    the weight cache off, float32 weights (as `fl.precision: bf16` runs them);
    `channels_last`: the CNN's weights in channels-last (NHWC) memory format."""
    import contextlib

    import torch
    import torch.nn.functional as F

    from fl_core.models import CNN

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    model = CNN().to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = list(model.parameters())
    dev_type = torch.device(device).type
    region = (lambda: torch.autocast(dev_type, dtype=torch.bfloat16, cache_enabled=False)) if bf16 \
        else contextlib.nullcontext
    xs = {b: torch.rand((b, 1, 28, 28), generator=gen).to(device) for b in set(batch_sizes)}
    ys = {b: torch.randint(0, 10, (b,), generator=gen).to(device) for b in set(batch_sizes)}

    def steps(sizes):
        for b in sizes:
            model.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(xs[b]), ys[b])
            loss.backward()
            with torch.no_grad():
                for p in params:
                    p.add_(p.grad, alpha=-lr)

    with region():
        steps(batch_sizes[:10])  # warm-up (allocator, oneDNN primitive cache)
    _sync(device)
    out = []
    for _ in range(reps):
        if barrier is not None:
            barrier.wait()
        t0, c0 = time.monotonic(), time.process_time()
        with region():
            steps(batch_sizes)
        _sync(device)
        out.append((t0, time.monotonic(), time.process_time() - c0))
    return out


def _floor_child(batch_sizes, device, reps, barrier, queue, bf16=False, channels_last=False):
    queue.put(bare_sgd(batch_sizes, device, 1, reps, barrier=barrier, bf16=bf16, channels_last=channels_last))


def floor_multiprocess(parts: list[list[int]], device: str, reps: int, bf16: bool = False,
                       channels_last: bool = False) -> dict[str, list[float]]:
    """Wall seconds and summed CPU seconds per repetition of `len(parts)` processes × 1
    thread, started together."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(len(parts)), ctx.Queue()
    procs = [ctx.Process(target=_floor_child, args=(p, device, reps, barrier, queue, bf16, channels_last))
             for p in parts]
    for p in procs:
        p.start()
    spans = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return {"round_s": [max(s[r][1] for s in spans) - min(s[r][0] for s in spans) for r in range(reps)],
            "cpu_s": [sum(s[r][2] for s in spans) for r in range(reps)]}


def floor_single(batch_sizes: list[int], device: str, threads: int, reps: int, bf16: bool = False,
                 channels_last: bool = False) -> dict[str, list[float]]:
    spans = bare_sgd(batch_sizes, device, threads, reps, bf16=bf16, channels_last=channels_last)
    return {"round_s": [b - a for a, b, _ in spans], "cpu_s": [c for _, _, c in spans]}


def split(n: int, k: int) -> list[tuple[int, int]]:
    base, extra = divmod(n, k)
    out, start = [], 0
    for i in range(k):
        stop = start + base + (1 if i < extra else 0)
        out.append((start, stop))
        start = stop
    return out


# -- in-process backends ------------------------------------------------------------------
def time_rounds(sim, warmup: int, rounds: int, device: str,
                cpu: Callable[[], float] = time.process_time) -> dict[str, list[float]]:
    """Wall and CPU seconds of each timed round; `cpu()` is the cumulative CPU time of every
    process doing the round's work (this one, plus actors)."""
    for _ in range(warmup):
        sim.step()
    wall, used = [], []
    for _ in range(rounds):
        _sync(device)
        t0, c0 = time.perf_counter(), cpu()
        sim.step()
        _sync(device)
        wall.append(time.perf_counter() - t0)
        used.append(cpu() - c0)
    return {"round_s": wall, "cpu_s": used}


def bench_backend(args, data, backend: str, precision: str = "fp32") -> dict[str, Any]:
    from fl_core.simulate import Simulation

    cfg = workload_config(args, backend, precision)
    t0 = time.perf_counter()
    sim = Simulation(cfg, data)
    startup = time.perf_counter() - t0
    return {"startup_s": startup, **time_rounds(sim, args.warmup, args.rounds, args.device),
            "backend": sim.executor.runner.backend.name}


# -- Ray actor pool -----------------------------------------------------------------------
def bench_ray(args, data, workers_list: list[int], precisions: tuple[str, ...] = ("fp32",)) -> dict[str, Any]:
    import ray

    from fl_core.simulate import Simulation
    from sweeper.actors import RayActorExecutor

    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    # address="local": always a fresh private cluster, never one another process started
    ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    out["ray_init_s"] = time.perf_counter() - t0
    try:

        @ray.remote(num_cpus=1)
        class IdleTorchActor:
            """What any torch actor costs before it holds data or a model."""

            def __init__(self):
                import fl_core.client  # noqa: F401  (torch + the engine's imports)

            def pid(self):
                return os.getpid()

        idle = IdleTorchActor.remote()
        idle_pid = ray.get(idle.pid.remote())
        out["idle_actor_mb"] = proc_memory(idle_pid)
        ray.kill(idle)

        for p, w in [(p, w) for p in precisions for w in (workers_list if p == "fp32" else [max(workers_list)])]:
            cfg = workload_config(args, "sequential", p)
            t0 = time.perf_counter()
            ref = ray.put(data)
            ex = RayActorExecutor(cfg, ref, w, cpus_per_worker=1.0, bundle_offset=0, device=args.device)
            pids = actor_pids(ex)  # waits until every actor is constructed
            sim = Simulation(cfg, data, executor=ex)
            startup = time.perf_counter() - t0
            timed = time_rounds(sim, args.warmup, args.rounds, "cpu",
                                cpu=lambda pids=pids: time.process_time() + sum(proc_cpu(p) for p in pids))
            now = actor_pids(ex)
            mem = [proc_memory(p) for p in now]
            out[f"workers{w}" + ("" if p == "fp32" else f"_{p}")] = {
                "startup_s": startup, **timed, "actor_mb": mem, "pids": pids, "replaced_actors": now != pids}
            ex.close()
            del ex, sim, ref
    finally:
        ray.shutdown()
    return out


def actor_pids(ex) -> list[int]:
    """PIDs of a RayActorExecutor's actors (its `where()`: (pid, node id) per worker)."""
    return [pid for pid, _ in ex.where()]


# -- Flower (run in its own venv) ---------------------------------------------------------
def bench_flower(args, data, cohort: list[int]) -> dict[str, Any]:
    import numpy as np

    py = Path(args.flower_python)
    if not py.exists():
        return {"skipped": f"{py} not found (make it: python -m venv .venv-flwr && "
                           ".venv-flwr/bin/pip install 'flwr[simulation]'; see bench/README.md)"}
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "clients.npz"
        px = [data.train_pixels[data.train_slice(k)] for k in cohort]
        lb = [data.train_labels[data.train_slice(k)] for k in cohort]
        off = np.zeros(len(cohort) + 1, np.int64)
        off[1:] = np.cumsum([len(x) for x in lb])
        np.savez(npz, pixels=np.concatenate(px), labels=np.concatenate(lb), offsets=off)
        result = Path(tmp) / "flower.json"
        cmd = [str(py), str(Path(__file__).resolve()), "--_flower-child", str(npz), "--_flower-out", str(result),
               "--rounds", str(args.rounds + args.warmup), "--epochs", str(args.epochs), "--batch", str(args.batch),
               "--cpus", str(args.cpus)]
        env = dict(os.environ, PYTHONPATH=str(REPO), RAY_DEDUP_LOGS="0")
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.flower_timeout)
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or not result.exists():
            tail = (proc.stdout + proc.stderr)[-1500:]
            return {"skipped": f"flower run failed (rc {proc.returncode}): {tail}"}
        res = json.loads(result.read_text())
    stamps = res["stamps"]  # evaluate_fn calls: before round 1 and after each round
    cpus = res["cpu"]
    return {
        "version": res["version"],
        "ray_version": res["ray_version"],
        "round_s": [b - a for a, b in zip(stamps, stamps[1:])][args.warmup:],
        "cpu_s": [b - a for a, b in zip(cpus, cpus[1:])][args.warmup:],
        "startup_s": stamps[0] - res["t_process_start"],
        "process_wall_s": wall,
        "actor_mb": res["actor_mb"],
    }


def flower_child(args) -> None:
    """Runs under the Flower venv: a ClientApp doing the same SGD steps as our clients
    (tensors already in memory, CPU generator permutation per epoch, plain SGD), and a
    ServerApp running message-API FedAvg on all clients every round."""
    t_process_start = time.monotonic()
    import threading

    import numpy as np
    import ray
    import torch
    import torch.nn.functional as F
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    import flwr

    from fl_core.models import CNN

    d = np.load(args._flower_child)
    pixels, labels = torch.from_numpy(d["pixels"].copy()), torch.from_numpy(d["labels"].copy())
    offsets = d["offsets"].tolist()
    num_clients = len(offsets) - 1
    epochs, batch, lr = args.epochs, args.batch, 0.1

    client_app = ClientApp()

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        k = int(context.node_config["partition-id"])
        x_all = pixels[offsets[k] : offsets[k + 1]]
        y_all = labels[offsets[k] : offsets[k + 1]]
        model = CNN()
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
        model.train()
        gen = torch.Generator().manual_seed(1000 * int(msg.content["config"].get("server-round", 0)) + k)
        n, total, steps = len(y_all), 0.0, 0
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen)
            for s in range(0, n, batch):
                idx = perm[s : s + batch]
                xb = x_all[idx].unsqueeze(1).to(torch.float32).div_(255.0)
                model.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(xb), y_all[idx])
                loss.backward()
                with torch.no_grad():
                    for p in model.parameters():
                        p.add_(p.grad, alpha=-lr)
                total += float(loss.detach())
                steps += 1
        content = RecordDict(
            {"arrays": ArrayRecord(model.state_dict()),
             "metrics": MetricRecord({"train_loss": total / max(steps, 1), "num-examples": n})}
        )
        return Message(content=content, reply_to=msg)

    stamps: list[float] = []
    cpu: list[float] = []  # this process + every live ClientAppActor, cumulative

    def actor_pids() -> list[int]:
        pids = []
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    if b"ClientAppActor" in (p / "cmdline").read_bytes():
                        pids.append(int(p.name))
                except OSError:
                    pass
        return pids

    def stamp(rnd, arrays):
        stamps.append(time.monotonic())
        cpu.append(time.process_time() + sum(proc_cpu(p) for p in actor_pids()))
        return None

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=num_clients,
                          min_available_nodes=num_clients)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(CNN().state_dict()), num_rounds=args.rounds,
                       evaluate_fn=stamp)

    # Sample the ClientApp actors' memory while they live.
    actor_mem: dict[int, dict[str, float]] = {}
    stop = threading.Event()

    def sampler():
        while not stop.is_set():
            for pid in actor_pids():
                m = proc_memory(pid)
                if m:
                    actor_mem[pid] = m
            stop.wait(0.5)

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_clients,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"address": "local", "num_cpus": args.cpus,
                                                 "include_dashboard": False}})
    stop.set()
    th.join()
    Path(args._flower_out).write_text(json.dumps({
        "stamps": stamps, "cpu": cpu, "t_process_start": t_process_start, "version": flwr.__version__,
        "ray_version": ray.__version__, "actor_mb": list(actor_mem.values()),
    }))


# -- throughput with evaluation, per precision (the GPU table) ----------------------------
def bench_throughput(args, data, backend: str, precision: str) -> dict[str, Any]:
    from fl_core.simulate import Simulation

    cfg = workload_config(args, backend, precision, eval_every=args.eval_every)
    sim = Simulation(cfg, data)
    for _ in range(args.warmup):
        sim.step()
    _sync(args.device)
    t0 = time.perf_counter()
    evals = []
    for _ in range(args.throughput_rounds):
        m = sim.step()
        if m is not None:
            evals.append(m["main_acc"])
    _sync(args.device)
    dt = time.perf_counter() - t0
    rps = args.throughput_rounds / dt
    return {"rounds_per_s": rps, "rounds": args.throughput_rounds, "evals": len(evals),
            "grid_hours_per_seed": args.grid_trials * args.grid_rounds / rps / 3600}


# -- report -------------------------------------------------------------------------------
def fmt_row(name: str, times: list[float], floor: float | None, flower: float | None, note: str = "") -> str:
    med = _median(times)
    lo, hi = (min(times), max(times)) if times else (float("nan"),) * 2
    xf = f"{med / floor:6.3f}" if floor else "     -"
    xw = f"{med / flower:6.3f}" if flower else "     -"
    return f"| {name:<44} | {med:8.3f} | {lo:7.3f}–{hi:<7.3f} | {xf} | {xw} | {note}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--smoke", action="store_true", help="tiny workload, 1 round of everything: checks the script runs")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="torch device for the in-process paths")
    ap.add_argument("--clients", type=int, default=30, help="clients per round (= population)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--examples", type=int, default=100, help="mean train images per client")
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="fl.threads of the in-process backends")
    ap.add_argument("--cpus", type=int, default=min(2, os.cpu_count() or 1), help="CPUs for Ray / the multi-process floor")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per path")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backends", default="sequential,vectorized")
    ap.add_argument("--workers", default="1,2", help="Ray pool sizes")
    ap.add_argument("--precisions", default="fp32",
                    help="CPU: fl.precision values to time (fp32,bf16: bf16 rows and floor variants next to fp32, "
                    "issue 24; bf16 needs a CPU with avx512_bf16/amx_bf16); also the throughput rows' precisions "
                    "on a CPU (CUDA's throughput rows always time fp32,tf32,bf16)")
    ap.add_argument("--no-floor", action="store_true")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--no-flower", action="store_true")
    ap.add_argument("--flower-python", default=str(REPO / ".venv-flwr" / "bin" / "python"))
    ap.add_argument("--flower-timeout", type=int, default=1800)
    ap.add_argument("--throughput", action=argparse.BooleanOptionalAction, default=None,
                    help="rounds/s with eval every --eval-every (default: on for cuda, off for cpu unless --smoke)")
    ap.add_argument("--throughput-rounds", type=int, default=20)
    ap.add_argument("--throughput-backends", default=None,
                    help="backends of the throughput rows (default: --backends); the device check "
                    "times only vectorized there, to fit its time box")
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--eval-subsample", type=int, default=None, help="fl.eval_subsample of the throughput runs")
    ap.add_argument("--grid-trials", type=int, default=PAPER_GRID_TRIALS, help="trials of the projected grid (per seed)")
    ap.add_argument("--grid-rounds", type=int, default=PAPER_ROUNDS)
    ap.add_argument("--json", type=Path, default=None, help="also write every figure here")
    ap.add_argument("--_flower-child", dest="_flower_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_flower-out", dest="_flower_out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._flower_child:
        flower_child(args)
        return 0
    if args.smoke:
        args.clients, args.epochs, args.examples, args.rounds, args.warmup = 4, 1, 30, 1, 0
        args.throughput_rounds, args.eval_every = 2, 2
        if args.throughput is None:
            args.throughput = True
    if args.throughput is None:
        args.throughput = args.device == "cuda"

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda but no CUDA device here", file=sys.stderr)
        return 2

    info = machine()
    info["steal_start"] = steal_fraction()
    print(f"# round_speed  {info['date']}  {info['cpu']} ({info['cores']} cores)  torch {info['torch']}"
          f"  load {info['load_avg'][0]:.2f}/{info['load_avg'][1]:.2f}/{info['load_avg'][2]:.2f}"
          + (f"  gpu {info['gpu']}" if "gpu" in info else ""))
    print(f"# cpu flags: {' '.join(info['cpu_flags']) or '(none read)'}; torch CPU capability {info['cpu_capability']}"
          + (f"; bf16 autocast supported: {info['cpu_bf16']['supported']}" if "cpu_bf16" in info else ""))
    precisions = tuple(x for x in args.precisions.split(",") if x)
    extra_p = [p for p in precisions if p != "fp32"] if args.device == "cpu" else []
    t0 = time.perf_counter()
    data, source = build_data(args.clients, args.examples, args.seed)
    data_s = time.perf_counter() - t0
    cohort = list(range(data.num_writers))[: args.clients]
    sizes = [data.num_train(k) for k in cohort]
    batches = round_batches(data, cohort, args.epochs, args.batch)
    nsteps = sum(len(b) for b in batches)
    print(f"# workload: {len(cohort)} clients × {args.epochs} epochs, batch {args.batch}, {sum(sizes)} images "
          f"(per client {min(sizes)}–{max(sizes)}, mean {sum(sizes) / len(sizes):.1f}) = {nsteps} SGD steps/round; "
          f"data: {source} ({data_s:.2f} s)")
    results: dict[str, Any] = {"machine": info, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                               "workload": {"sizes": sizes, "steps_per_round": nsteps, "data": source, "data_load_s": data_s}}

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        print(f"  … {name}", file=sys.stderr, flush=True)
        try:
            return fn()
        except Exception as e:  # a benchmark row failing must not lose the others
            print(f"  ! {name} failed: {type(e).__name__}: {e}", file=sys.stderr)
            return {"skipped": f"{type(e).__name__}: {e}"}

    flat = [b for per in batches for b in per]
    reps = args.rounds
    if not args.no_floor:
        results["floor_1p1t"] = stage("floor 1 process × 1 thread", lambda: floor_single(flat, args.device, 1, reps))
        if args.device == "cpu" and args.cpus > 1:
            # one repetition: on a shared machine N intra-op threads are the slowest row by far
            results[f"floor_1p{args.cpus}t"] = stage(
                f"floor 1 process × {args.cpus} threads", lambda: floor_single(flat, "cpu", args.cpus, 1))
            parts = [[b for per in batches[a:z] for b in per] for a, z in split(len(batches), args.cpus)]
            results[f"floor_{args.cpus}p1t"] = stage(f"floor {args.cpus} processes × 1 thread",
                                                     lambda: floor_multiprocess(parts, "cpu", reps))
        if "bf16" in extra_p:  # the layout and the precision, each alone and together
            for key, label, bf, cl in (("floor_1p1t_fp32_cl", "fp32 channels-last", False, True),
                                       ("floor_1p1t_bf16", "bf16 autocast NCHW", True, False),
                                       ("floor_1p1t_bf16_cl", "bf16 autocast channels-last", True, True)):
                results[key] = stage(f"floor 1 process × 1 thread, {label}",
                                     lambda bf=bf, cl=cl: floor_single(flat, "cpu", 1, reps, bf16=bf, channels_last=cl))
            if args.cpus > 1:
                results[f"floor_{args.cpus}p1t_bf16_cl"] = stage(
                    f"floor {args.cpus} processes × 1 thread, bf16 channels-last",
                    lambda: floor_multiprocess(parts, "cpu", reps, bf16=True, channels_last=True))
    for b in [x for x in args.backends.split(",") if x]:
        results[f"backend_{b}"] = stage(f"backend {b}", lambda b=b: bench_backend(args, data, b))
        for p in extra_p:
            results[f"backend_{b}_{p}"] = stage(f"backend {b} {p}", lambda b=b, p=p: bench_backend(args, data, b, p))
    workers = [int(w) for w in args.workers.split(",") if w]
    if not args.no_ray and workers:
        try:
            import ray  # noqa: F401

            import sweeper.actors  # noqa: F401

            results["ray"] = stage("ray actor pool", lambda: bench_ray(args, data, workers, ("fp32", *extra_p)))
        except ImportError as e:
            results["ray"] = {"skipped": f"ray actor pool not available: {e}"}
    if not args.no_flower:
        results["flower"] = stage("flower", lambda: bench_flower(args, data, cohort))
    if args.throughput:
        tp_precisions = ["fp32", "tf32", "bf16"] if args.device == "cuda" else ["fp32", *extra_p]
        tp = {}
        for b in [x for x in (args.throughput_backends or args.backends).split(",") if x]:
            for p in tp_precisions:
                tp[f"{b}/{p}"] = stage(f"throughput {b} {p}", lambda b=b, p=p: bench_throughput(args, data, b, p))
        if args.device != "cuda":
            tp["note"] = ("tf32 is CUDA-only; bf16 on a CPU with avx512_bf16/amx_bf16: --precisions fp32,bf16"
                          if not extra_p else "tf32 is CUDA-only")
        results["throughput"] = tp

    # -- table ----------------------------------------------------------------------------
    def series(key: str, sub: str | None = None, what: str = "round_s") -> list[float]:
        r = results.get(key)
        if isinstance(r, dict) and sub is not None:
            r = r.get(sub)
        r = r.get(what) if isinstance(r, dict) else None
        return list(r) if isinstance(r, list) else []

    def med(key: str, sub: str | None = None, what: str = "round_s") -> float | None:
        xs = series(key, sub, what)
        return _median(xs) if xs else None

    n = args.cpus
    floors = {"1p": (med("floor_1p1t"), med("floor_1p1t", what="cpu_s")),
              f"{n}p": (med(f"floor_{n}p1t"), med(f"floor_{n}p1t", what="cpu_s"))}
    flw = results.get("flower", {})
    fw = (med("flower"), med("flower", what="cpu_s"))
    rows: list[tuple[str, str, str | None, str]] = [  # label, key, sub, floor used
        ("bare-SGD floor, 1 process × 1 thread", "floor_1p1t", None, "1p"),
        (f"bare-SGD floor, 1 process × {n} threads", f"floor_1p{n}t", None, "1p"),
        (f"bare-SGD floor, {n} processes × 1 thread", f"floor_{n}p1t", None, f"{n}p"),
    ]
    if "bf16" in extra_p:
        rows += [("bare-SGD floor, 1 process × 1 thread, fp32 channels-last", "floor_1p1t_fp32_cl", None, "1p"),
                 ("bare-SGD floor, 1 process × 1 thread, bf16 autocast NCHW", "floor_1p1t_bf16", None, "1p"),
                 ("bare-SGD floor, 1 process × 1 thread, bf16 channels-last", "floor_1p1t_bf16_cl", None, "1p"),
                 (f"bare-SGD floor, {n} processes × 1 thread, bf16 channels-last", f"floor_{n}p1t_bf16_cl", None,
                  f"{n}p")]
    for b in [x for x in args.backends.split(",") if x]:
        rows.append((f"fl_core {b}, in-process, {args.threads} thread", f"backend_{b}", None, "1p"))
        rows += [(f"fl_core {b}, in-process, {args.threads} thread, {p}", f"backend_{b}_{p}", None, "1p")
                 for p in extra_p]
    rows += [(f"fl_core Ray actor pool, {w} worker(s) × 1 CPU", "ray", f"workers{w}", "1p" if w == 1 else f"{n}p")
             for w in workers]
    if workers:
        rows += [(f"fl_core Ray actor pool, {max(workers)} worker(s) × 1 CPU, {p}", "ray", f"workers{max(workers)}_{p}",
                  "1p" if max(workers) == 1 else f"{n}p") for p in extra_p]
    if fw[0]:
        rows.append((f"Flower {flw['version']} simulation, {n} actors × 1 CPU", "flower", None, f"{n}p"))

    def ratio(a: float | None, b: float | None) -> str:
        return f"{a / b:6.3f}" if a and b else "     -"

    print()
    print("| path | wall s/round (median; min–max) | CPU s/round | ×floor wall | ×floor CPU | ×Flower wall | ×Flower CPU | floor |")
    print("|---|---|---|---|---|---|---|---|")
    for label, key, sub, fl in rows:
        wall = series(key, sub)
        if not wall:
            continue
        w, c = _median(wall), med(key, sub, "cpu_s")
        fwall, fcpu = floors.get(fl, (None, None))
        cpu_txt = f"{c:.2f}" if c else "-"
        print(f"| {label} | {w:.2f} ({min(wall):.2f}–{max(wall):.2f}) | {cpu_txt} | {ratio(w, fwall)} | {ratio(c, fcpu)} "
              f"| {ratio(w, fw[0])} | {ratio(c, fw[1])} | {fl}×1t |")
    print("(CPU s = user+system seconds of every process doing the round's work: this one, the actors; "
          "Ray's own daemons not counted. Under load, CPU s is the steadier figure.)")
    print()
    for key, r in results.items():
        if isinstance(r, dict) and "skipped" in r:
            print(f"- {key}: skipped: {r['skipped']}")
    # start-up and memory
    for b in [x for x in args.backends.split(",") if x]:
        r = results.get(f"backend_{b}", {})
        if "startup_s" in r:
            print(f"- start-up, in-process Simulation ({b}): {r['startup_s']:.2f} s (data generation {data_s:.2f} s not included)")
    ray_r = results.get("ray", {})
    if "ray_init_s" in ray_r:
        print(f"- ray.init (once per sweep, not per trial): {ray_r['ray_init_s']:.2f} s")
        idle = ray_r.get("idle_actor_mb", {})
        print(f"- idle torch actor (imports fl_core.client, no data/model): peak RSS {idle.get('VmHWM', float('nan')):.0f} MB, "
              f"USS {idle.get('USS', float('nan')):.0f} MB")
        for w in [*(f"{w}" for w in workers), *(f"{max(workers)}_{p}" for p in extra_p)]:
            r = ray_r.get(f"workers{w}")
            if not r:
                continue
            print(f"- trial start-up, {w} worker(s) (put data, actors ready, Simulation built): {r['startup_s']:.2f} s")
            for i, m in enumerate(r["actor_mb"]):
                extra = m.get("VmHWM", float("nan")) - idle.get("VmHWM", float("nan"))
                print(f"  actor {i}: peak RSS {m.get('VmHWM', float('nan')):.0f} MB (extra over idle torch actor "
                      f"{extra:.0f} MB), USS {m.get('USS', float('nan')):.0f} MB, shared-memory RSS {m.get('RssShmem', float('nan')):.0f} MB")
    if fw[0]:
        print(f"- Flower: start-up to first round {flw['startup_s']:.2f} s (process start → round 1 begins, incl. ray.init); "
              f"ray {flw['ray_version']}")
        for i, m in enumerate(flw.get("actor_mb", [])):
            print(f"  Flower actor {i}: peak RSS {m.get('VmHWM', float('nan')):.0f} MB, USS {m.get('USS', float('nan')):.0f} MB")
    tp = results.get("throughput")
    if tp:
        print(f"\n| backend/precision ({args.device}, eval every {args.eval_every}) | rounds/s | paper grid h/seed "
              f"({args.grid_trials} trials × {args.grid_rounds} rounds)")
        for k, r in tp.items():
            if isinstance(r, dict) and "rounds_per_s" in r:
                print(f"| {k:<40} | {r['rounds_per_s']:8.3f} | {r['grid_hours_per_seed']:8.1f}")
            elif k == "note":
                print(f"  ({r})")
    info_end = os.getloadavg()
    results["steal_end"] = steal_fraction()
    print(f"# hypervisor steal over 1 s at end: {100 * results['steal_end']:.1f}%")
    print(f"\n# load average at end: {info_end[0]:.2f}/{info_end[1]:.2f}/{info_end[2]:.2f}")
    results["load_avg_end"] = info_end
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
