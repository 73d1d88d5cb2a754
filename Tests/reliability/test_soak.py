"""Soak: a steady load with faults for a long time; memory, descriptors and the WAL stay flat, nothing is lost.

Not part of CI (it runs for `RELIABILITY_SOAK_SECONDS`, 30 minutes for the recorded run); skipped unless that
variable is set. `Tests/reliability/run --soak` runs it with a release build:

    RELIABILITY_SOAK_SECONDS=1800 RELIABILITY_SOAK_RATE=20000 RELIABILITY_SOAK_FAULTS=0.05

Four clients write with acks at `RELIABILITY_SOAK_RATE` records/s in all (50 rows per request) to an append
table; the emulator (real DuckLake) fails `RELIABILITY_SOAK_FAULTS` of the requests: 5xx, 429 with
Retry-After, and drops after commit in the ratio 3:1:1. Every 10 s the daemon's VmRSS, its open descriptors,
the `-wal` size and the pending count are sampled. After the load:

- RSS: the highest sample after the first third is within 10 % of the highest sample of the first third;
- open descriptors: no sample after the first third exceeds that third's highest by more than 4;
- the WAL never exceeds 80 MiB (autocheckpoint at 16 MiB, journal_size_limit 64 MiB);
- the backlog does not grow: pending at the end of the load is under 10 s of input;
- after a drain, every acknowledged record is in DuckLake; the extra copies are exactly the rows of
  batches the emulator committed twice.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from agent_harness import Agent, agent_config
from harness import Emulator
from reliability_common import WindowedClient, envelope, wait_until

TABLE = "bronze.soak_events"
CLIENTS = 4
ROWS_PER_LINE = 50
SAMPLE_EVERY = 10.0

SOAK_SECONDS = float(os.environ.get("RELIABILITY_SOAK_SECONDS", "0"))
RATE = int(os.environ.get("RELIABILITY_SOAK_RATE", "20000"))
FAULTS = float(os.environ.get("RELIABILITY_SOAK_FAULTS", "0.05"))

pytestmark = pytest.mark.skipif(SOAK_SECONDS <= 0, reason="soak: set RELIABILITY_SOAK_SECONDS (or run `Tests/reliability/run --soak`)")


class PacedSource:
    """Unique ids (client * 10^9 + n) at a fixed rate: one window of lines every `interval` seconds."""

    def __init__(self, client: int, rate: float, stop_at: float, lines: int = 10):
        self.client = client
        self.lines = lines
        self.interval = lines * ROWS_PER_LINE / rate
        self.next_at = time.monotonic()
        self.stop_at = stop_at
        self.n = 0

    def __call__(self):
        now = time.monotonic()
        if now >= self.stop_at:
            return None
        if self.next_at > now:
            time.sleep(self.next_at - now)
        self.next_at += self.interval
        window = []
        for _ in range(self.lines):
            uids = list(range(self.client * 10**9 + self.n, self.client * 10**9 + self.n + ROWS_PER_LINE))
            self.n += ROWS_PER_LINE
            rows = [{"uid": u, "host": f"web-{u % 7}", "level": "info", "latency_ms": (u * 37) % 900,
                     "msg": "GET /api/items 200", "ctx": {"region": "eu-west-1", "retry": u % 3}} for u in uids]
            ack = f"s{self.client}-{uids[0]}"
            window.append((ack, envelope(rows, TABLE, ack), uids))
        return window


def sample(agent: Agent) -> dict:
    pid = agent.process.pid
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    wal = Path(agent.spool_path + "-wal")
    return {
        "t": round(time.monotonic(), 1),
        "rss_mib": round(rss_kib / 1024, 1),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "wal_mib": round(wal.stat().st_size / 2**20, 1) if wal.exists() else 0.0,
        "pending": agent.status()["pending"],
    }


def test_soak_keeps_memory_descriptors_and_wal_flat_and_loses_nothing(tmp_path):
    faults = dict(error_rate=FAULTS * 0.6, rate_limit_rate=FAULTS * 0.2, retry_after=1,
                  drop_after_commit_rate=FAULTS * 0.2)
    emu = Emulator(quiet=True)
    emu.control(**faults)
    agent = Agent(tmp_path / "agent", default_table=None, env={"DEFINITE_API_KEY": "test-key"},
                  extra_config=agent_config(emu.stream_url, batch={"linger": "1s"},
                                            retry={"initial": "200ms", "max": "5s"})).start()
    samples: list[dict] = []
    stop = threading.Event()
    try:
        started = time.monotonic()
        stop_at = started + SOAK_SECONDS
        clients = [WindowedClient(agent, PacedSource(c, RATE / CLIENTS, stop_at), stop) for c in range(CLIENTS)]
        for client in clients:
            client.start()
        next_sample = started
        while any(c.is_alive() for c in clients):
            if time.monotonic() >= next_sample:
                samples.append(sample(agent))
                print("SOAK-SAMPLE " + json.dumps(samples[-1]), flush=True)
                next_sample += SAMPLE_EVERY
            time.sleep(0.5)
            assert agent.process.poll() is None, agent.log()[-3000:]
        load_seconds = time.monotonic() - started
        for client in clients:
            client.join()
            assert client.error is None, client.error
        samples.append(sample(agent))
        acked = [uid for c in clients for uids in c.acked for uid in uids]
        refused = sum(len(c.refused) for c in clients)
        pending_at_end = samples[-1]["pending"]

        emu.reset_faults()
        wait_until(lambda: agent.status()["pending"] == 0, timeout=300, interval=1, message="the drain")
        in_lake = emu.query(f"SELECT count(*) AS n, count(DISTINCT uid) AS d FROM lake.{TABLE}")[0]
        committed: dict[str, int] = {}
        rows_of: dict[str, int] = {}
        for r in emu.requests():
            batch = (r.get("tags") or {}).get("agent_batch")
            if r.get("successful_rows") and batch:
                committed[batch] = committed.get(batch, 0) + 1
                rows_of[batch] = r["successful_rows"]
        twice_rows = sum(rows_of[b] * (n - 1) for b, n in committed.items() if n > 1)

        third = max(1, len(samples) // 3)
        warm, rest = samples[:third], samples[third:]
        summary = {
            "seconds": round(load_seconds), "rate_offered": RATE, "faults": FAULTS,
            "acked": len(acked), "acked_per_s": round(len(acked) / load_seconds), "refused_requests": refused,
            "rss_mib_first_third_max": max(s["rss_mib"] for s in warm),
            "rss_mib_rest_max": max((s["rss_mib"] for s in rest), default=None),
            "rss_mib_min": min(s["rss_mib"] for s in samples),
            "fds": sorted({s["fds"] for s in samples}),
            "wal_mib_max": max(s["wal_mib"] for s in samples),
            "pending_max": max(s["pending"] for s in samples), "pending_at_end_of_load": pending_at_end,
            "lake_rows": in_lake["n"], "lake_distinct": in_lake["d"], "duplicates": in_lake["n"] - in_lake["d"],
            "rows_of_batches_committed_twice": twice_rows, "requests": len(emu.requests()),
        }
        print("SOAK-SUMMARY " + json.dumps(summary), flush=True)
        summary_path = os.environ.get("RELIABILITY_SUMMARY")
        if summary_path:
            with open(summary_path, "a") as out:
                out.write("soak " + json.dumps(summary) + "\n")

        assert refused == 0, f"{refused} requests refused under a steady load"
        assert in_lake["d"] == len(set(acked)), "acknowledged records missing from the lake"
        assert in_lake["n"] - in_lake["d"] == twice_rows, "duplicates not explained by batches committed twice"
        if rest:
            assert summary["rss_mib_rest_max"] <= summary["rss_mib_first_third_max"] * 1.10, samples
        if rest:
            # Connections come and go (intake clients, the API's keep-alive connections after faults), but
            # the count must not creep up.
            assert max(s["fds"] for s in rest) <= max(s["fds"] for s in warm) + 4, samples
        assert summary["wal_mib_max"] <= 80, samples
        assert pending_at_end <= RATE * 10, f"the backlog grew: {pending_at_end} pending at the end of the load"
    finally:
        stop.set()
        agent.finish()
        emu.stop()
