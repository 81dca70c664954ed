"""The local Ray cluster that `fl-sweep run` starts (sweeper.runner.connect) refuses
clients without its token. Ray 2.60 binds the GCS to all interfaces whatever
`_node_ip_address` says, so the token is what protects it: a client connecting to the
GCS's non-loopback address without the token, or with a wrong one, is refused; with the
driver's token it connects (so the refusals are not a network failure)."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]

DRIVER = """
import os, sys
import ray
from sweeper.runner import RayOptions, connect
assert connect(RayOptions(num_cpus=1, object_store_mb=80))
print(ray.get_runtime_context().gcs_address, os.environ["RAY_AUTH_TOKEN"], flush=True)
sys.stdin.read()
ray.shutdown()
"""
CLIENT = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR'); "
          "print('CONNECTED', ray.cluster_resources().get('CPU'))")


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env["HOME"] = str(home)  # no ~/.ray/auth_token to fall back on
    env.update(extra)
    return env


def test_local_cluster_refuses_clients_without_its_token(tmp_path):
    driver = subprocess.Popen([sys.executable, "-c", DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env=_env(tmp_path))
    try:
        gcs, token = driver.stdout.readline().split()
        host = gcs.rsplit(":", 1)[0]
        if ipaddress.ip_address(host).is_loopback:
            pytest.skip(f"this machine has no non-loopback address (GCS at {gcs})")

        def client(**extra: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-c", CLIENT, gcs], capture_output=True, text=True,
                                  timeout=300, env=_env(tmp_path, **extra))

        for extra in ({"RAY_AUTH_MODE": "disabled"},
                      {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}):
            p = client(**extra)
            assert p.returncode != 0 and "CONNECTED" not in p.stdout, p.stdout
            assert "uthentication" in p.stderr or "Failed to connect" in p.stderr, p.stderr[-2000:]
        p = client(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
        assert p.returncode == 0 and "CONNECTED 1.0" in p.stdout, p.stderr[-2000:]
    finally:
        driver.stdin.close()
        try:
            driver.wait(timeout=120)
        except subprocess.TimeoutExpired:
            driver.kill()
            driver.wait()
