"""Envelope, auth, content types, compression, table names, admin endpoints."""

import gzip
import json
import os
import re

import requests

from emu_helpers import check_shape, count, fq, table_exists


def test_append_json_array_and_response_shape(emu, table):
    r = emu.post([{"id": 1, "name": "a"}, {"id": 2, "name": "b"}], {"table": table})
    assert r.status_code == 200
    b = r.json()
    check_shape(b)
    assert b["success"] is True
    assert re.match(r"^req_[0-9a-f]{12}$", b["request_id"])
    assert re.match(r"^st_[0-9a-f]{12}$", b["stream_id"])
    assert b["table"] == fq(table)
    assert (b["accepted"], b["successful_rows"], b["rejected_rows"]) == (2, 2, 0)
    assert isinstance(b["partitions"], list) and all(isinstance(p, str) for p in b["partitions"])
    assert b["snapshot_id"] is None  # wait defaults to false
    assert b["warnings"] == [] and b["errors"] == []
    assert emu.query(f"SELECT id, name FROM {fq(table)} ORDER BY id") == [
        {"id": 1, "name": "a"}, {"id": 2, "name": "b"}]


def test_single_object_data(emu, table):
    r = emu.post({"id": 7}, {"table": table})
    assert r.status_code == 200 and r.json()["successful_rows"] == 1
    assert emu.query(f"SELECT id FROM {fq(table)}") == [{"id": 7}]


def test_wait_returns_real_snapshot_id(emu, table):
    r = emu.post([{"id": 1}], {"table": table, "wait": True})
    snap = r.json()["snapshot_id"]
    assert isinstance(snap, int)
    assert snap == emu.scalar("SELECT id FROM lake.current_snapshot()")
    r2 = emu.post([{"id": 2}], {"table": table, "wait": True})
    assert r2.json()["snapshot_id"] > snap


def test_missing_auth_401(emu, table):
    r = emu.post([{"id": 1}], {"table": table}, api_key=None)
    assert r.status_code == 401
    b = r.json()
    check_shape(b)
    assert b["success"] is False and b["errors"]
    assert not table_exists(emu, table)


def test_wrong_key_401(emu, table):
    r = emu.post([{"id": 1}], {"table": table}, api_key="nope")
    assert r.status_code == 401
    check_shape(r.json())
    r = emu.post([{"id": 1}], {"table": table}, headers={"Authorization": "Basic dGVzdC1rZXk6"})
    assert r.status_code == 401
    assert not table_exists(emu, table)


def test_several_keys_and_env_keys(emu, table):
    for key in ("test-key", "second-key", "env-key-1", "env-key-2"):
        assert emu.post([{"id": 1}], {"table": table}, api_key=key).status_code == 200
    assert count(emu, table) == 4


def test_invalid_json_400(emu, table):
    r = emu.post(body=b'{"data": [{"id": 1}', headers={"Content-Type": "application/json"})
    assert r.status_code == 400
    check_shape(r.json())
    assert r.json()["success"] is False


def test_body_not_object_400(emu):
    assert emu.post(body=b"[1,2]").status_code == 400


def test_data_wrong_type_400_and_missing_data_422(emu, table):
    assert emu.post(5, {"table": table}).status_code == 400
    r = emu.post(body=json.dumps({"config": {"table": table}}).encode())
    assert r.status_code == 422
    assert not table_exists(emu, table)


def test_non_object_row_rejected(emu, table):
    r = emu.post([{"id": 1}, 5, "x", [1], None, {"id": 2}], {"table": table})
    b = r.json()
    assert r.status_code == 200
    assert (b["accepted"], b["successful_rows"], b["rejected_rows"]) == (6, 2, 4)
    assert b["success"] is True
    assert len(b["errors"]) == 4 and b["errors"][0].startswith("row 1:")
    assert count(emu, table) == 2


