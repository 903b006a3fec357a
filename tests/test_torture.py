"""``replicaio torture``: the seed's fault schedule (pure), and, as root with ``ip``,
``tc`` and ``nft``/``iptables``, a short live torture of a Raft cluster across
network namespaces (and of PBFT and MinBFT with a Byzantine node), an interrupted
one that must leave nothing behind, and the plain refusal without root.

The live tests run the real command as a subprocess (as a user would) and look
at the machine afterwards: no namespace, link or mount of the run's tag may
remain. They print the report (the CI log keeps it).
"""

from __future__ import annotations

import itertools
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from replicaio.sim.adversary import BASE_BEHAVIOURS
from replicaio.torture.nemesis import FAULT_KINDS, LEADER, PARTITION_KINDS, draw_schedule
from replicaio.torture.network import TortureError, missing_requirements, run_command
from replicaio.torture.run import TortureOptions
from replicaio.torture.workload import Endpoint, Workload

MISSING = missing_requirements()
needs_root = pytest.mark.skipif(MISSING is not None, reason=f"live torture skipped: {MISSING}")
COMMAND = [sys.executable, "-m", "replicaio.cli", "torture"]


# -- the schedule (pure) ---------------------------------------------------------------------


def test_the_schedule_is_a_function_of_the_seed_and_covers_every_kind() -> None:
    first = draw_schedule(7, 5, 120.0, FAULT_KINDS, disk_node=3)
    assert first == draw_schedule(7, 5, 120.0, FAULT_KINDS, disk_node=3)
    assert first != draw_schedule(8, 5, 120.0, FAULT_KINDS, disk_node=3)
    kinds = [fault.kind for fault in first]
    assert set(kinds[:len(FAULT_KINDS)]) == set(FAULT_KINDS)  # a shuffled bag
    for before, after in itertools.pairwise(first):
        assert before.end_s < after.start_s  # one at a time, with a quiet gap
    assert first[-1].end_s <= 120.0
    assert all(fault.nodes == (3,) for fault in first if fault.kind == "disk-full")


def test_without_a_tmpfs_node_or_a_second_node_some_kinds_are_left_out() -> None:
    kinds = {fault.kind for fault in draw_schedule(1, 5, 200.0, FAULT_KINDS, disk_node=None)}
    assert "disk-full" not in kinds and "kill" in kinds
    single = {fault.kind for fault in draw_schedule(1, 1, 200.0, FAULT_KINDS, disk_node=0)}
    assert single.isdisjoint(PARTITION_KINDS)


def test_partitions_block_what_their_kind_says() -> None:
    schedule = draw_schedule(3, 5, 1000.0, PARTITION_KINDS, disk_node=None)
    seen = set()
    for fault in schedule:
        seen.add(fault.kind)
        blocks = fault.blocks(5)
        if fault.kind == "partition-asymmetric":
            senders, receivers = fault.groups
            assert blocks == {node: senders for node in receivers}
        elif fault.kind == "partition-bridge":
            left, (middle,), right = fault.groups
            assert middle not in blocks  # the bridge hears both sides
            assert all(blocks[node] == right for node in left)
            assert all(blocks[node] == left for node in right)
        else:
            first, second = fault.groups
            assert all(blocks[node] == second for node in first)
            assert all(blocks[node] == first for node in second)
            if fault.kind == "partition-majority":
                assert 1 <= len(first) <= 2 < len(second)
    assert seen == set(PARTITION_KINDS)


def test_kill_and_pause_sometimes_aim_at_the_leader() -> None:
    targets = [fault.nodes for seed in range(10)
               for fault in draw_schedule(seed, 5, 200.0, ("kill", "pause"), disk_node=None)]
    assert (LEADER,) in targets and any(LEADER not in nodes for nodes in targets)
    assert all(len(nodes) <= 2 for nodes in targets)  # at most f = 2 killed at once


# -- live ------------------------------------------------------------------------------------


def leftovers(tag: str) -> list[str]:
    """Namespaces, links and mounts of the run ``tag`` still on the machine."""
    found = [line for line in run_command(["ip", "netns", "list"]).splitlines()
             if f"replicaio-{tag}-" in line]
    found += [line for line in run_command(["ip", "-o", "link", "show"]).splitlines()
              if f"rtb{tag}" in line or f"rtv{tag}" in line]
    found += [line for line in Path("/proc/mounts").read_text().splitlines()
              if f"-{tag}/" in line]
    return found


