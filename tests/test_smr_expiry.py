"""An own batch not applied within ``batch_timeout_us`` is presumed lost exactly
that long after its submission, by the replica's one expiry task (ADR 0068):
the oldest in-flight batch's timer is the one it waits on, a batch that left
the window has its timer withdrawn (but the one the task waits on), and the
requests of a lost batch are batched again when their clients retry.

The cluster is ``test_smr``'s hand-driven one with a virtual clock: timers
fire in deadline order only when :meth:`TimedCluster.advance` reaches them.
"""

from __future__ import annotations

import test_smr
from test_smr import CommitNow, DropUncommitted, write

from replicaio.core.effects import Effects, TimerFired
from replicaio.smr.params import SmrParams

TIMEOUT = 500_000
PARAMS = SmrParams(batches_inflight_max=4, batch_timeout_us=TIMEOUT, batch_fill_min=1)


class TimedCluster(test_smr.Cluster):
    """Timers keep their deadline (the time they were armed + their delay)."""

    def __init__(self) -> None:
        self.now = 0
        self.deadlines: list[dict[int, int]] = [{} for _ in range(3)]
        super().__init__(params=PARAMS, mode="manual")

    def execute(self, i: int, effects: Effects) -> None:
        super().execute(i, effects)
        for timer in effects.timers_cancelled:
            self.deadlines[i].pop(timer, None)
        for timer, delay in effects.timers_set:
            self.deadlines[i][timer] = self.now + delay

    def advance(self, i: int, to_us: int) -> None:
        """Fire node i's timers due by ``to_us``, in deadline order (then arming order)."""
        while True:
            due = sorted((at, timer) for timer, at in self.deadlines[i].items() if at <= to_us)
            if not due:
                break
            at, timer = due[0]
            self.now = at
            del self.deadlines[i][timer]
            if self.timers[i].pop(timer, None) is not None:
                self.execute(i, self.nodes[i].step(TimerFired(timer)))
            self.settle()
        self.now = to_us

    def lost(self) -> int:
        return self.counter(0, "smr_batches_presumed_lost")

    def batched_again(self, client: int) -> bool:
        """Whether a retry of client's request 1 is batched (not already queued)."""
        before = len(self.shared.submitted)
        self.request(0, write(client, 1, "put", b"k", bytes([client])))
        return len(self.shared.submitted) > before


def submit_at(cluster: TimedCluster, client: int, at_us: int) -> None:
    cluster.advance(0, at_us)
    cluster.request(0, write(client, 1, "put", b"k", bytes([client])))


def test_lost_batches_expire_each_exactly_its_timeout_after_its_submission() -> None:
    """Batch 1 (client 1) is applied; batches 2, 3 (clients 2, 3) are lost.
    The timer the task waits on (batch 1's) fires and finds it gone; batch 2
    expires at 100 ms + timeout, not before, and its client's retry is batched
    again while client 3's is not; batch 3 expires at 200 ms + timeout."""
    cluster = TimedCluster()
    submit_at(cluster, 1, 0)
    cluster.advance(0, 50_000)
    cluster.request(0, CommitNow())
    submit_at(cluster, 2, 100_000)
    submit_at(cluster, 3, 200_000)
    cluster.request(0, DropUncommitted())  # leadership changed: both are gone
    assert cluster.shared.submitted == [1, 1, 1]
    replica = cluster.protocol(0).replica
    assert len(replica.inflight) == 2
    cluster.advance(0, TIMEOUT)  # batch 1's timer: nothing lost
    assert cluster.lost() == 0
    cluster.advance(0, 100_000 + TIMEOUT - 1)
    assert cluster.lost() == 0
    assert not cluster.batched_again(2)  # still in flight: a retry is not batched twice
    cluster.advance(0, 100_000 + TIMEOUT)
    assert cluster.lost() == 1
    assert not cluster.batched_again(3)  # the newer batch is still in flight
    assert cluster.batched_again(2)  # the oldest went: its request goes again
    cluster.advance(0, 200_000 + TIMEOUT - 1)
    assert cluster.lost() == 1
    cluster.advance(0, 200_000 + TIMEOUT)
    assert cluster.lost() == 2
    assert cluster.batched_again(3)
    cluster.request(0, CommitNow())
    assert sorted(r.client for r in cluster.take(0)) == [1, 2, 3]
    assert replica.inflight == {}


def test_a_batch_that_left_the_window_leaves_no_timer_but_the_awaited_one() -> None:
    """Applied batches withdraw their timers, except the oldest (the expiry
    task's), which fires at its deadline and changes nothing."""
    cluster = TimedCluster()
    for client in range(1, 4):
        submit_at(cluster, client, 10_000 * client)
    replica = cluster.protocol(0).replica
    timers = set(replica.inflight.values())
    assert len(timers) == 3 and timers <= set(cluster.deadlines[0])
    cluster.request(0, CommitNow())
    assert replica.inflight == {}
    left = timers & set(cluster.deadlines[0])
    assert len(left) == 1 and cluster.deadlines[0][left.pop()] == 10_000 + TIMEOUT
    cluster.advance(0, 10 * TIMEOUT)
    assert cluster.lost() == 0
    assert not replica.expiries
    # and the task goes on: a batch submitted now is lost on time
    submit_at(cluster, 4, 10 * TIMEOUT)
    cluster.request(0, DropUncommitted())
    cluster.advance(0, 11 * TIMEOUT - 1)
    assert cluster.lost() == 0
    cluster.advance(0, 11 * TIMEOUT)
    assert cluster.lost() == 1
