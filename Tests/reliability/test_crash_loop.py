"""Crash loop: kill -9 the daemon again and again under faults; nothing acknowledged is ever lost.

`RELIABILITY_CYCLES` cycles (default 3; `Tests/reliability/run --full` uses 20). Each cycle restarts the
daemon on the same spool, with clients writing with acks to an append table and to a merge table (keys with
increasing per-key versions), while the emulator answers 30 % of requests with 5xx/429 and drops 5 % of the
others after committing. The daemon is killed with SIGKILL at a random moment; the moments rotate over
three phases:

- `intake`   clients are writing (group commits of intake in progress);
- `delivery` clients have stopped, rows are pending and requests are in flight (latency 20-150 ms);
- `commit`   the instant the emulator counts a new 200, i.e. while the agent records the confirmation.

After every kill the spool must pass `PRAGMA integrity_check` (read-only). After the last cycle the faults
are turned off, the daemon drains (`status` pending 0) and:

- every acknowledged record is in DuckLake; no record appears that was never sent;
- append table: the extra copies equal exactly the rows of batches (`config.tags.agent_batch`) committed
  more than once by the emulator (a 200 or a drop after commit), and each such batch is explained by a
  drop after commit or by a 200 whose answer the agent could not record because it was killed;
- merge table: each key holds a version between its last acknowledged one and its last sent one (a
  durable but unacknowledged later version may win, an older one never).
"""
from __future__ import annotations

import json
import os
import random
import threading
import time

import pytest

from agent_harness import Agent, agent_config
from harness import Emulator
from reliability_common import WindowedClient, envelope, integrity_check, wait_until

API_KEY = "test-key"
APPEND_TABLE = "bronze.crash_events"
MERGE_TABLE = "bronze.crash_kv"
MERGE_KEYS = 200
PHASES = ("intake", "delivery", "commit")


def cycles() -> int:
    return int(os.environ.get("RELIABILITY_CYCLES", "3"))


class AppendSource:
    """Unique ids per row: uid = cycle * 10^7 + client * 10^6 + n."""

    def __init__(self, cycle: int, client: int, rows_per_line: int = 5, lines: int = 10):
        self.cycle, self.client = cycle, client
        self.rows_per_line, self.lines = rows_per_line, lines
        self.n = 0
        self.line_no = 0

    def __call__(self):
        window = []
        for _ in range(self.lines):
            uids = []
            rows = []
            for _ in range(self.rows_per_line):
                uid = self.cycle * 10_000_000 + self.client * 1_000_000 + self.n
                self.n += 1
                uids.append(uid)
                rows.append({"uid": uid, "cycle": self.cycle, "pad": "x" * 40})
            ack = f"a{self.cycle}-{self.client}-{self.line_no}"
            self.line_no += 1
            window.append((ack, envelope(rows, APPEND_TABLE, ack), uids))
        return window


class MergeSource:
    """Single-row upserts of random keys; versions per key increase across cycles."""

    def __init__(self, next_version: dict[int, int], cycle: int, lines: int = 10):
        self.next_version = next_version
        self.cycle = cycle
        self.lines = lines
        self.line_no = 0
        self.sent: dict[int, int] = {}

    def __call__(self):
        window = []
        for _ in range(self.lines):
            key = random.randrange(MERGE_KEYS)
            version = self.next_version[key]
            self.next_version[key] += 1
            ack = f"m{self.cycle}-{self.line_no}"
            self.line_no += 1
            row = {"id": key, "version": version, "value": f"{key}-{version}"}
            window.append((ack, envelope([row], MERGE_TABLE, ack, "merge", "id"), (key, version)))
            self.sent[key] = version
        return window