def stop_gracefully(process: subprocess.Popen[str]) -> None:
    """Interrupt a torture that is still running, as Ctrl-C would, so that it
    tears its testbed down (a SIGKILL would leave namespaces and mounts behind);
    kill it only if that does not end it."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(90)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def torture(arguments: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """``subprocess.run`` of the torture command, interrupted (not killed) on timeout."""
    process = subprocess.Popen([*COMMAND, *arguments], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_gracefully(process)
        stdout, stderr = process.communicate()
        raise AssertionError(f"torture ran over {timeout_s} s and was interrupted:\n"
                             f"{stdout}\n{stderr}") from None
    finally:
        stop_gracefully(process)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def run_tag(output: str) -> str:
    found = re.search(r"namespaces replicaio-([0-9a-f]{5})-n\*", output)
    assert found is not None, output
    return found.group(1)


@needs_root
def test_a_short_live_torture_of_raft_passes_and_leaves_nothing_behind(tmp_path: Path) -> None:
    started = time.monotonic()
    done = torture(
        ["--nodes", "3", "--duration", "40", "--seed", "11", "--clients", "6",
         "--out", str(tmp_path), "--check-budget", "60", "--json"], timeout_s=240,
    )
    print(f"\n{done.stdout}\n{done.stderr}\nwall time {time.monotonic() - started:.1f} s")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["passed"] is True and result["linearizable"] is True
    assert result["problems"] == [] and result["leftovers"] == []
    kinds = {fault["kind"] for fault in result["faults"]}
    assert len(kinds - {"exit"}) >= 5, kinds
    assert result["ok"] > 100 and result["acknowledged"] > 10
    assert leftovers(run_tag(done.stdout)) == []
    (run,) = tmp_path.iterdir()
    for name in ("history.jsonl", "faults.json", "timeline.csv", "report.txt", "cluster.toml"):
        assert (run / name).stat().st_size > 0, name
    assert (run / "throughput.png").read_bytes().startswith(b"\x89PNG")


@needs_root
@pytest.mark.parametrize(("protocol", "nodes", "behaviour"), [
    ("minbft", "3", "minbft_equivocate"), ("pbft", "4", "pbft_equivocate")])
def test_a_short_live_torture_of_a_bft_service_with_a_byzantine_node_passes(
    tmp_path: Path, protocol: str, nodes: str, behaviour: str
) -> None:
    """The BFT services through the same faults (Ed25519 node keys, MinBFT's USIG
    keys, a primary INFO does not name; on seed 19: kill -9 and restart, a full
    disk, links 0.3-1.5 s late, a partition) with one node equivocating on the
    real network the whole run, its restarts included: linearizable through the
    correct nodes, nothing left behind."""
    done = torture(
        ["--protocol", protocol, "--nodes", nodes, "--duration", "30", "--seed", "19",
         "--clients", "4", "--out", str(tmp_path), "--check-budget", "60",
         "--byzantine", behaviour, "--json"],
        timeout_s=300,
    )
    print(f"\n{done.stdout}\n{done.stderr}")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["passed"] is True and result["linearizable"] is True
    assert result["problems"] == [] and result["leftovers"] == []
    assert {"kill", "slow"} <= {fault["kind"] for fault in result["faults"]}
    assert result["ok"] > 50 and result["acknowledged"] > 5
    ((node, mix),) = result["byzantine"].items()
    assert mix == behaviour and f"node {node} is Byzantine" in done.stdout
    assert result["byzantine_sends"] > 0  # its messages went through the behaviour
    assert f"--byzantine {behaviour}" in result["rerun"]
    assert leftovers(run_tag(done.stdout)) == []


def test_a_byzantine_node_is_a_function_of_the_options_and_bad_ones_are_refused() -> None:
    """No root needed: which node and which mix, and the clear refusals."""
    options = TortureOptions(protocol="pbft", nodes=4, seed=3, byzantine="seed")
    plan = options.validate().byzantine_plan()
    assert plan == options.byzantine_plan()  # the seed decides
    ((node, mix),) = plan.items()
    assert 0 <= node < 4 and mix.split("+")[0] in BASE_BEHAVIOURS
    named = TortureOptions(protocol="minbft", nodes=3, byzantine="minbft_equivocate+replay",
                           byzantine_node=2)
    assert named.byzantine_plan() == {2: "minbft_equivocate+replay"}
    assert "--byzantine minbft_equivocate+replay --byzantine-node 2" in named.rerun_command()
    assert TortureOptions(protocol="pbft").byzantine_plan() == {}
    for bad, message in [
        (TortureOptions(protocol="raft", nodes=3, byzantine="equivocate"), "Byzantine-tolerant"),
        (TortureOptions(protocol="pbft", byzantine="minbft_equivocate"), "not one of pbft's"),
        (TortureOptions(protocol="pbft", byzantine="no_such_thing"), "not one of pbft's"),
        (TortureOptions(protocol="pbft", nodes=4, byzantine="silent", byzantine_node=4),
         "must be in 0..3"),
        (TortureOptions(protocol="pbft", byzantine_node=1), "needs --byzantine"),
    ]:
        with pytest.raises(TortureError, match=message):
            bad.validate()


@needs_root
def test_a_short_live_torture_over_mutual_tls_passes(tmp_path: Path) -> None:
    """The same torture with ``--tls``: certificates from ``certs init``, mutual TLS
    1.3 between the nodes and to every redis-py client, through the same faults."""
    done = torture(
        ["--nodes", "3", "--duration", "25", "--seed", "13", "--clients", "4",
         "--out", str(tmp_path), "--check-budget", "60", "--tls", "--json"], timeout_s=240,
    )
    print(f"\n{done.stdout}\n{done.stderr}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "mutual TLS" in done.stdout
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["passed"] is True and result["linearizable"] is True
    assert result["ok"] > 50 and result["acknowledged"] > 5
    # seed 13: netem, slow, partition-bridge, kill (TLS set up again after it)
    assert {"kill", "slow"} <= {fault["kind"] for fault in result["faults"]}
    assert leftovers(run_tag(done.stdout)) == []
    (run,) = tmp_path.iterdir()
    assert "[tls]" in (run / "cluster.toml").read_text()
    assert (run / "certs" / "client.pem").exists()
    assert "--tls" in result["rerun"]  # the rerun command keeps it


@needs_root
def test_an_interrupted_torture_tears_everything_down(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [*COMMAND, "--nodes", "3", "--duration", "60", "--seed", "5", "--clients", "2",
         "--out", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # until the first fault is on
            line = process.stdout.readline()
            lines.append(line)
            if not line or re.match(r"\s+\d+\.\d+ s ", line):
                break
        tag = run_tag("".join(lines))
        assert leftovers(tag) != []  # it did build something
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=60)
    finally:
        stop_gracefully(process)
    print("".join(lines) + output)
    assert process.returncode == 1
    assert "interrupted" in output and "verdict: FAIL" in output
    assert leftovers(tag) == []


def test_without_root_the_torture_says_plainly_why_it_cannot_run() -> None:
    reason = missing_requirements(euid=1000)
    assert reason is not None and reason.startswith("replicaio torture needs root")


# -- delay without sch_netem: the NFQUEUE shaper ------------------------------------------


ECHO = """
import socket, sys, time
if sys.argv[1] == "serve":
    server = socket.socket()
    server.bind((sys.argv[2], 7000))
    server.listen()
    print("listening", flush=True)
    connection, _ = server.accept()
    while data := connection.recv(64):
        connection.sendall(data)
