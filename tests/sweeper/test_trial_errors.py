"""Errors across Ray, and what the local cluster exposes (real `fl-sweep` processes, each
with its own local Ray cluster).

A trial that fails on bad input fails once: no automatic retry (a bad data set never
succeeds), and the run ends with one line per failed trial carrying the original message,
not a Ray traceback. The bad input here is honest and cannot be caught earlier: the data
pass `validate` (which reads the h5 layout and labels only), but their pixels are out of
range, which only loading them in the trial finds (a DatasetError).

The local cluster `fl-sweep run` starts serves no HTTP endpoint without its token (Ray's
Prometheus ports used to answer anyone on 0.0.0.0); its gRPC ports need the token too
(tests/sweeper/test_ray_auth.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
FL_SWEEP = [sys.executable, "-c", "import sys; from sweeper.cli import main; sys.exit(main(sys.argv[1:]))"]
GRID = """\
name: bad-pixels
base:
  data: {source: tff-h5, path: digits}
  fl: {rounds: 2, clients_per_round: 3, local_epochs: 1}
  attack: {num_tasks: 1}
seeds: 1
resources: {executor: in-process, cpus_per_trial: 1}
"""


def _env(home: Path) -> dict[str, str]:
    """This checkout, a HOME of its own, and none of the Ray settings the driver chooses."""
    drop = ("RAY_ADDRESS", "RAY_enable_metrics_collection", "AUTOSCALER_METRIC_PORT", "DASHBOARD_METRIC_PORT")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k not in drop}
    env.update(PYTHONPATH=str(REPO), HOME=str(home), COLUMNS="250")
    return env


def test_a_trial_failing_on_bad_data_fails_once_and_prints_the_original_message(tmp_path):
    from sweeper.status import sweep_status

    sys.path.insert(0, str(Path(__file__).parent))
    from test_grid import write_tff_pair

    data = write_tff_pair(tmp_path / "digits", 6, pixel_value=2.0)
    (tmp_path / "g.yaml").write_text(GRID)
    storage = tmp_path / "sweeps"
    proc = subprocess.run([*FL_SWEEP, "run", "g.yaml", "--storage", str(storage), "--num-cpus", "2",
                           "--object-store-mb", "100"], cwd=tmp_path, env=_env(tmp_path),
                          capture_output=True, text=True, timeout=400)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out[-4000:]
    message = (f"dataset at {data / 'fed_emnist_digitsonly_train.h5'}: writer 'f0000': pixel values "
               "outside [0, 1] (min 2.0, max 2.0); run `fl-sweep data download`")
    assert proc.stdout.count(f"  failed: trial 0 [seed=0]: {message}") == 1, out[-4000:]
    assert "1 trials: 1 failed" in proc.stdout
    assert "Traceback" not in out and "TypeError" not in out, out[-4000:]
    # not retried: Tune logged one failure (it retries others once, FailureConfig(max_failures=1))
    (error_txt,) = (storage / "bad-pixels" / "tune").glob("trial_*/error.txt")
    assert error_txt.read_text().count("Failure # ") == 1, error_txt.read_text()[-3000:]
    (trial,) = sweep_status("bad-pixels", str(storage)).trials
    assert trial.state == "failed"


# -- what the local cluster listens on ---------------------------------------------------

DRIVER = """
import json, sys
import ray
from sweeper.runner import RayOptions, connect
assert connect(RayOptions(num_cpus=1, object_store_mb=80))
print(json.dumps({"session": ray._private.worker._global_node.get_session_dir_path()}), flush=True)
sys.stdin.read()
ray.shutdown()
"""
METRICS_SERVERS = {"dashboard.log": "Starting dashboard metrics server", "monitor.log": "Starting autoscaler metrics server"}


def _listening(pids: set[int]) -> list:
    import psutil

    return [c for c in psutil.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN and c.pid in pids]


def _settled(session: Path, pids: set[int]) -> bool:
    """Every metrics server of the head has been started or refused: the agent recorded its
    export port (or -1), and the dashboard head and autoscaler monitor each logged their
    start and then either listen on that port or logged the failure."""
    if not list(session.glob("metrics_export_port_*")):
        return False
    ports = {c.laddr.port for c in _listening(pids)}
    for log, started in METRICS_SERVERS.items():
        text = "".join(p.read_text(errors="replace") for p in (session / "logs").glob(log))
        if started not in text:
            return False
        port = int(text.split(started + " on port ")[1].split()[0])
        if port not in ports and "exception occurred while starting the metrics server" not in text:
            return False
    return True


def _open_http(conn) -> str | None:
    """`ip:port status` if the socket answers HTTP without a token, else None."""
    host = "127.0.0.1" if conn.laddr.ip in ("0.0.0.0", "::") else conn.laddr.ip
    try:
        with urllib.request.urlopen(f"http://{host}:{conn.laddr.port}/metrics", timeout=5) as r:
            return f"{conn.laddr.ip}:{conn.laddr.port} {r.status}"
    except urllib.error.HTTPError as e:  # 401: the token is required
        return None if e.code in (401, 403) else f"{conn.laddr.ip}:{conn.laddr.port} {e.code}"
    except Exception:  # noqa: BLE001 - not HTTP (gRPC) or not answering
        return None


def test_the_local_cluster_serves_no_metrics_port_without_the_token(tmp_path):
    import psutil

    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=_env(tmp_path))
    try:
        session = Path(json.loads(driver.stdout.readline())["session"])
        me = psutil.Process(driver.pid)
        deadline = time.monotonic() + 120
        while True:
            pids = {driver.pid} | {p.pid for p in me.children(recursive=True)}
            if _settled(session, pids):
                break
            assert time.monotonic() < deadline, "the cluster's metrics servers never started nor failed"
            time.sleep(0.5)
        conns = _listening(pids)
        assert len(conns) >= 5  # GCS, raylet, agents, workers: the walk sees the cluster
        open_ports = [x for x in map(_open_http, conns) if x]
        assert open_ports == [], f"served without the token: {open_ports}"
    finally:
        driver.stdin.close()
        try:
            driver.wait(timeout=120)
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.wait()
