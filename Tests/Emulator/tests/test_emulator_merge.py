"""mode=merge (upsert) and the config rules around it."""

from emu_helpers import check_shape, count, fq, table_exists


def merge(emu, rows, table, **cfg):
    return emu.post(rows, {"table": table, "mode": "merge", "primary_key": ["id"], **cfg})


def test_merge_upserts(emu, table):
    assert merge(emu, [{"id": 1, "v": "a", "w": 1}, {"id": 2, "v": "b", "w": 2}], table).status_code == 200
    r = merge(emu, [{"id": 2, "v": "B"}, {"id": 3, "v": "c"}], table, wait=True)
    b = r.json()
    assert r.status_code == 200 and b["successful_rows"] == 2 and isinstance(b["snapshot_id"], int)
    # A matched row is replaced: columns the incoming row lacks become NULL.
    assert emu.query(f"SELECT id, v, w FROM {fq(table)} ORDER BY id") == [
        {"id": 1, "v": "a", "w": 1}, {"id": 2, "v": "B", "w": None}, {"id": 3, "v": "c", "w": None}]


def test_merge_key_cast_to_column_type(emu, table):
    merge(emu, [{"id": 1, "v": "a"}], table)
    r = merge(emu, [{"id": "1", "v": "z"}], table)
    assert r.json()["successful_rows"] == 1
    assert emu.query(f"SELECT id, v FROM {fq(table)}") == [{"id": 1, "v": "z"}]


def test_merge_without_primary_key_422(emu, table):
    r = emu.post([{"id": 1}], {"table": table, "mode": "merge"})
    assert r.status_code == 422
    check_shape(r.json())
    assert not table_exists(emu, table)


def test_composite_or_bad_primary_key_422(emu, table):
    for pk in (["id", "v"], [], "id", [1], [""]):
        r = emu.post([{"id": 1, "v": 1}], {"table": table, "mode": "merge", "primary_key": pk})
        assert r.status_code == 422, pk
    assert not table_exists(emu, table)


def test_unknown_mode_422(emu, table):
    assert emu.post([{"id": 1}], {"table": table, "mode": "upsert"}).status_code == 422
    assert not table_exists(emu, table)


def test_row_missing_or_null_key_rejected(emu, table):
    r = merge(emu, [{"id": 1}, {"v": "no key"}, {"id": None, "v": "null key"}, {"id": 4}], table)
    b = r.json()
    assert r.status_code == 200 and (b["successful_rows"], b["rejected_rows"]) == (2, 2)
    assert b["errors"][0].startswith("row 1:") and b["errors"][1].startswith("row 2:")
    assert count(emu, table) == 2


def test_duplicate_keys_reject_whole_request(emu, table):
    merge(emu, [{"id": 100, "v": "orig"}], table)
    r = merge(emu, [{"id": 1, "v": "a"}, {"id": 2}, {"id": 1, "v": "b"}], table)
    assert r.status_code == 400
    b = r.json()
    check_shape(b)
    assert b["success"] is False and b["successful_rows"] == 0
    assert "duplicate primary key values in one request; dedupe upstream" in b["errors"][0]
    assert emu.query(f"SELECT id, v FROM {fq(table)}") == [{"id": 100, "v": "orig"}]


def test_merge_over_ndjson_query_params(emu, table):
    emu.post([{"id": 1, "v": "a"}], ndjson=True, params={"table": table, "mode": "merge", "primary_key": "id"})
    r = emu.post([{"id": 1, "v": "b"}, {"id": 2, "v": "c"}], ndjson=True,
                 params={"table": table, "mode": "merge", "primary_key": "id"})
    assert r.status_code == 200
    assert emu.query(f"SELECT id, v FROM {fq(table)} ORDER BY id") == [{"id": 1, "v": "b"}, {"id": 2, "v": "c"}]
    r = emu.post([{"id": 1}], ndjson=True, params={"table": table, "mode": "merge", "primary_key": "id,v"})
    assert r.status_code == 422


def test_merge_adds_new_columns(emu, table):
    merge(emu, [{"id": 1}], table)
    merge(emu, [{"id": 1, "new_col": 3.5}], table)
    assert emu.query(f"SELECT id, new_col FROM {fq(table)}") == [{"id": 1, "new_col": 3.5}]