else:
    client = socket.create_connection((sys.argv[2], 7000), timeout=30)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    rounds = []
    for _ in range(5):
        started = time.monotonic()
        client.sendall(b"x")
        client.recv(64)
        rounds.append(time.monotonic() - started)
    print(min(rounds))
"""


def round_trip(testbed: object, source: int, target: int) -> float:
    """The shortest of five TCP round trips from ``source``'s namespace to ``target``'s."""
    from replicaio.torture.network import Testbed

    assert isinstance(testbed, Testbed)
    server = subprocess.Popen(
        [*testbed.exec_prefix(target), sys.executable, "-c", ECHO, "serve",
         testbed.address(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        client = subprocess.run(
            [*testbed.exec_prefix(source), sys.executable, "-c", ECHO, "ask",
             testbed.address(target)], capture_output=True, text=True, timeout=60, check=True)
        return float(client.stdout)
    finally:
        server.kill()
        server.wait(10)


@needs_root
def test_the_shaper_delays_real_packets_where_the_kernel_has_no_netem() -> None:
    """What ``netem`` faults do on kernels without ``sch_netem``: every packet a
    node sends waits in userspace. Only a lower bound is asserted (a delay
    cannot make a round trip shorter; a loaded machine only makes it longer)."""
    from replicaio.torture.network import LinkShape, Testbed, choose_subnet

    testbed = Testbed(f"s{int(time.time() * 1000) % 100000}", 2, choose_subnet(3))
    try:
        testbed.create()
        if testbed.netem_available:
            pytest.skip("this kernel has sch_netem: the torture uses tc netem, not the shaper")
        assert testbed.nfqueue_available, "iptables NFQUEUE is part of the torture's setup"
        applied = testbed.shape(0, LinkShape(delay_ms=120, jitter_ms=20, reorder_percent=0))
        assert "delay 120ms jitter 20ms reorder 0% (NFQUEUE shaper)" in applied, applied
        # one way is shaped: each round trip waits at least delay - jitter
        assert round_trip(testbed, 0, 1) >= 0.100
        assert round_trip(testbed, 1, 0) >= 0.100  # node 0's answers are held too
        said = testbed.stop_shaper(0)
        assert re.search(r"packets (\d+), released \1, overflowed 0", said), said
        packets = re.search(r"packets (\d+)", said)
        assert packets is not None and int(packets.group(1)) >= 10, said
        testbed.clear_shape(0)
        assert testbed.shapers == {}
    finally:
        left = testbed.teardown()
    assert left == []
    assert leftovers(testbed.tag) == []


def test_a_read_back_that_fails_says_how_often_and_why() -> None:
    """The read-back retries refused ``MGET`` batches until its deadline and keeps
    each failure (a real socket: a port nothing listens on, then a server that
    answers every command with an error), so a report can say why keys went unread."""
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    workload = Workload([Endpoint("127.0.0.1", port)], clients=1, seed=1)
    found = workload.read_back(Endpoint("127.0.0.1", port), ["k1", "k2"], time.monotonic() + 0.5)
    assert found == {}
    assert len(workload.read_back_failures) >= 2
    assert all(f.startswith("ConnectionError") for f in workload.read_back_failures)

    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def answer_errors() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(1.0)
                try:
                    while conn.recv(4096):
                        conn.sendall(b"-TRYAGAIN not now\r\n")
                except OSError:
                    pass

    thread = threading.Thread(target=answer_errors, daemon=True)
    thread.start()
    try:
        endpoint = Endpoint("127.0.0.1", server.getsockname()[1])
        found = workload.read_back(endpoint, ["k1"], time.monotonic() + 0.5)
    finally:
        stop.set()
        thread.join()
        server.close()
    assert found == {}
    assert workload.read_back_failures[-1] == "TryAgainError: not now"
    assert all(op.status == "info" for op in workload.operations())


def test_a_slow_link_is_late_and_nothing_else() -> None:
    """``slow`` faults delay what their targets send by far more than a timeout
    and do nothing else (no loss, duplication, jitter or reordering), never on
    every node unless it is the leader, and raise netem's queue so that a busy
    link is late rather than lossy."""
    from replicaio.torture.nemesis import SLOW_DELAYS_MS, SLOW_HELD_PACKETS

    slow = [fault for seed in range(40)
            for fault in draw_schedule(seed, 5, 120.0, ("slow",), disk_node=None)]
    assert len(slow) > 100
    delays = set()
    for fault in slow:
        assert fault.link is not None
        link = fault.link
        assert (link.loss_percent, link.duplicate_percent, link.jitter_ms,
                link.reorder_percent, link.rate_kbit) == (0, 0, 0, 0, 0)
        delays.add(link.delay_ms)
        assert fault.nodes == (LEADER,) or 1 <= len(fault.nodes) <= 4
        assert link.netem_arguments()[-2:] == ["limit", str(SLOW_HELD_PACKETS)]
    assert delays == set(SLOW_DELAYS_MS)
    assert any(fault.nodes == (LEADER,) for fault in slow)
    assert any(fault.nodes != (LEADER,) for fault in slow)
