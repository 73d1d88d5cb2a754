"""Acceptance tests of delivery: the real agent binary forwarding to the Stream API emulator (real DuckLake).

Every test starts its own emulator and agent. The agent's spool is checked through `status --json` and by
reading the `dead_letters` table directly; what landed is checked with SQL against the lake. Tests whose
name contains `dlq` also depend on the `dlq` / `queue` CLI commands.
"""
from __future__ import annotations

import json
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "Tests" / "Emulator"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_harness import Agent, agent_binary, agent_config, free_port, wait_until  # noqa: E402
from harness import Emulator  # noqa: E402

API_KEY = "test-key"


@pytest.fixture
def make_emulator():
    """Starts emulators (quiet unless told otherwise); all are stopped at the end of the test."""
    started: list[Emulator] = []

    def make(*args, **kwargs) -> Emulator:
        kwargs.setdefault("quiet", True)
        emu = Emulator(*args, **kwargs)
        started.append(emu)
        return emu

    try:
        yield make
    finally:
        for emu in started:
            emu.stop()


@pytest.fixture
def emu(make_emulator) -> Emulator:
    return make_emulator()


@pytest.fixture
def make_agent(tmp_path):
    """Starts agents on tmp_path pointed at a URL. At the end every agent still running is stopped with SIGTERM
    and must exit 0 (their log tails are printed, which pytest shows for a failing test)."""
    made: list[Agent] = []

    def make(url: str, *, name: str = "agent", default_table: str | None = "bronze.events", start: bool = True,
             **config) -> Agent:
        agent = Agent(tmp_path / name, extra_config=agent_config(url, **config), default_table=default_table,
                      env={"DEFINITE_API_KEY": API_KEY})
        made.append(agent)
        if start:
            agent.start()
        return agent

    unclean = []
    try:
        yield make
    finally:
        for agent in made:
            if agent.process and agent.process.poll() is None:
                try:
                    status = agent.stop(timeout=15)
                except Exception as error:  # noqa: BLE001 - a hang on stop is what this catches
                    status = f"no exit after SIGTERM ({error})"
                    agent.kill9()
                if status != 0:
                    unclean.append((agent.log_path, status))
        for agent in made:
            print(f"--- tail of {agent.log_path} ---\n{agent.log()[-6000:]}")
    assert not unclean, f"agents that did not stop cleanly on SIGTERM: {unclean}"


def envelope(rows: list[dict], table: str, ack: str) -> bytes:
    return json.dumps({"data": rows, "config": {"table": table}, "ack": ack}, separators=(",", ":")).encode()


def pipeline(agent: Agent, lines: list[bytes]) -> list[dict]:
    """Sends every line (each carrying an ack) on one connection while reading the replies."""
    with agent.connect() as conn:
        def write():
            try:
                conn.sock.sendall(b"".join(line + b"\n" for line in lines))
            except OSError:  # the agent went away (kill -9): the replies tell what was acknowledged
                pass

        sender = threading.Thread(target=write, daemon=True)
        sender.start()
        replies = [conn.reply() for _ in lines]
        sender.join(timeout=60)
    return replies


def send(agent: Agent, rows: list[dict], table: str = "bronze.events", chunk: int = 1000, tag: str = "s") -> None:
    """Sends rows as data-array lines with acks; asserts every line was acknowledged (durable)."""
    lines = [envelope(rows[k:k + chunk], table, f"{tag}{k}") for k in range(0, len(rows), chunk)]
    replies = pipeline(agent, lines)
    assert all(r and r.get("ok") for r in replies), [r for r in replies if not (r and r.get("ok"))][:3]
    assert sum(r["accepted"] for r in replies) == len(rows)


def table_status(agent: Agent, table: str) -> dict | None:
    return next((t for t in agent.status()["tables"] if t["table"] == table), None)


def wait_delivered(agent: Agent, timeout: float = 30.0, table: str | None = None) -> dict:
    def done():
        status = agent.status()
        if table is not None:
            status = next((t for t in status["tables"] if t["table"] == table), {"pending": 1})
        return status if status["pending"] == 0 else None
    return wait_until(done, timeout, message=f"pending 0 ({table or 'all tables'})")


def dead_letters(agent: Agent, table: str | None = None) -> list[dict]:
    """The dead_letters table, read directly; `records` parsed into dicts, `errors` into a list."""
    db = sqlite3.connect(f"file:{agent.spool_path}?mode=ro", uri=True)
    try:
        db.row_factory = sqlite3.Row
        rows = db.execute(
            "SELECT d.*, t.table_name FROM dead_letters d JOIN targets t ON t.id = d.target_id "
            + ("WHERE t.table_name = ? " if table else "") + "ORDER BY d.id", (table,) if table else ()).fetchall()
    finally:
        db.close()
    entries = []
    for row in rows:
        entry = dict(row)
        entry["records"] = [json.loads(line) for line in bytes(row["records"]).split(b"\n") if line]
        entry["errors"] = json.loads(row["errors"]) if row["errors"] else []
        entries.append(entry)
    return entries


def lake_table_exists(emu: Emulator, table: str) -> bool:
    ns, name = table.split(".")
    return emu.scalar("SELECT count(*) FROM information_schema.tables WHERE table_catalog = 'lake' "
                      f"AND table_schema = '{ns}' AND table_name = '{name}'") > 0


def lake_count(emu: Emulator, table: str) -> int:
    return emu.scalar(f"SELECT count(*) FROM lake.{table}") if lake_table_exists(emu, table) else 0


def lake_values(emu: Emulator, table: str, column: str) -> list:
    if not lake_table_exists(emu, table):
        return []
    return [r["v"] for r in emu.query(f"SELECT {column} AS v FROM lake.{table}")]


def requests_for(emu: Emulator, table: str) -> list[dict]:
    return [r for r in emu.requests() if r["table"] == f"lake.{table}"]


def batch_of(request: dict) -> str | None:
    return (request.get("tags") or {}).get("agent_batch")


# --------------------------------------------------------------------------------------------------------------
# 1. One test per answer of the Stream API


@pytest.mark.parametrize("format,compression", [("json", "gzip"), ("ndjson", "none")])
def test_200_ok_rows_leave_the_spool_and_land_once(emu, make_agent, format, compression):
    agent = make_agent(emu.stream_url, batch={"format": format, "compression": compression, "max_rows": 400},
                       tables=({"name": "bronze.users", "mode": "merge", "primary_key": ["id"]},))
    events = [{"i": i, "text": f"event {i}"} for i in range(1000)]
    users = [{"id": k, "name": f"user {k}"} for k in range(50)]
    send(agent, events, "bronze.events")
    send(agent, users, "bronze.users")
    wait_delivered(agent)

    assert sorted(lake_values(emu, "bronze.events", "i")) == list(range(1000))
    assert sorted(lake_values(emu, "bronze.users", "id")) == list(range(50))
    status = agent.status()
    assert status["dead_letters"] == 0 and dead_letters(agent) == []
    for table in ("bronze.events", "bronze.users"):
        t = table_status(agent, table)
        assert t["state"] == "idle" and t["pending"] == 0 and t["last_error"] is None and t["last_success"], t
    requests = emu.requests()
    assert requests and all(r["status"] == 200 for r in requests), requests
    # Each batch carries its stable id and the host; batches respect max_rows; no row was sent twice.
    assert all(batch_of(r) and r["tags"].get("agent_host") for r in requests)
    assert len({batch_of(r) for r in requests}) == len(requests)
    assert all(r["rows"] <= 400 for r in requests)
    assert sum(r["rows"] for r in requests) == 1050
    stats = emu.stats()
    raw = sum(len(json.dumps(e, separators=(",", ":"))) for e in events + users)
    if compression == "gzip":
        assert stats["bytes_received"] < raw / 2, stats
    else:
        assert stats["bytes_received"] >= raw, stats