def test_all_rows_rejected_is_200_success_false(emu, table):
    r = emu.post([1, 2], {"table": table})
    assert r.status_code == 200
    b = r.json()
    assert b["success"] is False and b["rejected_rows"] == 2 and b["successful_rows"] == 0
    assert not table_exists(emu, table)


def test_empty_batch_success(emu, table):
    r = emu.post([], {"table": table})
    assert r.status_code == 200
    assert r.json()["success"] is True and r.json()["accepted"] == 0


def test_ndjson_config_from_query(emu, table):
    rows = [{"id": i, "v": f"x{i}"} for i in range(5)]
    r = emu.post(rows, ndjson=True, params={"table": table, "wait": True, "tags": {"batch_id": "nd-1"}})
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["successful_rows"] == 5 and isinstance(b["snapshot_id"], int)
    assert count(emu, table) == 5
    log = [e for e in emu.requests() if e["request_id"] == b["request_id"]]
    assert log and log[0]["tags"] == {"batch_id": "nd-1"}


def test_ndjson_blank_lines_and_missing_table(emu, table):
    body = b'{"id":1}\n\n{"id":2}\r\n'
    r = emu.post(body=body, ndjson=True, params={"table": table})
    assert r.status_code == 200 and r.json()["successful_rows"] == 2
    assert emu.post(body=body, ndjson=True).status_code == 422


def test_ndjson_invalid_line_400_and_non_object_line_rejected(emu, table):
    r = emu.post(body=b'{"id":1}\n{"id":\n', ndjson=True, params={"table": table})
    assert r.status_code == 400
    assert not table_exists(emu, table)
    r = emu.post(body=b'{"id":1}\n42\n', ndjson=True, params={"table": table})
    assert r.status_code == 200 and r.json()["rejected_rows"] == 1
    assert count(emu, table) == 1


def test_gzip_json_and_ndjson(emu, table):
    r = emu.post([{"id": i} for i in range(100)], {"table": table}, gzip=True)
    assert r.status_code == 200 and r.json()["successful_rows"] == 100
    r = emu.post([{"id": i} for i in range(10)], ndjson=True, gzip=True, params={"table": table})
    assert r.status_code == 200 and r.json()["successful_rows"] == 10
    assert count(emu, table) == 110


