"""Delivery at scale, with the real binary: many requests in flight across tables, each table still in order
(merge: one batch in flight), fairness, and the tags contract (requests with different `config.tags` are
batched together and say which rows had which tags). Behaviour only; the timings are the benchmark's.

`RecordingAPI` (recording_api.py) records every request whole; the emulator checks merges into a real lake.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Tests" / "Emulator"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_harness import Agent, agent_config, wait_until  # noqa: E402
from harness import Emulator  # noqa: E402
from recording_api import RecordingAPI  # noqa: E402


@pytest.fixture
def api():
    recording = RecordingAPI()
    try:
        yield recording
    finally:
        recording.stop()


@pytest.fixture
def make_agent(tmp_path):
    made: list[Agent] = []

    def make(url: str, name: str = "agent", **config) -> Agent:
        agent = Agent(tmp_path / name, extra_config=agent_config(url, **config), default_table=None,
                      env={"DEFINITE_API_KEY": "test-key"})
        made.append(agent)
        return agent.start()

    try:
        yield make
    finally:
        for agent in made:
            print(f"--- tail of {agent.log_path} ---\n{agent.log()[-4000:]}")
            agent.finish()


def request(rows, table: str, ack: str, **config) -> str:
    return json.dumps({"data": rows, "config": {"table": table, **config}, "ack": ack}, separators=(",", ":"))


def send(agent: Agent, lines: list[str]) -> None:
    with agent.connect() as conn:
        conn.sock.sendall("".join(line + "\n" for line in lines).encode())
        replies = [conn.reply() for _ in lines]
    assert all(r and r["ok"] for r in replies), [r for r in replies if not (r and r["ok"])][:3]


def drained(agent: Agent, timeout: float = 30) -> None:
    wait_until(lambda: agent.status()["pending"] == 0, timeout, interval=0.1, message="nothing pending")


def test_many_tables_have_many_requests_in_flight_at_once(api, make_agent):
    api.delay = 0.3
    agent = make_agent(api.url, batch={"linger": "50ms"})
    send(agent, [request([{"t": t, "i": i} for i in range(10)], f"bronze.t{t}", f"a{t}") for t in range(40)])
    drained(agent)
    requests = api.snapshot()
    assert sorted(r.table for r in requests) == sorted(f"bronze.t{t}" for t in range(40))
    # Not bounded by a couple of threads: the adaptive limit starts at 16 and grows while answers are good
    # (how many overlap also depends on how fast this machine gets them out).
    assert api.most_in_flight() >= 8, api.most_in_flight()


def test_append_tables_keep_their_own_limit_and_merge_tables_one_batch_in_flight(api, make_agent):
    api.delay = 0.2
    agent = make_agent(api.url, batch={"linger": "20ms", "max_rows": 10, "concurrency": 2},
                       tables=({"name": "bronze.users", "mode": "merge", "primary_key": ["id"]},))
    lines = [request([{"n": 10 * k + i} for i in range(10)], "bronze.events", f"e{k}") for k in range(8)]
    lines += [request([{"id": 10 * k + i, "v": k} for i in range(10)], "bronze.users", f"u{k}") for k in range(8)]
    send(agent, lines)
    drained(agent)
    assert api.most_in_flight("bronze.users") == 1
    assert api.most_in_flight("bronze.events") == 2
    # Each merge batch in spool order.
    users = [r for r in api.snapshot() if r.table == "bronze.users"]
    firsts = [r.rows[0]["id"] for r in sorted(users, key=lambda r: r.started)]
    assert firsts == sorted(firsts), firsts


def test_a_busy_table_does_not_starve_a_quiet_one(api, make_agent):
    api.delay = 0.1
    agent = make_agent(api.url, batch={"linger": "50ms", "max_rows": 100})
    send(agent, [request([{"n": 100 * k + i} for i in range(100)], "bronze.busy", f"b{k}") for k in range(60)])
    sent = time.monotonic()
    send(agent, [request({"n": 0}, "bronze.quiet", "q")])
    drained(agent)
    quiet = next(r for r in api.snapshot() if r.table == "bronze.quiet")
    busy_after = [r for r in api.snapshot() if r.table == "bronze.busy" and r.started > quiet.started]
    # Its row went within linger and a round trip or two, while the busy table still had work waiting.
    assert quiet.started - sent < 1.0 and len(busy_after) >= 10, (quiet.started - sent, len(busy_after))


def test_a_batch_full_by_bytes_and_the_rest_of_its_burst_go_without_waiting_for_linger(api, make_agent):
    # Rows of ~100 bytes fill a 16 KiB batch long before its 50,000 rows: it goes at once, and the burst's
    # last rows once the table stood still (100 ms), not after the minute of linger. A lone row elsewhere
    # is a trickle: it waits for linger.
    agent = make_agent(api.url, batch={"linger": "60s", "max_bytes": "16KiB"})
    rows = [{"n": n, "pad": "x" * 80} for n in range(500)]
    sent = time.monotonic()
    send(agent, [request(rows[i:i + 50], "bronze.burst", f"r{i}") for i in range(0, 500, 50)])
    send(agent, [request({"n": 0}, "bronze.trickle", "t")])
    wait_until(lambda: sum(len(r.rows) for r in api.snapshot() if r.table == "bronze.burst") == 500, 10, interval=0.05,
               message="the burst delivered well within linger")
    burst = [r for r in api.snapshot() if r.table == "bronze.burst"]
    assert len(burst) >= 4 and all(len(json.dumps(r.rows)) <= 16 * 1024 for r in burst), [len(r.rows) for r in burst]
    assert sorted(row["n"] for r in burst for row in r.rows) == list(range(500))
    assert burst[-1].started - sent < 5, burst[-1].started - sent
    time.sleep(1)
    assert not [r for r in api.snapshot() if r.table == "bronze.trickle"], "a lone row waits for linger"


def test_requests_with_different_tags_are_batched_together_and_say_which_rows_had_which_tags(api, make_agent):
    agent = make_agent(api.url, batch={"linger": "300ms"})
    lines = [request({"n": n}, "bronze.traced", f"a{n}", tags={"trace_id": f"t-{n}"}) for n in range(300)]
    lines += [request({"n": 300 + n}, "bronze.traced", f"b{n}") for n in range(5)]  # no tags
    lines += [request({"n": 305 + n}, "bronze.traced", f"c{n}", tags={"service": "x"}) for n in range(5)]
    send(agent, lines)
    drained(agent)
    requests = api.snapshot()
    assert len(requests) < 10, f"{len(requests)} requests for 310 one-row requests: tags defeated batching"
    seen = {}
    for r in requests:
        assert r.tags["agent_batch"] and r.tags["agent_host"], r.tags
        runs = r.tags.get("client_tags")
        if runs is None:  # one tag set for every row: its members, flat
            client = {k: v for k, v in r.tags.items() if not k.startswith("agent_")}
            for row in r.rows:
                seen[row["n"]] = client
            continue
        covered = {}
        for run in runs:
            for index in range(run["from"], run["to"]):
                covered[index] = run["tags"]
        for index, row in enumerate(r.rows):
            seen[row["n"]] = covered.get(index, {})
    assert sorted(seen) == list(range(310))
    assert all(seen[n] == {"trace_id": f"t-{n}"} for n in range(300)), [seen[n] for n in range(3)]
    assert all(seen[n] == {} for n in range(300, 305))
    assert all(seen[n] == {"service": "x"} for n in range(305, 310))


def test_upserts_with_different_tags_keep_their_order(make_agent):
    with Emulator(quiet=True) as emu:
        agent = make_agent(emu.stream_url, tables=({"name": "bronze.users", "mode": "merge", "primary_key": ["id"]},))
        send(agent, [request({"id": k % 5, "v": k}, "bronze.users", f"u{k}", tags={"trace_id": f"t-{k % 3}"})
                     for k in range(100)])
        drained(agent)
        values = {r["id"]: r["v"] for r in emu.query("SELECT id, v FROM lake.bronze.users")}
        assert values == {k: max(v for v in range(100) if v % 5 == k) for k in range(5)}, values
        assert len([t for t in agent.status()["tables"] if t["table"] == "bronze.users"]) == 1


def test_an_idle_daemon_wakes_up_rarely(api, make_agent):
    agent = make_agent(api.url, batch={"linger": "20ms"})
    send(agent, [request({"n": n}, f"bronze.t{n}", f"a{n}", tags={"trace_id": str(n)}) for n in range(50)])
    drained(agent)
    time.sleep(1.5)

    def switches() -> int:
        total = 0
        for task in Path(f"/proc/{agent.process.pid}/task").iterdir():
            for line in (task / "status").read_text().splitlines():
                if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                    total += int(line.split()[1])
        return total

    before = switches()
    time.sleep(5)
    per_second = (switches() - before) / 5
    # The writer's and the loop's idle ticks, the notifier: a handful per second, not a poll every 50 ms.
    assert per_second <= 15, f"{per_second} wake-ups/s while idle"