@pytest.mark.parametrize("named", [True, False], ids=["rows-named", "rows-not-named"])
def test_200_partial_merge_dead_letters_only_the_rejected_rows(emu, make_agent, named):
    """Rows named in the errors (`row 17: ...`) are dead-lettered from the one answer; without names the
    batch is searched by halves (upserts are idempotent, so re-sending the good rows is harmless)."""
    emu.control(reject_marker="bad", reject_marker_mode="row", name_rejected_rows=named)
    agent = make_agent(emu.stream_url, tables=({"name": "bronze.users", "mode": "merge", "primary_key": ["id"]},))
    bad = {17, 88, 150}
    rows = [{"id": k, "name": f"user {k}", **({"bad": True} if k in bad else {})} for k in range(200)]
    send(agent, rows, "bronze.users", chunk=200)
    wait_delivered(agent)

    ids = lake_values(emu, "bronze.users", "id")
    assert sorted(set(ids)) == sorted(set(range(200)) - bad), "every good row lands"
    entries = dead_letters(agent)
    assert sorted(r["id"] for e in entries for r in e["records"]) == sorted(bad)
    requests = requests_for(emu, "bronze.users")
    assert len({batch_of(r) for r in requests}) == 1 and requests[0]["rows"] == 200
    for entry in entries:
        assert entry["table_name"] == "bronze.users" and entry["partial"] == 0, entry
        assert entry["http_status"] == 200 and entry["reason"], entry
        assert any("reject marker" in e for e in entry["errors"]), entry
    if named:
        assert len(requests) == 1 and sorted(ids) == sorted(set(range(200)) - bad), requests
        assert len(entries) == 1 and entries[0]["record_count"] == 3, entries
        assert entries[0]["reason"].startswith("rejected by the API (3 of 200 rows"), entries[0]["reason"]
        assert all(e.startswith("row ") for e in entries[0]["errors"])
    else:
        assert len(entries) == 3 and all(e["record_count"] == 1 for e in entries), entries
        assert len(requests) > 3
    t = table_status(agent, "bronze.users")
    assert t["dead_letters"] == 3 and t["pending"] == 0 and t["state"] == "idle"
    assert agent.status()["dead_letters"] == 3
    assert agent.stop() == 0


def test_200_partial_append_dead_letters_the_whole_batch_once_marked_partial_when_rows_are_not_named(emu, make_agent):
    emu.control(reject_marker="bad", reject_marker_mode="row", name_rejected_rows=False)
    agent = make_agent(emu.stream_url)
    rows = [{"i": i, **({"bad": 1} if i in (5, 60) else {})} for i in range(100)]
    send(agent, rows, chunk=100)
    wait_delivered(agent)

    # The API wrote 98 rows; the agent must not re-send (that would duplicate them).
    assert sorted(lake_values(emu, "bronze.events", "i")) == [i for i in range(100) if i not in (5, 60)]
    requests = requests_for(emu, "bronze.events")
    assert len(requests) == 1 and requests[0]["status"] == 200 and requests[0]["rejected"] == 2, requests
    entries = dead_letters(agent)
    assert len(entries) == 1, entries
    entry = entries[0]
    assert entry["partial"] == 1 and entry["record_count"] == 100 and entry["http_status"] == 200, entry
    assert entry["reason"].startswith("partially rejected: 2 of 100 rows rejected and the others written"), entry["reason"]
    assert [r["i"] for r in entry["records"]] == list(range(100))
    assert entry["request_id"] == emu.requests()[0]["request_id"]
    assert entry["errors"] == ["carries reject marker 'bad'"] * 2, entry
    assert table_status(agent, "bronze.events")["dead_letters"] == 100
    # The target keeps flowing afterwards.
    send(agent, [{"i": 1000 + i} for i in range(10)], tag="after")
    wait_delivered(agent)
    assert lake_count(emu, "bronze.events") == 108

    # Replaying a partial entry would write its 98 good rows again: refused unless asked for.
    replay = agent.cli("dlq", "replay", "--all")
    assert replay.returncode != 0 and b"--include-written" in replay.stderr, replay
    assert b"98" in replay.stderr or b"written" in replay.stderr, replay.stderr
    assert len(dead_letters(agent)) == 1
    # Only rows known to be rejected are exported with --rejected-only: none here (the API did not say).
    exported = agent.cli("dlq", "export", "--rejected-only")
    assert exported.returncode == 0 and exported.stdout == b"", exported
    assert len(agent.cli("dlq", "export").stdout.splitlines()) == 100
    replay = agent.cli("dlq", "replay", "--all", "--include-written")
    assert replay.returncode == 0, replay.stderr.decode()
    wait_delivered(agent)
    assert agent.stop() == 0


def test_200_partial_append_with_named_rows_dead_letters_exactly_those_and_delivers_the_rest(emu, make_agent):
    emu.control(reject_marker="bad", reject_marker_mode="row")
    agent = make_agent(emu.stream_url)
    rows = [{"i": i, **({"bad": 1} if i in (5, 60) else {})} for i in range(100)]
    send(agent, rows, chunk=100)
    wait_delivered(agent)

    assert sorted(lake_values(emu, "bronze.events", "i")) == [i for i in range(100) if i not in (5, 60)]
    assert len(requests_for(emu, "bronze.events")) == 1
    entries = dead_letters(agent)
    assert len(entries) == 1 and entries[0]["partial"] == 0 and entries[0]["record_count"] == 2, entries
    assert [r["i"] for r in entries[0]["records"]] == [5, 60]
    assert entries[0]["errors"] == ["row 5: carries reject marker 'bad'", "row 60: carries reject marker 'bad'"]
    exported = agent.cli("dlq", "export", "--rejected-only")
    assert [json.loads(line)["i"] for line in exported.stdout.splitlines()] == [5, 60]
    assert table_status(agent, "bronze.events")["dead_letters"] == 2
    # An export that cannot be written (a full disk behind `> file`) fails, so `export && purge` purges nothing.
    with open("/dev/full", "wb") as full:
        failed = subprocess.run([agent_binary(), "dlq", "export", "--config", agent.config_path],
                                stdout=full, stderr=subprocess.PIPE, env=agent.env, timeout=30)
    assert failed.returncode == 74, failed
    assert b"cannot write the rows of entry" in failed.stderr and b"No space left" in failed.stderr, failed.stderr
    assert agent.stop() == 0


def test_a_single_row_rejected_alone_is_not_called_partial(emu, make_agent):
    emu.control(reject_marker="bad", reject_marker_mode="row", name_rejected_rows=False)
    agent = make_agent(emu.stream_url)
    send(agent, [{"i": 1, "bad": 1}], chunk=1)
    wait_delivered(agent)
    entries = dead_letters(agent)
    assert len(entries) == 1 and entries[0]["partial"] == 0 and entries[0]["record_count"] == 1, entries
    assert "partial" not in entries[0]["reason"] and "others" not in entries[0]["reason"], entries[0]["reason"]
    assert entries[0]["reason"].startswith("rejected by the API: carries reject marker")
    assert agent.stop() == 0


