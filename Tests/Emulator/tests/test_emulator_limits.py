"""The documented limits, with the definitions in stream_emulator/limits.py."""

import gzip
import json
import zlib

from emu_helpers import check_shape, count, fq, table_exists
from stream_emulator import limits


def test_limit_constants():
    assert limits.MAX_BODY_BYTES == 10_000_000
    assert limits.MAX_ROWS == 50_000
    assert limits.MAX_FIELD_BYTES == 1_000_000
    assert limits.MAX_DEPTH == 10


def test_depth_definition():
    assert limits.depth(5) == 0 and limits.depth("x") == 0
    assert limits.depth({}) == 1 and limits.depth({"a": 1}) == 1
    assert limits.depth({"a": [1]}) == 2 and limits.depth({"a": [{}]}) == 3
    for n in range(0, 14):
        v = 1
        for _ in range(n):
            v = [v]
        assert limits.depth(v) == n
        assert limits.depth_exceeds(v, 10) == (n > 10)


def nest(levels: int):
    """A row of depth `levels` (the row object counts as 1)."""
    v = 1
    for _ in range(levels - 1):
        v = {"x": v}
    return {"id": 1, "deep": v}


def test_depth_10_ok_11_rejected(emu, table):
    assert limits.depth(nest(10)) == 10 and limits.depth(nest(11)) == 11
    r = emu.post([nest(10), nest(11)], {"table": table})
    b = r.json()
    assert r.status_code == 200 and (b["successful_rows"], b["rejected_rows"]) == (1, 1)
    assert b["errors"][0].startswith("row 1:") and "depth" in b["errors"][0]
    assert count(emu, table) == 1


def test_field_size_limit(emu, table):
    ok = "a" * (1_000_000 - 2)      # 999,998 chars + 2 quotes = 1,000,000 bytes
    big = "a" * (1_000_000 - 1)     # 1,000,001 bytes encoded
    multibyte = "é" * 500_000       # 1,000,000 UTF-8 bytes + quotes
    arr = list(range(200_000))      # compact JSON > 1 MB
    r = emu.post([{"id": 0, "s": ok}, {"id": 1, "s": big}, {"id": 2, "s": multibyte},
                  {"id": 3, "s": json.dumps(list(range(10)))}, {"id": 4, "a": arr}], {"table": table})
    b = r.json()
    assert r.status_code == 200, r.text
    assert (b["successful_rows"], b["rejected_rows"]) == (2, 3), b
    assert [e.split(":")[0] for e in b["errors"]] == ["row 1", "row 2", "row 4"]
    assert sorted(x["id"] for x in emu.query(f"SELECT id FROM {fq(table)}")) == [0, 3]


def test_body_over_10mb_413(emu, table):
    pad = "x" * 1000
    rows = [{"p": pad}] * 10_000
    body = json.dumps({"data": rows, "config": {"table": table}}).encode()
    assert len(body) > 10_000_000
    r = emu.post(body=body)
    assert r.status_code == 413
    check_shape(r.json())
    assert not table_exists(emu, table)


def test_body_exactly_10mb_ok(emu, table):
    head = json.dumps({"config": {"table": table}, "data": [{"p": ""}]}).encode()
    pad = 10_000_000 - len(head)
    body = json.dumps({"config": {"table": table}, "data": [{"p": "x" * pad}]}).encode()
    assert len(body) == 10_000_000
    # one field of ~10 MB: the body is accepted, the row is rejected by the field limit
    r = emu.post(body=body)
    assert r.status_code == 200 and r.json()["rejected_rows"] == 1


def test_gzip_bomb_413_without_inflating(emu, table):
    # ~11 MB of JSON whitespace compresses to ~11 KB.
    inner = b'{"data":[{"id":1}],"config":{"table":"' + table.encode() + b'"}}' + b" " * 11_000_000
    comp = gzip.compress(inner, 9)
    assert len(comp) < 100_000
    r = emu.post(body=comp, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 413
    assert not table_exists(emu, table)


def test_gzip_just_under_limit_ok(emu, table):
    inner = b'{"data":[{"id":1}],"config":{"table":"' + table.encode() + b'"}}'
    inner += b" " * (10_000_000 - len(inner))
    co = zlib.compressobj(9, zlib.DEFLATED, 31)
    comp = co.compress(inner) + co.flush()
    r = emu.post(body=comp, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 200 and count(emu, table) == 1


def test_more_than_50000_rows_413(emu, table):
    r = emu.post([{}] * 50_001, {"table": table})
    assert r.status_code == 413
    check_shape(r.json())
    r = emu.post(body=b"{}\n" * 50_001, ndjson=True, params={"table": table})
    assert r.status_code == 413
    assert not table_exists(emu, table)


def test_exactly_50000_rows_ok(emu, table):
    r = emu.post(body=b'{"i":1}\n' * 50_000, ndjson=True, params={"table": table}, gzip=True)
    assert r.status_code == 200 and r.json()["successful_rows"] == 50_000
    assert count(emu, table) == 50_000