def test_crash_loop_loses_nothing_acknowledged_and_explains_every_duplicate(tmp_path):
    n_cycles = cycles()
    rng = random.Random(int(os.environ.get("RELIABILITY_SEED", "0")) or None)
    seed = rng.randrange(1, 1_000_000)
    random.seed(seed)
    emu = Emulator(quiet=True, seed=seed)
    agent = Agent(tmp_path / "agent", default_table=None, env={"DEFINITE_API_KEY": API_KEY},
                  extra_config=agent_config(emu.stream_url, batch={"max_rows": 500, "concurrency": 2}))
    faults = dict(error_rate=0.2, rate_limit_rate=0.125, retry_after=1, drop_after_commit_rate=0.05,
                  latency_range_ms=[10, 100])
    emu.control(**faults)

    acked_uids: set[int] = set()
    sent_uids: set[int] = set()
    next_version = {k: 0 for k in range(MERGE_KEYS)}
    last_acked_version: dict[int, int] = {}
    last_sent_version: dict[int, int] = {}
    kills: list[dict] = []
    upserts_acked = 0
    started = time.monotonic()
    try:
        for cycle in range(n_cycles):
            phase = PHASES[cycle % len(PHASES)]
            agent.start()
            stop = threading.Event()
            appenders = [WindowedClient(agent, AppendSource(cycle, c), stop, pause=0.01) for c in range(2)]
            merge_source = MergeSource(next_version, cycle)
            merger = WindowedClient(agent, merge_source, stop, pause=0.002)
            clients = [*appenders, merger]
            for client in clients:
                client.start()

            if phase == "intake":
                time.sleep(rng.uniform(1.0, 4.0))
            elif phase == "delivery":
                time.sleep(rng.uniform(1.0, 3.0))
                stop.set()
                for client in clients:
                    client.join(timeout=30)
                time.sleep(rng.uniform(0.2, 2.0))
            else:  # commit: wait a little, then kill the instant the emulator counts a new 200
                time.sleep(rng.uniform(1.0, 3.0))
                base = emu.stats()["by_status"].get("200", 0)
                deadline = time.monotonic() + 10
                while emu.stats()["by_status"].get("200", 0) == base and time.monotonic() < deadline:
                    time.sleep(0.002)
            agent.kill9()
            kill_time = time.time()
            stop.set()
            for client in clients:
                client.join(timeout=30)
                assert not client.is_alive(), "a client hung after the kill"
                assert client.error is None, client.error
                assert not client.refused, client.refused[:3]
            for client in appenders:
                for uids in client.acked:
                    acked_uids.update(uids)
                for uids in client.acked + client.unanswered:
                    sent_uids.update(uids)
            upserts_acked += len(merger.acked)
            for key, version in merger.acked:
                last_acked_version[key] = max(last_acked_version.get(key, -1), version)
            for key, version in merger.acked + merger.unanswered:
                last_sent_version[key] = max(last_sent_version.get(key, -1), version)

            check = integrity_check(agent.spool_path)
            pending_before = agent.status()["pending"]
            kills.append({"cycle": cycle, "phase": phase, "time": kill_time, "pending": pending_before,
                          "acked_lines": sum(len(c.acked) for c in clients),
                          "unanswered_lines": sum(len(c.unanswered) for c in clients)})
            assert check == "ok", f"cycle {cycle} ({phase}): integrity_check says {check}"
            print(f"cycle {cycle}: killed during {phase}, {pending_before} rows pending in the spool, "
                  f"{kills[-1]['acked_lines']} lines acked, {kills[-1]['unanswered_lines']} unanswered")

        # Final drain: faults off, one clean run until the spool is empty.
        drain_started = time.time()
        emu.control(error_rate=0.0, rate_limit_rate=0.0, drop_after_commit_rate=0.0, latency_range_ms=None)
        agent.start()
        wait_until(lambda: agent.status()["pending"] == 0, timeout=180, interval=0.25, message="final drain")
        status = agent.status()
        assert status["dead_letters"] == 0, status
        assert agent.stop() == 0, agent.log()[-3000:]
        assert integrity_check(agent.spool_path) == "ok"
        assert "panic" not in agent.log().lower() and "fatal error" not in agent.log().lower()

        # -- append table: every acknowledged row, nothing foreign, duplicates explained
        totals = emu.query(f"SELECT count(*) AS n, count(DISTINCT uid) AS d FROM lake.{APPEND_TABLE}")[0]
        landed = {r["uid"] for r in emu.query(f"SELECT DISTINCT uid FROM lake.{APPEND_TABLE}")}
        missing = acked_uids - landed
        assert not missing, f"{len(missing)} acknowledged rows missing, e.g. {sorted(missing)[:10]}"
        foreign = landed - sent_uids
        assert not foreign, f"rows in the lake that were never sent: {sorted(foreign)[:10]}"
        lake_duplicates = totals["n"] - totals["d"]

        requests = emu.requests()
        append_requests = [r for r in requests if r["table"] == f"lake.{APPEND_TABLE}"]
        commits: dict[str, list[dict]] = {}
        for r in append_requests:
            if r["successful_rows"] and (r["status"] == 200 or r["dropped_after_commit"]):
                batch = (r.get("tags") or {}).get("agent_batch")
                assert batch, r
                commits.setdefault(batch, []).append(r)
        assert all(len({c["rows"] for c in cs}) == 1 for cs in commits.values()), "a batch changed its rows"
        explained = 0
        by_drop = by_kill = 0
        for batch, cs in commits.items():
            if len(cs) < 2:
                continue
            explained += (len(cs) - 1) * cs[0]["rows"]
            for earlier, later in zip(cs, cs[1:]):
                if earlier["dropped_after_commit"]:
                    by_drop += 1
                else:
                    # A 200 answered, yet the batch was sent again: only a kill in between explains it.
                    assert any(earlier["ts"] - 1.0 <= k["time"] <= later["ts"] for k in kills), (
                        f"batch {batch} got a 200 at {earlier['ts']} and was sent again at {later['ts']} "
                        "without a kill in between")
                    by_kill += 1
        assert lake_duplicates == explained, (
            f"{lake_duplicates} extra copies in the lake, {explained} explained by batches committed twice")

        # -- merge table: last acknowledged version or a later sent one, never older
        rows = {r["id"]: r for r in emu.query(f"SELECT id, version, value FROM lake.{MERGE_TABLE}")}
        for key, version in last_acked_version.items():
            assert key in rows, f"key {key} (acked version {version}) missing from the merge table"
            got = rows[key]["version"]
            assert version <= got <= last_sent_version[key], (
                f"key {key}: lake holds version {got}, last acknowledged {version}, last sent {last_sent_version[key]}")
            assert rows[key]["value"] == f"{key}-{got}"
        assert set(rows) <= set(last_sent_version)
        newer = sum(1 for k, v in last_acked_version.items() if rows[k]["version"] > v)

        statuses = [r["status"] for r in requests if r["ts"] < drain_started]
        summary = {
            "cycles": n_cycles, "seed": seed, "kills": [(k["phase"], k["pending"]) for k in kills],
            "append_rows_acked": len(acked_uids), "append_rows_sent": len(sent_uids),
            "append_rows_in_lake": totals["n"], "append_duplicates": lake_duplicates,
            "batches_committed_twice_by_drop_after_commit": by_drop,
            "batches_committed_twice_by_kill": by_kill,
            "merge_keys": len(rows), "merge_keys_newer_than_last_ack": newer,
            "merge_upserts_acked": upserts_acked,
            "requests": len(requests), "requests_under_faults": len(statuses),
            "failed_5xx_429": sum(1 for s in statuses if s in (429, 500, 503)),
            "dropped_after_commit": sum(1 for r in requests if r["dropped_after_commit"]),
            "dropped_after_commit_append": sum(1 for r in append_requests if r["dropped_after_commit"]),
            "seconds": round(time.monotonic() - started, 1),
        }
        print("CRASH-LOOP SUMMARY " + json.dumps(summary))
        summary_path = os.environ.get("RELIABILITY_SUMMARY")
        if summary_path:
            with open(summary_path, "a") as out:
                out.write("crash_loop " + json.dumps(summary) + "\n")
    finally:
        agent.kill9()
        print(f"--- tail of {agent.log_path} ---\n{agent.log()[-4000:]}")
        emu.stop()


@pytest.mark.parametrize("signame", ["SIGABRT", "SIGSEGV"])
def test_an_external_crash_signal_ends_the_daemon(tmp_path, signame):
    """What systemd sends when WatchdogSec= expires (WatchdogSignal= defaults to SIGABRT) must end the
    daemon even without the unit's SWIFT_BACKTRACE=enable=no: the Swift runtime's backtracer catches a
    signal sent with kill(2), prints a backtrace and would otherwise let the daemon run on."""
    import signal
    import subprocess

    agent = Agent(tmp_path / "agent", env={"DEFINITE_API_KEY": ""}).start()
    try:
        time.sleep(0.3)
        signo = getattr(signal, signame)
        agent.process.send_signal(signo)
        try:
            code = agent.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            code = None
        assert code is not None, f"the daemon is still running 10 s after {signame}"
        assert code == -signo, code
        # One line in the log says what ended it, even from the release binary, which has no backtracer.
        assert f"definite-agent: ended by {signame} from process {os.getpid()}" in agent.log(), agent.log()[-2000:]
    finally:
        agent.kill9()