def test_the_earlier_writes_of_a_merge_key_go_with_its_rejected_last_write_into_the_dead_letter(emu, make_agent):
    """A merge batch sends only the last write of each key. The earlier writes once left the queue when the
    batch was registered: if the API then rejected the last write, no value of that key was written and the
    earlier ones were nowhere. They now go into its dead letter, in order, and `dlq replay` applies them."""
    emu.control(reject_marker="bad", reject_marker_mode="row")
    agent = make_agent(emu.stream_url, tables=({"name": "bronze.users", "mode": "merge", "primary_key": ["id"]},))
    rows = [{"id": 1, "plan": "free"}, {"id": 2, "plan": "free"}, {"id": 1, "plan": "pro"},
            {"id": 1, "plan": "garbled", "bad": True}, {"id": 2, "plan": "pro"}]
    send(agent, rows, "bronze.users", chunk=5)
    wait_delivered(agent)
    assert {r["id"]: r["plan"] for r in emu.query("SELECT id, plan FROM lake.bronze.users")} == {2: "pro"}
    entries = dead_letters(agent)
    assert len(entries) == 1 and [r["plan"] for r in entries[0]["records"]] == ["free", "pro", "garbled"], entries
    assert "with 2 earlier writes of the same keys in the batch" in entries[0]["reason"], entries[0]["reason"]
    # Replayed as they are, the last write is rejected again, and the earlier ones stay with it: nothing is lost
    # on the way round.
    replay = agent.cli("dlq", "replay", "--all")
    assert replay.returncode == 0, replay
    wait_delivered(agent)
    again = dead_letters(agent)
    assert len(again) == 1 and [r["plan"] for r in again[0]["records"]] == ["free", "pro", "garbled"], again
    assert agent.stop() == 0


@pytest.mark.parametrize("named", [True, False], ids=["rows-named", "rows-not-named"])
def test_400_splits_the_batch_and_dead_letters_only_the_offending_rows(emu, make_agent, named):
    emu.control(reject_marker="bad", reject_marker_mode="request", name_rejected_rows=named)
    agent = make_agent(emu.stream_url)
    rows = [{"i": i, **({"bad": 1} if i in (5, 60) else {})} for i in range(100)]
    send(agent, rows, chunk=100)
    wait_delivered(agent)

    assert sorted(lake_values(emu, "bronze.events", "i")) == [i for i in range(100) if i not in (5, 60)]
    entries = dead_letters(agent)
    assert sorted(r["i"] for e in entries for r in e["records"]) == [5, 60]
    assert len(entries) == 2
    for entry in entries:
        assert entry["record_count"] == 1 and entry["http_status"] == 400 and entry["partial"] == 0, entry
        assert entry["reason"] and any("reject marker" in e for e in entry["errors"]), entry
    assert table_status(agent, "bronze.events")["dead_letters"] == 2
    requests = requests_for(emu, "bronze.events")
    assert requests[0]["status"] == 400 and requests[0]["rows"] == 100
    assert len({batch_of(r) for r in requests}) == 1
    answered = [r for r in requests if r["status"] in (200, 400)]
    if named:
        # Each 400 names its row: it is sent alone before it is dead-lettered, the rows around it go again.
        assert [(r["status"], r["rows"]) for r in answered] == [
            (400, 100), (200, 5), (400, 1), (400, 94), (200, 54), (400, 1), (200, 39)], answered
    else:
        # Halving: at most 2·k·log2(n) + 1 answered requests for k = 2 refused rows among n = 100.
        assert len(answered) <= 2 * 2 * 7 + 1, answered
    assert agent.stop() == 0


