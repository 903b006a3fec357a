"""The operator's commands on a real KV cluster (issue 8, section 3): ``kv up --node I``
(re)starts one node, ``kv down`` stops every node of the cluster however it was
started (a node started by hand with a relative ``--config`` included), and the
nodes' logs say when a leader is elected and when a term changes, with ISO
timestamps.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from replicaio.runtime.local import free_port_block

KV = [sys.executable, "-m", "replicaio.cli", "kv"]
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def kv(*arguments: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KV, *arguments], capture_output=True, text=True, timeout=90,
                          check=False, cwd=cwd)


def answers_ping(port: int) -> bool:
    try:
        with redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2) as client:
            return client.ping() is True
    except (redis.RedisError, OSError):
        return False


def pid_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_kv_up_one_node_kv_down_every_node_and_operator_logs(tmp_path: Path) -> None:
    directory = tmp_path / "kv"
    base = free_port_block(10)
    up = kv("up", "--nodes", "3", "--base-port", str(base), "--data-dir", str(directory),
            "--no-fsync", "--no-metrics", "--json")
    assert up.returncode == 0, up.stdout + up.stderr
    nodes = json.loads(up.stdout)["nodes"]
    pids = {item["id"]: item["pid"] for item in nodes}
    hand: subprocess.Popen[bytes] | None = None
    try:
        # Node 1 dies; kv up --node 1 brings it back, and refuses a running node.
        os.kill(pids[1], signal.SIGKILL)
        while pid_alive(pids[1]):
            time.sleep(0.05)
        again = kv("up", "--node", "1", "--data-dir", str(directory), "--json")
        assert again.returncode == 0, again.stdout + again.stderr
        restarted = json.loads(again.stdout)["pid"]
        assert restarted != pids[1] and pid_alive(restarted)
        twice = kv("up", "--node", "1", "--data-dir", str(directory))
        assert twice.returncode == 2 and "already running" in twice.stderr
        port = int(nodes[1]["client"].rsplit(":", 1)[1])
        client = redis.Redis(port=port, socket_timeout=10)
        assert client.set("after-restart", "1") is True
        client.close()
        # Node 2 is stopped and started by hand, with a relative --config.
        os.kill(pids[2], signal.SIGTERM)
        while pid_alive(pids[2]):
            time.sleep(0.05)
        (directory / "node-2.pid").unlink(missing_ok=True)
        with open(tmp_path / "hand.log", "wb") as output:
            hand = subprocess.Popen([*KV, "node", "--config", "kv/cluster.toml", "--id", "2"],
                                    cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT)
        hand_port = int(nodes[2]["client"].rsplit(":", 1)[1])
        deadline = time.monotonic() + 60
        while not answers_ping(hand_port):
            log = (tmp_path / "hand.log").read_text(errors="replace")[-2000:]
            assert hand.poll() is None, f"the node started by hand exited: {log}"
            assert time.monotonic() < deadline, f"the node started by hand never served: {log}"
            time.sleep(0.1)
        down = kv("down", "--data-dir", str(directory), "--json")
        assert down.returncode == 0, down.stderr
        assert json.loads(down.stdout)["stopped"] == 3, (down.stdout, down.stderr)
        assert hand.wait(timeout=30) is not None
        assert not pid_alive(pids[0]) and not pid_alive(restarted)
    finally:
        kv("down", "--data-dir", str(directory))
        if hand is not None and hand.poll() is None:
            hand.kill()
    logs = "".join(path.read_text() for path in directory.glob("node-*.log"))
    events = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    elected = [event for event in events if event["message"] == "leader elected"]
    assert elected and ISO.fullmatch(elected[0]["at"]) and elected[0]["term"] >= 1
    assert any(event["message"] == "voted in a new term" for event in events)
    # The leader won a term in which some other node did not campaign: it took the
    # term from a peer, and says so.
    changed = [event for event in events if event["message"] == "term changed"]
    assert changed and all(event["term"] > event["previous"] for event in changed)
