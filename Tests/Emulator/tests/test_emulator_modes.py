"""Startup modes: --no-auto-create, --null (with a throughput smoke figure), restart."""

import gzip
import http.client
import json
import random
import string
import threading
import time

import pytest

from emu_helpers import check_shape, count
from harness import Emulator


@pytest.fixture(scope="module")
def strict():
    e = Emulator("--namespaces", "bronze,silver", auto_create=False, quiet=True)
    yield e
    e.stop()


def test_no_auto_create_unknown_table_404(strict):
    r = strict.post([{"id": 1}], {"table": "bronze.nothere"})
    assert r.status_code == 404
    check_shape(r.json())
    assert strict.scalar("SELECT count(*) FROM information_schema.tables WHERE table_catalog='lake'") == 0


def test_no_auto_create_admin_table_is_writable(strict):
    strict.create_table("silver.known", {"id": "BIGINT", "name": "VARCHAR"})
    r = strict.post([{"id": 1, "name": "a", "extra": True}], {"table": "silver.known"})
    assert r.status_code == 200
    # new keys still add columns on an existing table
    assert strict.query("SELECT id, name, extra FROM lake.silver.known") == [{"id": 1, "name": "a", "extra": True}]


def test_namespaces_flag(strict):
    names = {r["schema_name"] for r in strict.query(
        "SELECT schema_name FROM information_schema.schemata WHERE catalog_name='lake'")}
    assert {"bronze", "silver"} <= names


def test_restart_keeps_lake(tmp_path):
    lake = str(tmp_path / "lake")
    with Emulator(lake_dir=lake, quiet=True) as e:
        assert e.post([{"id": 1}], {"table": "bronze.keep"}).status_code == 200
    with Emulator(lake_dir=lake, quiet=True) as e:
        assert count(e, "bronze.keep") == 1
        assert any(x["table"] == "lake.bronze.keep" for x in e.requests())


# ---------------------------------------------------------------------------
# Null mode
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def null_emu():
    e = Emulator(null=True, quiet=True)
    yield e
    e.stop()


def test_null_mode_counts_and_writes_nothing(null_emu):
    r = null_emu.post([{"id": 1}, {"id": 2}], {"table": "bronze.events", "wait": True})
    b = r.json()
    assert r.status_code == 200
    check_shape(b)
    assert b["success"] is True and (b["accepted"], b["successful_rows"]) == (2, 2)
    r = null_emu.post([{"id": 1}] * 3, ndjson=True, gzip=True, params={"table": "bronze.events"})
    assert r.status_code == 200 and r.json()["accepted"] == 3
    assert null_emu.scalar("SELECT count(*) FROM information_schema.tables WHERE table_catalog='lake'") == 0
    # envelope rules still apply
    assert null_emu.post([{"id": 1}], {"table": "bronze.events"}, api_key="x").status_code == 401
    assert null_emu.post([{"id": 1}], {"table": "bronze.events", "mode": "merge"}).status_code == 422
    assert null_emu.post([{"id": 1}], {"table": "gold.events"}).status_code == 404
    assert null_emu.post([{}] * 50_001, {"table": "bronze.events"}).status_code == 413
    assert null_emu.stats()["rows_received"] >= 5


def make_batch(n_rows: int, seed: int, ndjson: bool) -> bytes:
    rnd = random.Random(seed)
    rows = []
    for i in range(n_rows):
        rows.append({
            "event_id": f"{seed:04d}-{i:08d}",
            "ts": "2024-01-15T10:%02d:%02d.%03dZ" % (rnd.randrange(60), rnd.randrange(60), rnd.randrange(1000)),
            "user": "user_%d" % rnd.randrange(10**6),
            "event": rnd.choice(["page_view", "click", "purchase", "signup"]),
            "path": "/products/%d" % rnd.randrange(10000),
            "ref": "".join(rnd.choices(string.ascii_lowercase, k=12)),
            "session": "%024x" % rnd.getrandbits(96),
            "value": round(rnd.random() * 100, 3),
            "ok": rnd.random() < 0.5,
        })
    if ndjson:
        raw = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in rows)
    else:
        raw = json.dumps({"data": rows, "config": {"table": "bronze.events"}}, separators=(",", ":")).encode()
    return raw


def run_load(emu, batches, n_requests, n_conns, path):
    done = [0]
    lock = threading.Lock()

    def worker(k):
        c = http.client.HTTPConnection(emu.host, emu.port, timeout=60)
        sent = 0
        for j in range(k, n_requests, n_conns):
            body, nrows, ctype = batches[j % len(batches)]
            c.request("POST", path, body=body, headers={
                "Authorization": "Bearer test-key", "Content-Type": ctype, "Content-Encoding": "gzip"})
            resp = c.getresponse()
            data = resp.read()
            assert resp.status == 200, data
            sent += nrows
        c.close()
        with lock:
            done[0] += sent

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(n_conns)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return done[0], time.perf_counter() - t


def test_null_mode_throughput_smoke(null_emu, capsys):
    """Prints rows/s of gzip'd JSON (and NDJSON), 10,000-row batches of ~200-byte rows."""
    n = 10_000
    results = {}
    for fmt in ("json", "ndjson"):
        batches = []
        for s in range(4):
            raw = make_batch(n, s, fmt == "ndjson")
            batches.append((gzip.compress(raw, 6), n, "application/x-ndjson" if fmt == "ndjson" else "application/json"))
        row_bytes = len(raw) / n
        path = "/v2/stream" + ("?table=bronze.events" if fmt == "ndjson" else "")
        run_load(null_emu, batches, 4, 1, path)  # warm-up
        for conns in (1, 2):
            rows, secs = run_load(null_emu, batches, 60, conns, path)
            results[(fmt, conns)] = rows / secs
        with capsys.disabled():
            print(f"\n[null-mode throughput] {fmt}: ~{row_bytes:.0f} B/row, {n} rows/batch, gzip: "
                  + ", ".join(f"{c} conn: {results[(fmt, c)]:,.0f} rows/s" for c in (1, 2)))
    assert all(v > 0 for v in results.values())


def test_real_mode_write_throughput_smoke(emu_session, capsys):
    """Prints rows/s of real DuckLake appends (10,000-row gzip'd JSON batches). No assertion on speed."""
    emu_session.reset_faults()
    n = 10_000
    batches = []
    for s in range(3):
        raw = make_batch(n, 100 + s, False).replace(b'"bronze.events"', b'"bronze.tput_real"')
        batches.append((gzip.compress(raw, 6), n, "application/json"))
    rows, secs = run_load(emu_session, batches, 6, 1, "/v2/stream")
    assert count(emu_session, "bronze.tput_real") == rows
    with capsys.disabled():
        print(f"\n[real-mode throughput] json: {n} rows/batch, gzip, 1 conn: {rows / secs:,.0f} rows/s")
