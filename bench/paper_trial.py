"""One paper-length trial timed end to end (issue 11, item 5): figure 1's fixed-frequency
cell, i.e. the boosted model-replacement attack every round (ε = 0.033 with C·K = 30
derives f = 1), 30 backdoor tasks, no defense, on the embedded real writers; 300 rounds ×
5 local epochs × 30 clients, driven through `fl_core.simulate.Simulation` directly (no
sweeper, no Ray, no MLflow: the GPU machine has none of them).

A wall-clock cap (--max-seconds) stops it after the round in progress; the JSON then says
how far it got. The JSON is rewritten after every evaluation, so a kill from outside still
leaves the last progress. Not a test: `python bench/paper_trial.py --help`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def trial_config(args):
    from fl_core.config import parse_config

    return parse_config({
        "seed": args.seed,
        "data": {"source": "embedded"},
        "fl": {
            "rounds": args.rounds,
            "clients_per_round": args.clients,
            "local_epochs": args.epochs,
            "batch_size": 20,
            "client_lr": 0.1,
            "server_lr": 1.0,
            "eval_every": args.eval_every,
            "eval_subsample": args.eval_subsample,
            "sampling": "without-replacement",
            "backend": args.backend,
            "precision": args.precision,
            "device": args.device,
        },
        "attack": {
            "kind": "model-replacement",
            "schedule": "fixed-frequency",
            "fraction": 0.033,
            "frequency": args.frequency,  # None: f = round(1/(ε·C·K)) = 1 at C·K = 30
            "num_tasks": 30,
        },
    })


def write(path: Path | None, result: dict) -> None:
    if path is None:
        return
    from fl_core.state import atomic_write_bytes

    blob = json.dumps(result, indent=1, default=str).encode()
    atomic_write_bytes(path, lambda f: f.write(blob))


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def run(args) -> dict[str, Any]:
    import torch

    from fl_core.sampling import attack_frequency
    from fl_core.simulate import Simulation

    t0 = time.perf_counter()
    cfg = trial_config(args)
    sim = Simulation(cfg)  # loads the embedded writers
    _sync(sim.device)
    result: dict[str, Any] = {
        "workload": {"rounds": args.rounds, "local_epochs": args.epochs, "clients_per_round": args.clients,
                     "attack": "model-replacement", "schedule": "fixed-frequency", "fraction": 0.033,
                     "frequency": attack_frequency(cfg), "num_tasks": 30, "data": sim.data.name,
                     "eval_every": args.eval_every, "eval_subsample": args.eval_subsample},
        "device": str(sim.device), "gpu": torch.cuda.get_device_name(0) if sim.device.type == "cuda" else None,
        "backend": sim.executor.runner.backend.name, "precision": args.precision,
        "startup_s": time.perf_counter() - t0, "max_seconds": args.max_seconds,
        "rounds_done": 0, "stopped_early": False, "history": [],
    }
    print(f"# paper trial: {cfg.fl.rounds} rounds × {cfg.fl.local_epochs} epochs × {cfg.fl.clients_per_round} clients, "
          f"attack every {result['workload']['frequency']} round(s), {sim.data.name}, device {sim.device}, "
          f"backend {result['backend']}, {args.precision}; start-up {result['startup_s']:.1f} s; "
          f"cap {args.max_seconds:.0f} s", flush=True)
    t_loop = time.perf_counter()
    train_s = eval_s = 0.0
    while not sim.done:
        m = sim.step()
        if m is not None:
            train_s += m["round_seconds"]
            eval_s += m["eval_seconds"]
            result["history"].append({k: m.get(k) for k in ("round", "main_acc", "backdoor_acc",
                                                            "backdoor_acc_heldout", "round_seconds", "eval_seconds")})
            elapsed = time.perf_counter() - t_loop
            print(f"  round {m['round']:4d}  main {m['main_acc']:.4f}  backdoor {m['backdoor_acc']}  "
                  f"{m['round'] / elapsed:.2f} rounds/s", flush=True)
            result.update(rounds_done=sim.state.round_idx, loop_s=elapsed)
            write(args.json, result)
        if time.perf_counter() - t_loop > args.max_seconds and not sim.done:
            result["stopped_early"] = True
            break
    _sync(sim.device)
    loop_s = time.perf_counter() - t_loop
    last = result["history"][-1] if result["history"] else None
    if last is None or last["round"] != sim.state.round_idx:  # stopped between evaluations
        ev = sim.evaluator.evaluate(sim.state.global_params)
        last = {"round": sim.state.round_idx, **{k: ev.get(k) for k in ("main_acc", "backdoor_acc", "backdoor_acc_heldout")}}
        result["history"].append(last)
    done = sim.state.round_idx
    result.update(
        rounds_done=done, loop_s=loop_s, rounds_per_s=done / loop_s if loop_s > 0 else None,
        final_round=last["round"], main_acc=last["main_acc"], backdoor_acc=last["backdoor_acc"],
        backdoor_acc_heldout=last.get("backdoor_acc_heldout"),
        eval_s_in_loop=eval_s,
        projected_full_s=loop_s * args.rounds / done if done else None,
    )
    if sim.device.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--backend", default="auto", choices=["auto", "sequential", "vectorized"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "tf32", "bf16"])
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--clients", type=int, default=30)
    ap.add_argument("--frequency", type=int, default=None,
                    help="attack every f rounds (default: derived, 1 at 30 clients; the dry run sets 1)")
    ap.add_argument("--eval-every", type=int, default=10, help="evaluate every N rounds and at the end")
    ap.add_argument("--eval-subsample", type=int, default=None,
                    help="fl.eval_subsample: main accuracy on N test images (default: all of them)")
    ap.add_argument("--max-seconds", type=float, default=180, help="stop after the round that passes this")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    result = run(args)
    write(args.json, result)
    how = (f"stopped at its {args.max_seconds:.0f} s cap after {result['rounds_done']} of {args.rounds} rounds"
           if result["stopped_early"] else f"all {args.rounds} rounds")
    print(f"# paper trial: {how}; {result['rounds_per_s']:.2f} rounds/s (evaluation every {args.eval_every} included); "
          f"final main acc {result['main_acc']:.4f}, backdoor acc {result['backdoor_acc']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