def test_a_spool_of_schema_1_is_migrated_and_everything_in_it_delivered(emu, make_agent):
    """`Tests/Fixtures/spool-v1.db` (schema 1, see `make-spool-v1.py`): 50 rows of bronze.events in an open batch
    that failed, 30 upserts of 7 keys of bronze.users (20 in an open batch registered without dedupe), one dead
    letter."""
    agent = make_agent(emu.stream_url, start=False,
                       tables=({"name": "bronze.users", "mode": "merge", "primary_key": ["id"]},))
    shutil.copy(ROOT / "Tests" / "Fixtures" / "spool-v1.db", agent.spool_path)
    agent.start()
    wait_delivered(agent)

    assert sorted(lake_values(emu, "bronze.events", "i")) == list(range(100, 150))
    users = {r["id"]: r["v"] for r in emu.query("SELECT id, v FROM lake.bronze.users")}
    assert users == {k: max(v for v in range(30) if v % 7 == k) for k in range(7)}, users
    # Upserts of one key never went in one request, and the open batch went first, under its old id.
    requests = requests_for(emu, "bronze.users")
    assert all(r["status"] == 200 for r in requests) and sum(r["rows"] for r in requests) <= 14, requests
    entries = dead_letters(agent)
    assert len(entries) == 1 and entries[0]["records"] == [{"i": 3, "text": "delivered 3", "poison": 1}], entries
    db = sqlite3.connect(f"file:{agent.spool_path}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
        # The migrated segments kept their records apart (segment_records); delivered, both are gone.
        assert db.execute("SELECT count(*) FROM segments").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM segment_records").fetchone()[0] == 0
    finally:
        db.close()
    assert agent.stop() == 0


def test_a_spool_written_by_the_previous_release_is_migrated_and_everything_in_it_delivered(emu, make_agent):
    """`Tests/Fixtures/spool-v2.db` (schema 2, the last landed release, 16 KiB pages; see `make-spool-v2.py`):
    60 one-row requests of bronze.events, every other one with its own trace id, a 400-row request, 30 upserts
    of 7 keys of bronze.users, one dead letter. Schema 3 moves the segments into the (target, seq) keyed table;
    every record is read back as it was spooled, with its tags, and delivered once."""
    agent = make_agent(emu.stream_url, start=False,
                       tables=({"name": "bronze.users", "mode": "merge", "primary_key": ["id"]},))
    shutil.copy(ROOT / "Tests" / "Fixtures" / "spool-v2.db", agent.spool_path)
    fixture = sqlite3.connect(f"file:{agent.spool_path}?mode=ro", uri=True)
    try:
        before = [bytes(blob) for (blob,) in fixture.execute("SELECT records FROM segments ORDER BY target_id, first_seq")]
        assert fixture.execute("PRAGMA user_version").fetchone()[0] == 2
    finally:
        fixture.close()
    # Before the daemon upgrades it (a package upgraded, the service not yet restarted): `status` reads it,
    # the commands that need the new layout say what to do and change nothing.
    assert agent.cli("status").returncode == 0
    for command in (("queue", "peek"), ("dlq", "replay", "--all")):
        refused = agent.cli(*command)
        assert refused.returncode == 65, refused
        assert b"schema version 2, written by an earlier definite-agent" in refused.stderr, refused.stderr
        assert b"Restart the daemon once" in refused.stderr, refused.stderr
    agent.start()
    wait_delivered(agent)

    expected = [json.loads(line) for blob in before for line in blob.split(b"\n") if line]
    events = [r for r in expected if "i" in r]
    assert sorted(lake_values(emu, "bronze.events", "i")) == sorted(r["i"] for r in events) == \
        list(range(100, 160)) + list(range(1000, 1400))
    users = {r["id"]: r["v"] for r in emu.query("SELECT id, v FROM lake.bronze.users")}
    assert users == {k: max(v for v in range(30) if v % 7 == k) for k in range(7)}, users
    # The trace ids travelled with their rows: each odd row's request says which rows had which tags.
    traced = set()
    for r in requests_for(emu, "bronze.events"):
        tags = r.get("tags") or {} if r["status"] == 200 else {}
        traced.add(tags.get("trace_id"))  # one tag set for the whole request: its members, flat
        traced.update(run["tags"].get("trace_id") for run in tags.get("client_tags") or [])
    assert {f"t-{i}" for i in range(101, 160, 2)} <= traced, sorted(t for t in traced if t)[:5]
    assert len(dead_letters(agent)) == 1
    db = sqlite3.connect(f"file:{agent.spool_path}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
        assert db.execute("PRAGMA page_size").fetchone()[0] == 16384, "an existing spool keeps its pages"
        assert db.execute("SELECT count(*) FROM segments").fetchone()[0] == 0
        assert db.execute("SELECT count(*) FROM segment_records").fetchone()[0] == 0
        assert db.execute("SELECT sum(pending_bytes) FROM targets").fetchone()[0] == 0
    finally:
        db.close()
    assert agent.stop() == 0


def test_401_pauses_every_table_keeps_accepting_retries_slowly_then_recovers(emu, make_agent):
    emu.control(force={"status": 401, "count": 1_000_000})
    agent = make_agent(emu.stream_url)
    send(agent, [{"i": i} for i in range(100)], "bronze.a", tag="a")
    send(agent, [{"i": i} for i in range(100)], "bronze.b", tag="b")
    wait_until(lambda: all((table_status(agent, t) or {}).get("state") == "auth failing"
                           for t in ("bronze.a", "bronze.b")), 15, message="both tables 'auth failing'")
    # Intake continues while delivery is paused.
    send(agent, [{"i": i} for i in range(100, 200)], "bronze.a", tag="a2")
    send(agent, [{"i": i} for i in range(100)], "bronze.c", tag="c")
    before = len(emu.requests())
    time.sleep(2.0)
    during = emu.requests()[before:]
    assert all(r["status"] == 401 for r in emu.requests())
    # Slow retries: a handful per second at most, not a hot loop.
    assert len(during) <= 40, f"{len(during)} requests in 2 s while the key is refused"
    status = agent.status()
    assert status["pending"] == 400 and status["dead_letters"] == 0 and dead_letters(agent) == []
    assert "401" in (table_status(agent, "bronze.a")["last_error"] or "")
    assert lake_count(emu, "bronze.a") == 0

    emu.control(force=None)
    wait_delivered(agent, timeout=20)
    assert sorted(lake_values(emu, "bronze.a", "i")) == list(range(200))
    assert sorted(lake_values(emu, "bronze.b", "i")) == list(range(100))
    assert sorted(lake_values(emu, "bronze.c", "i")) == list(range(100))
    assert all(t["state"] == "idle" and t["last_error"] is None for t in agent.status()["tables"])


def start_404_scenario(make_emulator, make_agent):
    """bronze.later does not exist (no auto-create); bronze.flowing does."""
    emu = make_emulator(auto_create=False)
    emu.create_table("bronze.flowing", {"i": "BIGINT"})
    agent = make_agent(emu.stream_url)
    send(agent, [{"i": i} for i in range(50)], "bronze.later", tag="l")
    send(agent, [{"i": i} for i in range(100)], "bronze.flowing", tag="f")
    wait_until(lambda: (table_status(agent, "bronze.later") or {}).get("state") == "held: table not found", 15,
               message="bronze.later held")
    return emu, agent


def test_404_holds_that_table_only_and_recovers_once_it_exists(make_emulator, make_agent):
    emu, agent = start_404_scenario(make_emulator, make_agent)
    wait_delivered(agent, table="bronze.flowing")
    # The other table keeps flowing while bronze.later is held.
    send(agent, [{"i": i} for i in range(100, 200)], "bronze.flowing", tag="f2")
    wait_delivered(agent, table="bronze.flowing")
    assert sorted(lake_values(emu, "bronze.flowing", "i")) == list(range(200))
    later = table_status(agent, "bronze.later")
    assert later["state"] == "held: table not found" and later["pending"] == 50 and later["dead_letters"] == 0
    assert "404" in (later["last_error"] or "")
    assert dead_letters(agent) == []
    held_requests = requests_for(emu, "bronze.later")
    assert held_requests and all(r["status"] == 404 for r in held_requests)

    emu.create_table("bronze.later", {"i": "BIGINT"})
    wait_delivered(agent, timeout=20)
    assert sorted(lake_values(emu, "bronze.later", "i")) == list(range(50))
    later = table_status(agent, "bronze.later")
    assert later["state"] == "idle" and later["last_error"] is None and later["dead_letters"] == 0


def test_delivery_resumed_names_the_state_it_leaves(make_emulator, make_agent):
    """A table that backed off (503), was then held (404) and then delivered: the recovery is logged once,
    after the state it left, not the first one it entered."""
    emu = make_emulator(auto_create=False)
    emu.control(force={"status": 503, "count": 2})
    agent = make_agent(emu.stream_url)
    send(agent, [{"i": i} for i in range(10)], "bronze.later", tag="l")
    wait_until(lambda: (table_status(agent, "bronze.later") or {}).get("state") == "held: table not found", 15,
               message="bronze.later held")
    assert [r["status"] for r in emu.requests()][:3] == [503, 503, 404]  # forced answers name no table
    emu.create_table("bronze.later", {"i": "BIGINT"})
    wait_delivered(agent, timeout=20)
    assert sorted(lake_values(emu, "bronze.later", "i")) == list(range(10))
    resumed = [line for line in agent.log().splitlines() if "delivery resumed" in line]
    assert len(resumed) == 1 and "held: table not found" in resumed[0] and "backing off" not in resumed[0], resumed


def test_413_splits_and_a_single_row_still_too_large_is_dead_lettered(emu, make_agent):
    emu.control(force={"status": 413, "count": 1})
    agent = make_agent(emu.stream_url)
    send(agent, [{"i": i} for i in range(100)], chunk=100)
    wait_delivered(agent)
    assert sorted(lake_values(emu, "bronze.events", "i")) == list(range(100))
    assert dead_letters(agent) == []
    requests = emu.requests()
    assert [r["status"] for r in requests] == [413, 200, 200], requests
    assert [r["rows"] for r in requests[1:]] == [50, 50]
    assert batch_of(requests[1]) == batch_of(requests[2])

    # Every request too large: 4 rows split down to single rows, each dead-lettered.
    emu.control(force={"status": 413, "count": 1_000_000})
    send(agent, [{"i": 100 + i} for i in range(4)], chunk=4, tag="big")
    wait_delivered(agent)
    entries = dead_letters(agent)
    assert sorted(r["i"] for e in entries for r in e["records"]) == [100, 101, 102, 103]
    assert all(e["record_count"] == 1 and e["http_status"] == 413 for e in entries), entries
    assert len(emu.requests()) == 3 + 7  # 4 rows, then 2 + 2, then 1 + 1 + 1 + 1
    assert lake_count(emu, "bronze.events") == 100
    assert table_status(agent, "bronze.events")["dead_letters"] == 4


def test_422_dead_letters_the_batch_without_retrying(emu, make_agent):
    emu.control(force={"status": 422, "count": 1})
    agent = make_agent(emu.stream_url)
    send(agent, [{"i": i} for i in range(10)], chunk=10)
    wait_delivered(agent)
    entries = dead_letters(agent)
    assert len(entries) == 1, entries
    assert entries[0]["record_count"] == 10 and entries[0]["http_status"] == 422 and entries[0]["partial"] == 0
    assert [r["i"] for r in entries[0]["records"]] == list(range(10))
    assert entries[0]["reason"]
    assert [r["status"] for r in emu.requests()] == [422]
    assert lake_count(emu, "bronze.events") == 0
    assert table_status(agent, "bronze.events")["dead_letters"] == 10
    # Later rows flow.
    send(agent, [{"i": 10 + i} for i in range(5)], chunk=5, tag="later")
    wait_delivered(agent)
    assert sorted(lake_values(emu, "bronze.events", "i")) == list(range(10, 15))


def test_429_backs_off_honouring_retry_after(emu, make_agent):
    emu.control(force={"status": 429, "count": 2}, retry_after=1)
    agent = make_agent(emu.stream_url)  # retry.max is 500ms: a 1 s wait can only come from Retry-After
    started = time.time()
    send(agent, [{"i": i} for i in range(10)], chunk=10)
    wait_until(lambda: (table_status(agent, "bronze.events") or {}).get("state") == "backing off", 5,
               interval=0.02, message="state 'backing off'")
    wait_delivered(agent, timeout=15)
    requests = emu.requests()
    assert [r["status"] for r in requests] == [429, 429, 200], requests
    gaps = [b["ts"] - a["ts"] for a, b in zip(requests, requests[1:])]
    assert all(gap >= 0.9 for gap in gaps), f"retried before Retry-After elapsed: gaps {gaps}"
    assert time.time() - started < 8, "waited far longer than Retry-After"
    assert sorted(lake_values(emu, "bronze.events", "i")) == list(range(10))
    assert dead_letters(agent) == []
    assert table_status(agent, "bronze.events")["state"] == "idle"


def test_5xx_backs_off_exponentially_forever_then_delivers(emu, make_agent):
    emu.control(error_rate=1.0)
    agent = make_agent(emu.stream_url)
    send(agent, [{"i": i} for i in range(20)], chunk=20)
    wait_until(lambda: (table_status(agent, "bronze.events") or {}).get("state") == "backing off", 10,
               message="state 'backing off'")
    time.sleep(4.0)
    t = table_status(agent, "bronze.events")
    assert t["state"] == "backing off" and t["pending"] == 20 and t["dead_letters"] == 0, t
    assert "500" in t["last_error"] or "503" in t["last_error"], t
    failed = emu.requests()
    assert all(r["status"] in (500, 503) for r in failed)
    gaps = [b["ts"] - a["ts"] for a, b in zip(failed, failed[1:])]
    assert len(failed) >= 6, f"only {len(failed)} attempts in ~4 s"
    # Full-jitter exponential backoff between retry.initial (50ms) and retry.max (500ms).
    assert min(gaps) >= 0.045, gaps
    assert max(gaps) <= 0.5 + 0.3, gaps
    assert statistics.median(gaps[4:]) >= 0.1, f"backoff does not grow: {gaps}"
    assert len(failed) <= 4.5 / 0.05, "retrying in a hot loop"

    emu.control(error_rate=0.0)
    wait_delivered(agent, timeout=10)
    assert sorted(lake_values(emu, "bronze.events", "i")) == list(range(20))
    t = table_status(agent, "bronze.events")
    assert t["state"] == "idle" and t["last_error"] is None and dead_letters(agent) == []
    resumed = [line for line in agent.log().splitlines() if "delivery resumed" in line]
    assert len(resumed) == 1 and "bronze.events" in resumed[0] and "backing off" in resumed[0], resumed


def test_connection_refused_backs_off_then_delivers_when_the_api_appears(make_emulator, make_agent):
    port = free_port()
    agent = make_agent(f"http://127.0.0.1:{port}/v2/stream")
    send(agent, [{"i": i} for i in range(30)], chunk=30)
    wait_until(lambda: (table_status(agent, "bronze.events") or {}).get("state") == "backing off", 10,
               message="state 'backing off'")
    time.sleep(1.0)
    t = table_status(agent, "bronze.events")
    assert t["pending"] == 30 and t["dead_letters"] == 0 and t["last_error"], t
    emu = make_emulator("--listen", f"127.0.0.1:{port}")
    assert emu.port == port
    wait_delivered(agent, timeout=15)
    assert sorted(lake_values(emu, "bronze.events", "i")) == list(range(30))
    assert dead_letters(agent) == []


def test_timeouts_back_off_then_deliver(emu, make_agent):
    emu.control(hang_rate=1.0, hang_seconds=3)
    agent = make_agent(emu.stream_url, api={"timeout": "1s"})
    send(agent, [{"i": i} for i in range(30)], chunk=30)
    wait_until(lambda: (table_status(agent, "bronze.events") or {}).get("last_error"), 10,
               message="a recorded timeout")
    t = table_status(agent, "bronze.events")
    assert t["state"] == "backing off" and t["pending"] == 30 and t["dead_letters"] == 0, t
    emu.control(hang_rate=0.0)
    wait_delivered(agent, timeout=20)
    assert sorted(lake_values(emu, "bronze.events", "i")) == list(range(30))
    assert dead_letters(agent) == []


def test_rows_older_than_max_age_are_dead_lettered_as_expired(emu, make_agent):
    emu.control(error_rate=1.0)
    agent = make_agent(emu.stream_url, retry={"max_age": "2s"})
    sent_at = time.time()
    send(agent, [{"i": i} for i in range(10)], chunk=10)
    entries = wait_until(lambda: dead_letters(agent), 15, message="expired dead letter")
    expired_after = time.time() - sent_at
    assert 1.9 <= expired_after <= 6, f"dead-lettered {expired_after:.1f}s after being sent (max_age 2s)"
    assert len(entries) == 1, entries
    entry = entries[0]
    assert "expired" in entry["reason"] and entry["record_count"] == 10 and entry["partial"] == 0, entry
    assert [r["i"] for r in entry["records"]] == list(range(10))
    assert entry["attempts"] >= 2, entry
    t = table_status(agent, "bronze.events")
    assert t["pending"] == 0 and t["dead_letters"] == 10
    assert lake_count(emu, "bronze.events") == 0
    assert all(r["status"] in (500, 503) for r in emu.requests())
    # The target is not stuck afterwards.
    emu.control(error_rate=0.0)
    send(agent, [{"i": 100 + i} for i in range(5)], chunk=5, tag="fresh")
    wait_delivered(agent)
    assert sorted(lake_values(emu, "bronze.events", "i")) == list(range(100, 105))


# --------------------------------------------------------------------------------------------------------------
# 2. Faults: 5xx/429 and after-commit drops; every duplicate explained


def test_faults_200k_records_from_4_clients_all_land_duplicates_only_from_after_commit_drops(make_emulator, make_agent):
    emu = make_emulator(seed=7)
    # 30% of requests answered 5xx or 429 (0.2 + 0.8 × 0.125), 5% of the others dropped after committing.
    emu.control(error_rate=0.2, rate_limit_rate=0.125, retry_after=1, drop_after_commit_rate=0.05)
    agent = make_agent(emu.stream_url, batch={"max_rows": 1000})
    clients, per_client = 4, 50_000
    errors: list = []

    def client(c: int):
        try:
            send(agent, [{"client": c, "i": i, "pad": "p" * 40} for i in range(per_client)], chunk=500, tag=f"c{c}-")
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    wait_delivered(agent, timeout=110)

    total, distinct = (lambda r: (r["n"], r["d"]))(emu.query(
        "SELECT count(*) AS n, count(DISTINCT (client, i)) AS d FROM lake.bronze.events")[0])
    assert distinct == clients * per_client, "every record landed"
    duplicates = total - distinct
    assert dead_letters(agent) == [] and agent.status()["dead_letters"] == 0

    requests = emu.requests()
    statuses = [r["status"] for r in requests]
    failures = sum(1 for s in statuses if s in (429, 500, 503))
    dropped = [(n, r) for n, r in enumerate(requests) if r["dropped_after_commit"]]
    assert dropped, "no after-commit drop happened: the test proves nothing (rerun with another seed)"
    assert failures >= 0.15 * len(requests), (failures, len(requests))
    # Each dropped request's batch was sent again later, and its rows are the only extra copies.
    explained = 0
    for n, r in dropped:
        batch = batch_of(r)
        assert batch, r
        again = [later for later in requests[n + 1:] if batch_of(later) == batch]
        assert again, f"batch {batch} dropped after commit was never re-sent"
        assert any(later["status"] == 200 for later in again), f"batch {batch} never got a 200"
        assert all(later["rows"] == r["rows"] for later in again), "a re-sent batch changed its rows"
        explained += r["rows"]
    # Nothing else was written twice: a batch committed with a 200 once only.
    committed = [batch_of(r) for r in requests if r["status"] == 200]
    assert len(committed) == len(set(committed)), "a batch got two 200s"
    assert duplicates == explained, f"{duplicates} extra copies in the lake, {explained} explained by drops"
    print(f"requests {len(requests)}, failed {failures}, dropped after commit {len(dropped)}, duplicates {duplicates}")


# --------------------------------------------------------------------------------------------------------------
# 3. kill -9 during delivery


def test_kill9_during_delivery_loses_nothing_acknowledged(emu, make_agent):
    emu.control(latency_ms=300)
    agent = make_agent(emu.stream_url, batch={"max_rows": 200, "concurrency": 2})
    acked: set[int] = set()
    kills_mid_delivery = 0
    kill_times = []
    next_id = 0
    for round_ in range(5):
        # Some rows acknowledged before the kill, plus a sender still running when it lands.
        rows = [{"i": next_id + k} for k in range(2000)]
        next_id += 2000
        send(agent, rows, chunk=200, tag=f"r{round_}-")
        acked.update(r["i"] for r in rows)
        late = [{"i": next_id + k} for k in range(2000)]
        next_id += 2000
        replies: list = []
        sender = threading.Thread(target=lambda: replies.extend(
            pipeline(agent, [envelope(late[k:k + 100], "bronze.events", f"late{round_}-{k}")
                             for k in range(0, len(late), 100)])), daemon=True)
        sender.start()
        time.sleep(random.uniform(0.3, 1.2))
        kill_times.append(time.time())
        agent.kill9()
        sender.join(timeout=30)
        for reply in replies:
            if reply and reply.get("ok"):
                k = int(reply["ack"].split("-")[1])
                acked.update(r["i"] for r in late[k:k + 100])
        if agent.status()["pending"] > 0:
            kills_mid_delivery += 1
        time.sleep(1.0)  # requests finishing now were in flight at the kill
        agent.start()
    emu.control(latency_ms=0)
    wait_delivered(agent, timeout=60)

    requests = emu.requests()
    in_flight = sum(1 for k in kill_times if any(k < r["ts"] < k + 0.9 for r in requests))
    landed = lake_values(emu, "bronze.events", "i")
    missing = acked - set(landed)
    assert not missing, f"{len(missing)} acknowledged rows missing from the lake, e.g. {sorted(missing)[:10]}"
    assert kills_mid_delivery == 5, "every kill must land with rows still pending"
    assert in_flight >= 3, f"only {in_flight} of 5 kills landed while a request was in flight"
    assert dead_letters(agent) == []
    # At-least-once: extra copies come only from whole batches committed more than once.
    commits: dict[str, list[int]] = {}
    for r in requests:
        if r["successful_rows"]:
            commits.setdefault(batch_of(r), []).append(r["rows"])
    assert all(len(set(sizes)) == 1 for sizes in commits.values()), "a batch changed its rows between attempts"
    duplicates = len(landed) - len(set(landed))
    assert duplicates == sum((len(s) - 1) * s[0] for s in commits.values())
    assert duplicates <= 5 * 2 * 200, duplicates
    print(f"acked {len(acked)}, landed {len(landed)}, duplicates {duplicates}, kills mid-request {in_flight}")


# --------------------------------------------------------------------------------------------------------------
# 4. Merge order


def test_merge_keeps_each_keys_last_write_with_4_concurrent_clients(make_emulator, make_agent):
    emu = make_emulator(seed=3)  # seed 0 draws no failure in the first 20 requests
    emu.control(error_rate=0.25)  # retries must not reorder upserts
    agent = make_agent(emu.stream_url, default_table="bronze.kv", batch={"max_rows": 50},
                       tables=({"name": "bronze.kv", "mode": "merge", "primary_key": ["id"]},))
    clients, keys_per_client, versions = 4, 25, 10
    errors: list = []

    def client(c: int):
        keys = list(range(c * keys_per_client, (c + 1) * keys_per_client))
        next_version = {k: 0 for k in keys}
        order = [k for k in keys for _ in range(versions)]
        random.shuffle(order)
        try:
            with agent.connect() as conn:
                for n, k in enumerate(order):
                    v = next_version[k]
                    next_version[k] += 1
                    reply = conn.request(json.dumps({"id": k, "version": v, "value": f"{k}-{v}", "client": c,
                                                     "ack": f"{c}:{n}"}))
                    assert reply and reply["ok"], reply
                    if n % 20 == 0:
                        time.sleep(random.uniform(0, 0.03))
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    wait_delivered(agent, timeout=60)

    rows = emu.query("SELECT id, version, value, client FROM lake.bronze.kv ORDER BY id")
    assert [r["id"] for r in rows] == list(range(100))
    wrong = [r for r in rows if r["version"] != versions - 1 or r["value"] != f"{r['id']}-{versions - 1}"]
    assert not wrong, f"keys not holding their last write: {wrong[:5]}"
    assert all(r["client"] == r["id"] // keys_per_client for r in rows)
    assert dead_letters(agent) == []
    requests = requests_for(emu, "bronze.kv")
    assert not [r for r in requests if r["status"] == 400], "a batch was refused (duplicate keys not deduped?)"
    batches = len({batch_of(r) for r in requests if r["status"] == 200})
    retried = sum(1 for r in emu.requests() if r["status"] in (500, 503))
    assert batches > 3 and retried > 0, f"{batches} batches, {retried} retries: too few to test ordering"
    print(f"merge: {batches} batches, {retried} failed attempts retried")


# --------------------------------------------------------------------------------------------------------------
# 5. Poison rows


def run_poison(emu: Emulator, make_agent, good: int = 100_000, poison: int = 20):
    """`good` rows and `poison` rows carrying the reject marker (whole request refused with 400), spread at
    random; returns (agent, poison ids)."""
    emu.control(reject_marker="poison", reject_marker_mode="request")
    agent = make_agent(emu.stream_url, batch={"max_rows": 5000})
    total = good + poison
    poison_ids = set(random.sample(range(total), poison))
    rows = [{"n": n, "pad": "q" * 30, **({"poison": True} if n in poison_ids else {})} for n in range(total)]
    send(agent, rows, chunk=1000)
    wait_delivered(agent, timeout=90)
    return agent, poison_ids


def check_poison_dead_lettered(emu: Emulator, agent: Agent, good: int, poison_ids: set[int]):
    entries = dead_letters(agent)
    assert sorted(r["n"] for e in entries for r in e["records"]) == sorted(poison_ids)
    assert all(e["record_count"] == 1 and e["http_status"] == 400 for e in entries)
    assert agent.status()["dead_letters"] == len(poison_ids)
    stats = emu.query("SELECT count(*) AS n, count(DISTINCT n) AS d FROM lake.bronze.events")[0]
    assert stats == {"n": good, "d": good}, stats
    landed_poison = emu.scalar("SELECT count(*) FROM lake.bronze.events WHERE n IN ("
                               + ",".join(map(str, poison_ids)) + ")")
    assert landed_poison == 0


def test_poison_rows_are_dead_lettered_exactly_and_all_others_land(emu, make_agent):
    agent, poison_ids = run_poison(emu, make_agent)
    check_poison_dead_lettered(emu, agent, 100_000, poison_ids)


def test_dlq_replay_all_lands_poison_rows_once_the_api_accepts_them(emu, make_agent):
    agent, poison_ids = run_poison(emu, make_agent)
    check_poison_dead_lettered(emu, agent, 100_000, poison_ids)
    listed = agent.cli("dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr.decode()
    assert sorted(e["id"] for e in json.loads(listed.stdout)) == [e["id"] for e in dead_letters(agent)]

    emu.control(reject_marker=None)
    replay = agent.cli("dlq", "replay", "--all")
    assert replay.returncode == 0, replay.stderr.decode()
    assert "20" in replay.stdout.decode(), replay.stdout
    wait_delivered(agent, timeout=30)
    assert dead_letters(agent) == [] and agent.status()["dead_letters"] == 0
    stats = emu.query("SELECT count(*) AS n, count(DISTINCT n) AS d, count(poison) AS p FROM lake.bronze.events")[0]
    assert stats == {"n": 100_020, "d": 100_020, "p": 20}, stats
    assert json.loads(agent.cli("dlq", "list", "--json").stdout) == []


def test_rows_replayed_into_an_idle_table_go_before_a_record_that_arrives_before_the_next_poll(emu, make_agent):
    """`dlq replay` puts rows back from another process; the daemon sees them at its next poll (every 5 s). A
    record for the same table arriving first brings the idle table back: delivery must start where the table's
    rows were all resolved, before the replayed ones. Were it to start at the new record, that record would be
    written first and the replayed rows (earlier in the log) would overwrite it, on a merge table, when the
    poll found them."""
    agent = make_agent(emu.stream_url)

    def merge_line(rows: list[dict], ack: str) -> bytes:
        config = {"table": "bronze.replayed", "mode": "merge", "primary_key": ["id"]}
        return json.dumps({"data": rows, "config": config, "ack": ack}, separators=(",", ":")).encode()

    emu.control(force={"status": 422, "count": 1})
    assert pipeline(agent, [merge_line([{"id": i, "v": "replayed"} for i in range(10)], "r")])[0]["ok"]
    wait_until(lambda: agent.status()["dead_letters"] == 10, timeout=30, message="the rows dead-lettered")
    wait_delivered(agent, table="bronze.replayed")
    # Delivery forgets an idle table when it next looks for work (another table's rows make it look).
    send(agent, [{"i": 0}], "bronze.other", chunk=1, tag="o")
    wait_delivered(agent, table="bronze.other")
    replay = agent.cli("dlq", "replay", "--all")
    assert replay.returncode == 0 and b"10 rows" in replay.stdout, (replay.stdout, replay.stderr)
    assert pipeline(agent, [merge_line([{"id": 5, "v": "new"}], "n")])[0]["ok"]
    wait_delivered(agent, table="bronze.replayed", timeout=30)
    assert agent.status()["dead_letters"] == 0
    rows = {r["id"]: r["v"] for r in emu.query("SELECT id, v FROM lake.bronze.replayed")}
    assert rows == {i: ("new" if i == 5 else "replayed") for i in range(10)}, rows


# --------------------------------------------------------------------------------------------------------------
# dlq / queue CLI against the dead_letters table


def test_dlq_list_show_export_purge_and_replay_match_the_dead_letters_table(emu, make_agent):
    agent = make_agent(emu.stream_url)
    emu.control(force={"status": 422, "count": 1})
    send(agent, [{"i": i} for i in range(10)], "bronze.a", chunk=10, tag="a")
    wait_delivered(agent)
    emu.control(reject_marker="bad", reject_marker_mode="request")
    b_rows = [{"i": i, **({"bad": 1} if i in (3, 7) else {})} for i in range(20)]
    send(agent, b_rows, "bronze.b", chunk=20, tag="b")
    wait_delivered(agent)
    direct = dead_letters(agent)
    assert len(direct) == 3

    # list --json: the same entries as the table.
    listed = agent.cli("dlq", "list", "--json")
    assert listed.returncode == 0, listed.stderr.decode()
    entries = json.loads(listed.stdout)
    assert [e["id"] for e in entries] == [d["id"] for d in direct]
    for e, d in zip(entries, direct):
        assert e["table"] == d["table_name"] and e["reason"] == d["reason"], (e, d)
        assert e["status"] == d["http_status"] and e["rows"] == d["record_count"], (e, d)
        failed_at = datetime.fromisoformat(e["failed_at"].replace("Z", "+00:00"))
        assert abs(failed_at.timestamp() - d["last_failed_at"]) < 2, (e, d)
    only_b = json.loads(agent.cli("dlq", "list", "--table", "bronze.b", "--json").stdout)
    assert [e["id"] for e in only_b] == [d["id"] for d in direct if d["table_name"] == "bronze.b"]
    human = agent.cli("dlq", "list")
    assert human.returncode == 0 and b"bronze.a" in human.stdout and b"422" in human.stdout

    # export: NDJSON rows.
    exported = agent.cli("dlq", "export", "--table", "bronze.b")
    assert exported.returncode == 0
    assert sorted(json.loads(line)["i"] for line in exported.stdout.splitlines() if line.strip()) == [3, 7]
    everything = agent.cli("dlq", "export")
    assert len([line for line in everything.stdout.splitlines() if line.strip()]) == 12

    # purge needs --yes; then removes exactly the chosen entry.
    entry_b3 = next(d for d in direct if d["table_name"] == "bronze.b" and d["records"][0]["i"] == 3)
    refused = agent.cli("dlq", "purge", "--id", str(entry_b3["id"]))
    assert refused.returncode != 0 and len(dead_letters(agent)) == 3
    purged = agent.cli("dlq", "purge", "--id", str(entry_b3["id"]), "--yes")
    assert purged.returncode == 0, purged.stderr.decode()
    assert [d["id"] for d in dead_letters(agent)] == [d["id"] for d in direct if d["id"] != entry_b3["id"]]

    # replay --table: the 422'd batch goes back in the queue and lands (the forced 422 is used up).
    replayed = agent.cli("dlq", "replay", "--table", "bronze.a")
    assert replayed.returncode == 0, replayed.stderr.decode()
    wait_delivered(agent)
    assert sorted(lake_values(emu, "bronze.a", "i")) == list(range(10))
    assert dead_letters(agent, "bronze.a") == [] and table_status(agent, "bronze.a")["dead_letters"] == 0

    # replay --id with the marker cleared: i = 7 lands; i = 3 was purged for good.
    emu.control(reject_marker=None)
    remaining = dead_letters(agent)
    assert len(remaining) == 1 and remaining[0]["records"][0]["i"] == 7
    assert agent.cli("dlq", "replay", "--id", str(remaining[0]["id"])).returncode == 0
    wait_delivered(agent)
    assert sorted(lake_values(emu, "bronze.b", "i")) == [i for i in range(20) if i != 3]
    assert dead_letters(agent) == [] and agent.status()["dead_letters"] == 0
    assert json.loads(agent.cli("dlq", "list", "--json").stdout) == []


def test_dlq_show_prints_the_entry_then_its_rows(emu, make_agent):
    agent = make_agent(emu.stream_url)
    emu.control(force={"status": 422, "count": 1})
    send(agent, [{"i": i} for i in range(10)], "bronze.a", chunk=10, tag="a")
    wait_delivered(agent)
    (entry,) = dead_letters(agent)
    shown = agent.cli("dlq", "show", str(entry["id"]))  # stdout is a pipe, as in `dlq show 1 | less`
    assert shown.returncode == 0, shown.stderr.decode()
    text = shown.stdout.decode()
    assert "422" in text and entry["reason"] in text and "bronze.a" in text
    header, _, rows = text.partition("rows follow:")
    assert rows, f"no 'rows follow:' line: {text!r}"
    shown_rows = [json.loads(line) for line in rows.splitlines() if line.strip()]
    assert shown_rows == entry["records"], f"rows not printed after the header: {text!r}"
    missing = agent.cli("dlq", "show", "999999")
    assert missing.returncode != 0 and b"999999" in missing.stderr


def test_dlq_maintenance_command_while_the_daemon_runs_loses_nothing_acknowledged(emu, make_agent):
    """A `dlq` command that writes (here a purge of nothing) runs while the daemon spools; rows the daemon
    acknowledges afterwards must be in the spool file, visible to other processes and surviving kill -9."""
    emu.control(force={"status": 503, "count": 1_000_000})  # keep everything queued
    agent = make_agent(emu.stream_url)
    send(agent, [{"i": i} for i in range(10)], chunk=10, tag="before")
    wait_until(lambda: (table_status(agent, "bronze.events") or {}).get("state") == "backing off", 10,
               message="state 'backing off'")
    purged = agent.cli("dlq", "purge", "--all", "--yes")
    assert purged.returncode == 0, purged.stderr.decode()
    send(agent, [{"i": 10 + i} for i in range(10)], chunk=10, tag="after")
    seen_by_status = agent.status()["pending"]
    agent.kill9()
    spooled = sorted(r["i"] for r in agent.spooled_records("bronze.events"))
    assert spooled == list(range(20)), (
        f"after kill -9 the spool holds {spooled}; `status` had seen {seen_by_status} pending "
        "(acknowledged rows written after the dlq command were lost)")
    assert seen_by_status == 20
    agent.start()
    emu.control(force=None)
    wait_delivered(agent)
    assert sorted(lake_values(emu, "bronze.events", "i")) == list(range(20))


def test_dlq_cli_queue_peek_shows_rows_held_by_a_404(make_emulator, make_agent):
    emu, agent = start_404_scenario(make_emulator, make_agent)
    peek = agent.cli("queue", "peek", "--table", "bronze.later", "--limit", "3", "--json")
    assert peek.returncode == 0, peek.stderr.decode()
    lines = [json.loads(line) for line in peek.stdout.splitlines() if line.strip()]
    assert len(lines) == 3, lines
    assert [line["record"]["i"] for line in lines] == [0, 1, 2]
    for line in lines:
        assert line["table"] == "bronze.later" and line["batch"] and line["attempts"] >= 1, line
        assert line["last_status"] == 404, line
    assert agent.cli("queue", "peek", "--table", "bronze.later").returncode == 0


def test_dlq_show_and_list_give_the_requests_tags(emu, make_agent):
    """`dlq show` ("everything known") left out the requests' config.tags, which were kept and replayed: an
    operator could not find the trace of a failed request."""
    emu.control(reject_marker="bad", reject_marker_mode="row")
    agent = make_agent(emu.stream_url)
    lines = [json.dumps({"data": [{"i": 1, "bad": 1}], "config": {"table": "bronze.traced", "tags": {"trace": "abc-123"}},
                         "ack": "1"}).encode()]
    assert all(r and r.get("ok") for r in pipeline(agent, lines))
    wait_until(lambda: dead_letters(agent), 30, message="the dead letter")
    entry = json.loads(agent.cli("dlq", "list", "--json").stdout)[0]
    assert entry["tags"] == [{"from": 0, "to": 1, "tags": {"trace": "abc-123"}}], entry
    shown = agent.cli("dlq", "show", str(entry["id"])).stdout.decode()
    assert 'tags:        {"trace":"abc-123"}\n' in shown, shown


def test_an_api_slower_than_the_timeout_is_waited_for_longer_not_sent_the_batch_again_and_again(emu, make_agent):
    """The API answers after 2.5 s and writes the rows all the same; [api] timeout is 1 s. Each attempt used
    to wait 1 s, time out and go again after the backoff: the batch written again and again (a probe counted 50
    copies in 15 s) until retry.max_age. Each timeout in a row now doubles the next wait (1, 2, 4 s)."""
    emu.control(latency_ms=2500)
    agent = make_agent(emu.stream_url, api={"timeout": "1s"})
    send(agent, [{"i": i} for i in range(10)], chunk=10)
    wait_delivered(agent, timeout=30)
    values = lake_values(emu, "bronze.events", "i")
    assert sorted(set(values)) == list(range(10)) and len(values) <= 40, sorted(values)  # 30: two timeouts, then the answer
    assert "the next attempt waits 2 times [api] timeout for its answer" in agent.log(), agent.log()[-2000:]


def test_rows_refused_one_at_a_time_hold_the_table_and_sigusr1_ends_the_hold(emu, make_agent):
    """A table written a row at a time, each refused (a schema change): the batches ended with their row and
    the table went idle between them, so it was never held, every row went to the dead letters and
    `status --check` said ok. After 8 it is held, `--check` says so, and SIGUSR1 ends the hold in `status` too."""
    emu.control(reject_marker="bad", reject_marker_mode="request")
    agent = make_agent(emu.stream_url, retry={"initial": "30s", "max": "60s"})
    for i in range(8):
        send(agent, [{"i": i, "bad": 1}], chunk=1, tag=f"r{i}")
        wait_until(lambda: len(dead_letters(agent)) == i + 1, 15, message=f"row {i} dead-lettered")
    held = wait_until(lambda: table_status(agent, "bronze.events")["state"] == "held: the API refuses every row", 10,
                      message="the table held")
    assert held
    check = agent.cli("status", "--check")
    assert check.returncode == 1 and "bronze.events: held: the API refuses every row" in check.stdout.decode(), check.stdout
    agent.process.send_signal(signal.SIGUSR1)
    wait_until(lambda: table_status(agent, "bronze.events")["state"] == "idle", 10, message="the hold ended in status")
    assert agent.cli("status", "--check").returncode == 0
