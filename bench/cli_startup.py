"""Start-up time of the `fl-sweep` CLI (issue 10): wall seconds of `fl-sweep --help` and
`fl-sweep validate grids/smoke.yaml` in a fresh interpreter, the median of --runs runs, and
which heavy libraries each one imported. Not a test: `python bench/cli_startup.py --help`.

`--repo DIR` times another checkout (e.g. one before the lazy imports) for comparison; the
interpreter is the one running this script. The `import` column is `python -X importtime`'s
cumulative time of `sweeper.cli` alone (one run), i.e. what every command pays before it
starts; the rest of a command's wall time is its own work (validate: reading the grid and
checking it against the embedded data).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HEAVY = ("ray", "mlflow", "torch", "pandas", "matplotlib", "h5py", "numpy")
PROBE = """
import contextlib, io, json, sys
from sweeper.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    rc = main(sys.argv[1:])
print(json.dumps({"rc": rc, "loaded": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)
COMMANDS = {
    "python -c pass": None,
    "fl-sweep --help": ["--help"],
    "fl-sweep simulate --help": ["simulate", "--help"],
    "fl-sweep validate grids/smoke.yaml": ["validate", "grids/smoke.yaml"],
}


def env_for(repo: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(repo)}


def wall(argv: list[str] | None, repo: Path) -> tuple[float, dict]:
    """Seconds of one fresh interpreter running the CLI with `argv` (what a user waits)."""
    cmd = [sys.executable, "-c", "pass"] if argv is None else [sys.executable, "-c", PROBE, *argv]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=repo, env=env_for(repo), capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - t0
    info = json.loads(out.stdout.strip().splitlines()[-1]) if argv is not None else {"rc": 0, "loaded": []}
    return seconds, info


def import_seconds(repo: Path) -> float:
    """`-X importtime` cumulative microseconds of `sweeper.cli`, in seconds."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "import sweeper.cli"], cwd=repo,
                         env=env_for(repo), capture_output=True, text=True, check=True)
    for line in out.stderr.splitlines():
        m = re.match(r"import time:\s+\d+ \|\s+(\d+) \|\s*sweeper\.cli$", line)
        if m:
            return int(m.group(1)) / 1e6
    raise RuntimeError("sweeper.cli not in the -X importtime output")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="runs per command (median reported)")
    ap.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1],
                    help="checkout to time (default: this one)")
    args = ap.parse_args()
    repo = args.repo.resolve()
    print(f"# fl-sweep start-up: {repo}, python {platform.python_version()}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {args.runs} runs each")
    print(f"import sweeper.cli (-X importtime, 1 run): {import_seconds(repo):.2f} s")
    print()
    print("| command | median s | min s | max s | heavy modules imported |")
    print("|---|---:|---:|---:|---|")
    for name, argv in COMMANDS.items():
        times, info = [], {}
        for _ in range(args.runs):
            s, info = wall(argv, repo)
            times.append(s)
        assert info.get("rc") == 0, (name, info)
        print(f"| `{name}` | {statistics.median(times):.2f} | {min(times):.2f} | {max(times):.2f} "
              f"| {', '.join(info['loaded']) or '-'} |")


if __name__ == "__main__":
    main()