def test_bad_gzip_400(emu, table):
    r = emu.post(body=b"this is not gzip", headers={"Content-Encoding": "gzip"})
    assert r.status_code == 400
    check_shape(r.json())
    truncated = gzip.compress(json.dumps({"data": [{"id": 1}], "config": {"table": table}}).encode())[:-10]
    r = emu.post(body=truncated, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 400
    assert not table_exists(emu, table)


def test_unknown_content_encoding_400(emu, table):
    r = emu.post([{"id": 1}], {"table": table}, headers={"Content-Encoding": "br"})
    assert r.status_code == 400


def test_three_part_table_name(emu, table):
    r = emu.post([{"id": 1}], {"table": "LAKE." + table})
    assert r.status_code == 200 and r.json()["table"] == fq(table)
    r = emu.post([{"id": 2}], {"table": "lake." + table})
    assert r.status_code == 200
    assert count(emu, table) == 2


def test_wrong_lake_404(emu, table):
    r = emu.post([{"id": 1}], {"table": "other." + table})
    assert r.status_code == 404
    check_shape(r.json())


def test_malformed_table_400(emu):
    for bad in ("events", "bronze.", ".events", "bronze.ev-ents", "bronze.1events", "a.b.c.d", "bronze.ev ents"):
        r = emu.post([{"id": 1}], {"table": bad})
        assert r.status_code == 400, (bad, r.status_code)


def test_missing_table_422(emu):
    assert emu.post([{"id": 1}], {}).status_code == 422
    assert emu.post([{"id": 1}], None).status_code == 422
    assert emu.post([{"id": 1}], {"table": 5}).status_code == 422


def test_unknown_namespace_404(emu):
    r = emu.post([{"id": 1}], {"table": "gold.events"})
    assert r.status_code == 404
    check_shape(r.json())
    assert emu.scalar("SELECT count(*) FROM information_schema.schemata "
                      "WHERE catalog_name='lake' AND schema_name='gold'") == 0


def test_second_namespace_exists(emu):
    name = f"silver.s{os.getpid()}"
    assert emu.post([{"id": 1}], {"table": name}).status_code == 200
    assert count(emu, name) == 1


def test_auto_create_on_first_write(emu, table):
    assert not table_exists(emu, table)
    assert emu.post([{"id": 1}], {"table": table}).status_code == 200
    assert table_exists(emu, table)


def test_admin_create_and_drop_table(emu, table):
    emu.create_table(table, {"id": "BIGINT", "ts": "TIMESTAMP", "amount": "DECIMAL(10,2)"})
    assert table_exists(emu, table)
    r = emu.post([{"id": 1, "ts": "2024-01-15 10:00:00", "amount": "12.34"},
                  {"id": 2, "ts": "not a time", "amount": 1}], {"table": table})
    b = r.json()
    assert (b["successful_rows"], b["rejected_rows"]) == (1, 1), b
    assert "row 1" in b["errors"][0]
    assert emu.query(f"SELECT id, CAST(ts AS VARCHAR) AS ts, CAST(amount AS VARCHAR) AS a FROM {fq(table)}") == [
        {"id": 1, "ts": "2024-01-15 10:00:00", "a": "12.34"}]
    emu.drop_table(table)
    assert not table_exists(emu, table)


def test_config_tags_logged(emu, table):
    r = emu.post([{"id": 1}], {"table": table, "tags": {"batch_id": "b-42", "n": 1}})
    rid = r.json()["request_id"]
    entry = [e for e in emu.requests() if e["request_id"] == rid][0]
    assert entry["tags"] == {"batch_id": "b-42", "n": 1}
    assert entry["status"] == 200 and entry["table"] == fq(table) and entry["mode"] == "append"
    assert entry["rows"] == 1 and entry["accepted"] == 1 and entry["rejected"] == 0
    assert entry["dropped_after_commit"] is False
    with open(os.path.join(emu.lake_dir, "requests.jsonl")) as f:
        lines = [json.loads(x) for x in f]
    assert any(e["request_id"] == rid and e["tags"]["batch_id"] == "b-42" for e in lines)


def test_bad_config_types_422(emu, table):
    assert emu.post([{"id": 1}], {"table": table, "wait": "yes"}).status_code == 422
    assert emu.post([{"id": 1}], {"table": table, "tags": [1]}).status_code == 422
    assert not table_exists(emu, table)


def test_stdout_line_per_request(emu, table):
    rid = emu.post([{"id": 1}], {"table": table}).json()["request_id"]
    assert emu.wait_until(lambda: any(rid in ln for ln in emu.output), timeout=5)
    line = [ln for ln in emu.output if rid in ln][0]
    assert fq(table) in line and "mode=append" in line and "status=200" in line and "ms=" in line


def test_keep_alive_and_chunked(emu, table):
    s = requests.Session()
    for i in range(3):
        assert emu.post([{"id": i}], {"table": table}, session=s).status_code == 200

    def gen():
        yield b'{"data":[{"id":10},'
        yield b'{"id":11}],"config":{"table":"' + table.encode() + b'"}}'
    r = s.post(emu.stream_url, data=gen(), headers={"Authorization": "Bearer test-key"})
    assert r.status_code == 200 and r.json()["successful_rows"] == 2
    assert count(emu, table) == 5


def test_concurrent_writers_serialized(emu, table):
    import threading

    errors = []

    def worker(k):
        s = requests.Session()
        for j in range(5):
            r = emu.post([{"id": k * 100 + j, f"col_{k}": j}], {"table": table}, session=s)
            if r.status_code != 200 or r.json()["successful_rows"] != 1:
                errors.append(r.text)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert count(emu, table) == 20
