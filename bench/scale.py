"""Seconds per round against clients per round (issue 11, item 3): does a client cost the
same in a cohort of 1,000 as in a cohort of 30? Not a test: `python bench/scale.py --help`.

Workload: `data.source: synthetic` with K writers (K = the largest cohort unless
--population says more, so every cohort is drawn without replacement from the same
population), --examples mean train images per writer, 1 local epoch (--epochs), batch 20,
plain SGD, no attack, no evaluation inside the timed rounds. For each backend a child
process builds the data once and runs the cohort sizes in ascending order, each with
--warmup untimed and --rounds timed rounds of `Simulation.step()`; a child that passes
its --timeout is stopped and the table says at which cohort size.

Per cell: seconds per round (median; wall time, and the child's CPU time, which other jobs on a
shared machine slow down but do not inflate), of which client training (the executor's `map`,
deltas back on the host included) and the server side (the rest: planning, clipping,
the float64 aggregate, the update); seconds per client and per 1,000 training images;
the per-client cost relative to the cohort of 30 (the slope: 1.00 = linear scaling);
peak host RSS of the child so far (sizes ascend, so that is this cell's peak or an
earlier one's), its growth per added client since the previous cell (what a round holds
per client: ~0 when FedAvg streams the updates into its running sum, 4.6 MB when the round
kept every client's update) and, on CUDA, the cell's peak GPU memory (torch's allocator).

--rss adds a second table: peak host RSS (ru_maxrss) of one trial against the number of
synthetic writers K (--rss-sizes, default 10^3, 10^5, 10^6, 10^7), each K in a fresh child
process: load the data, build the `Simulation` (targets, attacker pool, evaluator), run
--rss-rounds rounds of --rss-clients clients (1 epoch, an attacker every round, evaluation
after the last round on fl.eval_subsample = --rss-eval images). Above
`fl_core.data.synthetic.LAZY_ABOVE` writers the population is lazy (the n_k array plus the
round's writers); at and below it all pixels are in memory. The ratio column divides by
K = 10^3 (issue 11's target: ≤ 1.2× at 10^6, plus the n_k array). `--backends ''` skips
the cohort table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
for p in (str(REPO), str(BENCH)):
    if p not in sys.path:
        sys.path.insert(0, p)

from timebox import run_limited  # noqa: E402

CELL_TAG = "SCALE_CELL "
RSS_TAG = "SCALE_RSS "
DEFAULT_RSS_SIZES = (10**3, 10**5, 10**6, 10**7)
START_TAG = "SCALE_START "
DEFAULT_SIZES = (10, 30, 100, 300, 1000)
REF_CLIENTS = 30


# -- the child: one backend, every cohort size --------------------------------------------
class TimedExecutor:
    """Wraps an executor and adds up the wall time of its `map` or `stream` (the clients'
    training, the deltas' copy to the host included) and the training images it saw."""

    def __init__(self, inner, device: str):
        self.inner, self.device = inner, device
        self.seconds, self.images = 0.0, 0

    def map(self, tasks, global_params):
        t0 = time.perf_counter()
        out = self.inner.map(tasks, global_params)
        _sync(self.device)
        self.seconds += time.perf_counter() - t0
        self.images += sum(r.num_examples for r in out)
        return out

    def stream(self, tasks, global_params):
        """The inner executor's stream (what `run_round` uses), timing only the time spent
        inside it: the server's per-result work between two results is not training."""
        it = iter(self.inner.stream(tasks, global_params))
        while True:
            t0 = time.perf_counter()
            try:
                i, res = next(it)
            except StopIteration:
                self.seconds += time.perf_counter() - t0
                return
            _sync(self.device)
            self.seconds += time.perf_counter() - t0
            self.images += res.num_examples
            yield i, res
            del res


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _rss_mb() -> tuple[float, float]:
    """(peak RSS so far, current RSS) of this process in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB on Linux
    cur = float("nan")
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                cur = int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak, cur


def cell_config(args, clients: int):
    from fl_core.config import parse_config

    return parse_config({
        "seed": args.seed,
        "data": {"source": "synthetic", "num_writers": args.population, "examples_per_writer": args.examples},
        "fl": {
            "rounds": 10**6,  # never the last round: no evaluation in the timed rounds
            "eval_every": 10**6,
            "clients_per_round": clients,
            "local_epochs": args.epochs,
            "batch_size": args.batch,
            "client_lr": 0.1,
            "sampling": "without-replacement",
            "backend": args._child,
            "precision": args.precision,
            "device": args.device,
            "threads": args.threads,
        },
        "attack": {"num_tasks": min(10, args.population)},
    })


def run_cell(args, data, clients: int) -> dict[str, Any]:
    import torch

    from fl_core.client import ClientRunner
    from fl_core.executor import SerialExecutor
    from fl_core.simulate import Simulation

    cfg = cell_config(args, clients)
    if args.device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    ex = TimedExecutor(SerialExecutor(ClientRunner(cfg, data, args.device)), args.device)
    sim = Simulation(cfg, data, executor=ex)
    startup = time.perf_counter() - t0
    for _ in range(args.warmup):
        sim.step()
    rounds, cpu, train, images = [], [], [], []
    for _ in range(args.rounds):
        s0, i0 = ex.seconds, ex.images
        _sync(args.device)
        t0, c0 = time.perf_counter(), time.process_time()
        sim.step()
        _sync(args.device)
        rounds.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        train.append(ex.seconds - s0)
        images.append(ex.images - i0)
    peak, cur = _rss_mb()
    r, t, c = statistics.median(rounds), statistics.median(train), statistics.median(cpu)
    out = {
        "backend": args._child, "clients": clients, "population": args.population,
        "startup_s": startup, "round_s": rounds, "cpu_s": cpu, "train_s": train, "images": images,
        "s_per_round": r, "train_s_per_round": t, "server_s_per_round": r - t,
        "s_per_client": r / clients, "cpu_s_per_round": c, "cpu_s_per_client": c / clients,
        "s_per_1k_images": 1000 * r / statistics.mean(images),
        "peak_rss_mb": peak, "rss_mb": cur,
    }
    if args.device == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def child(args) -> int:
    import torch

    from fl_core.config import DataConfig
    from fl_core.data import load_data

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    data = load_data(DataConfig(source="synthetic", num_writers=args.population,
                                examples_per_writer=args.examples), args.seed)
    print(f"# {args._child}: torch {torch.__version__}, {data.num_writers} synthetic writers, {int(data.train_counts().sum())} train images "
          f"generated in {time.perf_counter() - t0:.1f} s", flush=True)
    for c in args.sizes:
        print(f"{START_TAG}{c}", flush=True)
        try:
            cell = run_cell(args, data, c)
        except Exception as e:  # report where a large cohort breaks, then stop this backend
            print(CELL_TAG + json.dumps({"backend": args._child, "clients": c, "error": f"{type(e).__name__}: {e}"}),
                  flush=True)
            return 1
        print(CELL_TAG + json.dumps(cell), flush=True)
    return 0


# -- the RSS child: one trial at one K ---------------------------------------------------
def rss_config(args, k: int):
    from fl_core.config import parse_config

    return parse_config({
        "seed": args.seed,
        "data": {"source": "synthetic", "num_writers": k, "examples_per_writer": args.examples},
        "fl": {"rounds": args.rss_rounds, "eval_every": args.rss_rounds, "clients_per_round": args.rss_clients,
               "local_epochs": 1, "batch_size": args.batch, "eval_subsample": args.rss_eval,
               "backend": "sequential", "device": "cpu", "threads": args.threads},
        "attack": {"kind": "model-replacement", "schedule": "fixed-frequency", "frequency": 1,
                   "fraction": 0.01, "num_tasks": 10},
    })


def rss_child(args) -> int:
    import torch

    from fl_core.data import load_data
    from fl_core.data.population import is_lazy
    from fl_core.simulate import Simulation

    torch.set_num_threads(args.threads)
    k = args._rss
    cfg = rss_config(args, k)
    base, _ = _rss_mb()  # interpreter + torch + fl_core, before any data
    t0 = time.perf_counter()
    data = load_data(cfg.data, cfg.seed)
    sim = Simulation(cfg, data)
    setup = time.perf_counter() - t0
    t1 = time.perf_counter()
    sim.run()
    rounds_s = (time.perf_counter() - t1) / args.rss_rounds
    peak, cur = _rss_mb()
    print(RSS_TAG + json.dumps({
        "K": k, "lazy": is_lazy(data), "peak_rss_mb": peak, "rss_mb": cur, "import_rss_mb": base,
        "n_k_mb": data.train_counts().nbytes / 2**20, "setup_s": setup, "s_per_round": rounds_s,
        "rendered": list(getattr(data, "rendered", [])),
    }), flush=True)
    return 0


def rss_table(cells: list[dict]) -> str:
    ref = next((c for c in cells if c.get("K") == 1000 and "error" not in c), None)
    rows = ["| K writers | population | peak RSS MB | × K = 10^3 | n_k array MB | (peak − n_k) × K = 10^3 "
            "| RSS after imports MB | setup s | s/round (incl. eval) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        if "error" in c:
            rows.append(f"| {c['K']:,} | failed: {c['error']} |  |  |  |  |  |  |  |")
            continue
        ratio = f"{c['peak_rss_mb'] / ref['peak_rss_mb']:.3f}" if ref else "-"
        net = f"{(c['peak_rss_mb'] - c['n_k_mb']) / ref['peak_rss_mb']:.3f}" if ref else "-"
        rows.append(f"| {c['K']:,} | {'lazy' if c['lazy'] else 'in memory'} | {c['peak_rss_mb']:,.0f} | {ratio} "
                    f"| {c['n_k_mb']:.1f} | {net} | {c['import_rss_mb']:,.0f} | {c['setup_s']:.1f} | {c['s_per_round']:.2f} |")
    return "\n".join(rows)


def run_rss(args, base_argv: list[str]) -> list[dict]:
    cells = []
    for k in args.rss_sizes:
        cmd = [sys.executable, str(Path(__file__).resolve()), *base_argv, "--_rss", str(k)]
        run = run_limited(cmd, args.timeout)
        got = [json.loads(x[len(RSS_TAG):]) for x in run.lines if x.startswith(RSS_TAG)]
        if got:
            cells.append(got[0])
        else:
            why = "timed out" if run.timed_out else f"exit {run.returncode}: {(run.lines or [''])[-1][:120]}"
            cells.append({"K": k, "error": why})
    return cells


# -- the parent: one child per backend, the table -----------------------------------------
def collect(lines: list[str]) -> tuple[list[dict], int | None]:
    """The cells a child reported, and the cohort size it was running when it stopped."""
    cells, started = [], None
    for line in lines:
        if line.startswith(CELL_TAG):
            cells.append(json.loads(line[len(CELL_TAG):]))
            started = None
        elif line.startswith(START_TAG):
            started = int(line[len(START_TAG):])
    return cells, started


def add_slopes(cells: list[dict]) -> None:
    """Per-client and per-image cost relative to the cohort of 30 (else the smallest), by
    wall time and by the child's CPU time (process_time: what other jobs on a shared machine
    cannot inflate, only slow down), and the growth of peak RSS per added client since the
    previous (smaller) cohort."""
    good = [c for c in cells if "error" not in c]
    if not good:
        return
    for prev, c in zip(good, good[1:]):
        c["rss_mb_per_client"] = (c["peak_rss_mb"] - prev["peak_rss_mb"]) / (c["clients"] - prev["clients"])
    ref = next((c for c in good if c["clients"] == REF_CLIENTS), min(good, key=lambda c: c["clients"]))
    for c in good:
        c["ref_clients"] = ref["clients"]
        c["per_client_vs_ref"] = c["s_per_client"] / ref["s_per_client"]
        if "cpu_s_per_client" in c and "cpu_s_per_client" in ref:
            c["cpu_per_client_vs_ref"] = c["cpu_s_per_client"] / ref["cpu_s_per_client"]
        c["per_image_vs_ref"] = c["s_per_1k_images"] / ref["s_per_1k_images"]


def table(result: dict) -> str:
    rows = [
        "| backend | clients/round | s/round | train s | server s | s/client | s/1k images "
        "| per-client × ref | per-image × ref | CPU ms/client | CPU per-client × ref | peak RSS MB "
        "| Δ peak RSS MB/client | peak GPU MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in result["backends"].values():
        for c in b["cells"]:
            if "error" in c:
                rows.append(f"| {c['backend']} | {c['clients']} | failed: {c['error']} |" + "  |" * 11)
                continue
            gpu = f"{c['peak_gpu_mb']:,.0f}" if "peak_gpu_mb" in c else "-"
            per = f"{c['rss_mb_per_client']:.2f}" if "rss_mb_per_client" in c else "-"
            cpu = f"{c['cpu_s_per_client'] * 1000:.2f}" if "cpu_s_per_client" in c else "-"
            cpu_x = f"{c['cpu_per_client_vs_ref']:.3f}" if "cpu_per_client_vs_ref" in c else "-"
            rows.append(
                f"| {c['backend']} | {c['clients']:,} | {c['s_per_round']:.3f} | {c['train_s_per_round']:.3f} "
                f"| {c['server_s_per_round']:.3f} | {c['s_per_client'] * 1000:.2f} ms | {c['s_per_1k_images']:.3f} "
                f"| {c.get('per_client_vs_ref', float('nan')):.3f} | {c.get('per_image_vs_ref', float('nan')):.3f} "
                f"| {cpu} | {cpu_x} | {c['peak_rss_mb']:,.0f} | {per} | {gpu} |")
        if b.get("stopped"):
            rows.append(f"| {b['backend']} | {b['stopped']} |" + "  |" * 12)
    return "\n".join(rows)


def summary_lines(result: dict) -> list[str]:
    """One line per backend: the slope from the cohort of 30 to the largest one measured."""
    out = []
    for name, b in result["backends"].items():
        good = [c for c in b["cells"] if "error" not in c and "per_client_vs_ref" in c]
        if len(good) >= 2:
            big = max(good, key=lambda c: c["clients"])
            out.append(f"- {name}: per-client cost at {big['clients']:,} clients = {big['per_client_vs_ref']:.3f}× "
                       f"that at {big['ref_clients']} (per image {big['per_image_vs_ref']:.3f}×"
                       + (f"; by CPU time {big['cpu_per_client_vs_ref']:.3f}×" if "cpu_per_client_vs_ref" in big else "")
                       + "); target ≤ 1.05×")
            ref = next(c for c in good if c["clients"] == big["ref_clients"])
            if big is not ref:
                grow = (big["peak_rss_mb"] - ref["peak_rss_mb"]) / (big["clients"] - ref["clients"])
                out.append(f"- {name}: peak RSS grew {grow:.2f} MB per client from {ref['clients']} to "
                           f"{big['clients']:,} clients")
        if b.get("stopped"):
            out.append(f"- {name}: {b['stopped']}")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--backends", default="sequential,vectorized")
    ap.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="clients per round, ascending")
    ap.add_argument("--max-clients", type=int, default=None, help="drop the sizes above this")
    ap.add_argument("--population", type=int, default=None, help="K synthetic writers (default: the largest size)")
    ap.add_argument("--examples", type=int, default=100, help="mean train images per writer")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2, help="timed rounds per cell")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds per cell first")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    ap.add_argument("--threads", type=int, default=1, help="fl.threads (CPU intra-op threads)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=600, help="seconds per backend (its child is stopped after)")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure here")
    ap.add_argument("--rss", action="store_true", help="also measure peak RSS of one trial against K (second table)")
    ap.add_argument("--rss-sizes", default=",".join(map(str, DEFAULT_RSS_SIZES)), help="K synthetic writers for --rss")
    ap.add_argument("--rss-rounds", type=int, default=3, help="--rss: rounds of the trial")
    ap.add_argument("--rss-clients", type=int, default=30, help="--rss: clients per round")
    ap.add_argument("--rss-eval", type=int, default=10_000, help="--rss: fl.eval_subsample (main-task test images)")
    ap.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--_rss", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sizes = sorted({int(s) for s in str(args.sizes).split(",") if s})
    if args.max_clients is not None:
        sizes = [s for s in sizes if s <= args.max_clients]
    if not sizes or sizes[0] < 1:
        ap.error(f"--sizes/--max-clients leave no cohort size ≥ 1 (sizes {args.sizes}, max {args.max_clients})")
    args.sizes = sizes
    args.rss_sizes = [int(x) for x in str(args.rss_sizes).split(",") if x]
    args.population = args.population or max(sizes)
    if args.population < max(sizes):
        ap.error(f"--population {args.population} < the largest cohort {max(sizes)} (sampling without replacement)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._rss is not None:
        return rss_child(args)
    if args._child:
        return child(args)
    gpu = None
    if args.device == "cuda":  # the children do the work; torch here only to check the device
        import torch

        if not torch.cuda.is_available():
            print("--device cuda but no CUDA device here", file=sys.stderr)
            return 2
        gpu = torch.cuda.get_device_name(0)
    print(f"# scale  {time.strftime('%Y-%m-%d %H:%M:%S')}  device {args.device}{' (' + gpu + ')' if gpu else ''}  "
          f"load {'/'.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    if [b for b in args.backends.split(",") if b]:
        print(f"# sizes {args.sizes}, K = {args.population} synthetic writers × ~{args.examples} images, "
              f"{args.epochs} epoch(s), batch {args.batch}, {args.warmup} warm-up + {args.rounds} timed rounds per cell",
              flush=True)
    result: dict[str, Any] = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                              "gpu": gpu, "backends": {}}
    base = [a for a in (argv if argv is not None else sys.argv[1:])]
    for backend in [b for b in args.backends.split(",") if b]:
        cmd = [sys.executable, str(Path(__file__).resolve()), *base, "--_child", backend,
               "--sizes", ",".join(map(str, args.sizes)), "--population", str(args.population)]
        run = run_limited(cmd, args.timeout)
        cells, running = collect(run.lines)
        add_slopes(cells)
        entry: dict[str, Any] = {"backend": backend, "cells": cells, "seconds": run.seconds,
                                 "returncode": run.returncode}
        if run.timed_out:
            entry["stopped"] = f"stopped at its {args.timeout:.0f} s limit while running {running} clients/round"
        elif run.returncode != 0 and not any("error" in c for c in cells):
            entry["stopped"] = f"child exited {run.returncode}" + (f" while running {running} clients/round" if running else "")
        result["backends"][backend] = entry
    if args.rss:
        result["rss"] = run_rss(args, base)
    result["load_avg_end"] = os.getloadavg()
    print()
    if result["backends"]:
        print(table(result))
    for line in summary_lines(result):
        print(line)
    if args.rss:
        print()
        print(f"# peak host RSS of one trial: {args.rss_rounds} rounds × {args.rss_clients} clients, "
              f"~{args.examples} images/writer, eval on {args.rss_eval} images; each K in a fresh process")
        print(rss_table(result["rss"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1, default=str))
    failed = [b for b in result["backends"].values() if not b["cells"]]
    failed += [c for c in result.get("rss", []) if "error" in c]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
