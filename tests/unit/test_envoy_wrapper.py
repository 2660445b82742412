"""roles/envoy/files/fleetmesh-envoy-run (the unit's main process and its ExecReload) with a real Envoy on loopback.

A reload that reaches a main process systemd has only just (re)started must not end it: before the main process has
its SIGHUP handler, SIGHUP would end it, and systemd counts that as a clean exit (no Restart=on-failure). That is how
a rollback after a killed epoch once left a host without Envoy: the unit restarted, and the rollback's hot restart
came 16 ms later. ``--reload`` waits until the main process has written its pid to the state file.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from envoy_harness import bootstrap_yaml

WRAPPER = Path(__file__).resolve().parents[2] / "roles" / "envoy" / "files" / "fleetmesh-envoy-run"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_info(admin: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/server_info", timeout=2) as resp:
        return json.loads(resp.read().decode())


def test_a_reload_right_after_the_start_waits_for_the_main_process_and_hot_restarts(envoy_bin, tmp_path):
    admin = _free_port()
    config = tmp_path / "envoy.yaml"
    config.write_text(bootstrap_yaml(admin_port=admin, listener_port=_free_port()))
    state_file = tmp_path / "run" / "state.json"
    env = dict(os.environ, ENVOY_BIN=str(envoy_bin), ENVOY_CONFIG=str(config), ENVOY_ADMIN=f"127.0.0.1:{admin}",
               ENVOY_STATE_FILE=str(state_file), ENVOY_BASE_ID=str(4000 + os.getpid() % 1000),
               ENVOY_DRAIN_SECONDS="0", ENVOY_PARENT_SHUTDOWN_SECONDS="2", ENVOY_DRAIN_TIME_SECONDS="1",
               ENVOY_EXTRA_ARGS="-l warning")
    log = tmp_path / "main.log"  # a file, not a pipe nobody reads: a full pipe would block Envoy's logging
    with log.open("w") as out:
        main = subprocess.Popen([sys.executable, str(WRAPPER), "t"], env=env, stderr=out)
    try:
        # At once, as systemd's ExecReload does for a unit it has just restarted.
        reload = subprocess.run([sys.executable, str(WRAPPER), "t", "--reload", str(main.pid)], env=env,
                                capture_output=True, text=True, timeout=90, check=False)
        assert main.poll() is None, f"the reload ended the main process: {reload.stderr} {log.read_text()[-2000:]}"
        assert reload.returncode == 0, reload.stdout + reload.stderr
        assert "hot restart done: epoch 1 is LIVE" in reload.stdout
        saved = json.loads(state_file.read_text())
        assert saved["wrapper"] == main.pid and saved["epoch"] == 1, saved
        info = _server_info(admin)
        assert info["state"] == "LIVE" and int(info["command_line_options"]["restart_epoch"]) == 1, info
    finally:
        main.terminate()
        try:
            main.wait(timeout=30)
        except subprocess.TimeoutExpired:
            main.kill()
            main.wait()


def test_a_reload_of_a_process_that_never_starts_serving_fails_naming_it(tmp_path):
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps({"wrapper": 1, "epoch": 0}))  # another main process's state
    t0 = time.monotonic()
    env = dict(os.environ, ENVOY_STATE_FILE=str(state_file), ENVOY_ADMIN="127.0.0.1:9")
    code = ("import importlib.machinery, sys; sys.argv = ['w', 't']; "
            f"m = importlib.machinery.SourceFileLoader('w', {str(WRAPPER)!r}).load_module(); "
            "sys.exit(m.reload_and_wait(999999, timeout=1.0))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30,
                          check=False)
    assert proc.returncode == 1 and "main process 999999 did not start serving within 1 s" in proc.stderr, proc
    assert time.monotonic() - t0 < 20
