"""Automatic schema handling and type coercion."""

from emu_helpers import column_types, count, fq


def test_first_value_decides_types(emu, table):
    r = emu.post([{"i": 1, "f": 1.5, "b": True, "s": "x", "o": {"a": [1, 2]}, "a": [1, "x"],
                   "n": None, "big": 2**64, "u": 2**63}], {"table": table})
    assert r.status_code == 200, r.text
    assert column_types(emu, table) == {
        "i": "BIGINT", "f": "DOUBLE", "b": "BOOLEAN", "s": "VARCHAR", "o": "JSON", "a": "JSON",
        "n": "VARCHAR", "big": "DOUBLE", "u": "DOUBLE"}
    row = emu.query(f"SELECT * FROM {fq(table)}")[0]
    assert row["i"] == 1 and row["f"] == 1.5 and row["b"] is True and row["s"] == "x"
    assert row["o"] == {"a": [1, 2]} and row["a"] == [1, "x"] and row["n"] is None
    assert row["big"] == float(2**64)


def test_new_key_adds_nullable_column(emu, table):
    emu.post([{"id": 1}], {"table": table})
    r = emu.post([{"id": 2, "extra": "e"}], {"table": table})
    assert r.status_code == 200
    assert column_types(emu, table) == {"id": "BIGINT", "extra": "VARCHAR"}
    assert emu.query(f"SELECT id, extra FROM {fq(table)} ORDER BY id") == [
        {"id": 1, "extra": None}, {"id": 2, "extra": "e"}]


def test_first_non_null_value_in_batch_decides(emu, table):
    emu.post([{"k": None}, {"k": 5}, {"k": "7"}], {"table": table})
    assert column_types(emu, table) == {"k": "BIGINT"}
    assert [r["k"] for r in emu.query(f"SELECT k FROM {fq(table)} ORDER BY k NULLS FIRST")] == [None, 5, 7]


def test_mixed_int_and_string_in_varchar(emu, table):
    emu.post([{"v": "a"}], {"table": table})
    r = emu.post([{"v": 12}, {"v": 1.5}, {"v": {"x": 1}}], {"table": table})
    assert r.json()["successful_rows"] == 3
    assert sorted(x["v"] for x in emu.query(f"SELECT v FROM {fq(table)}")) == ["1.5", "12", "a", '{"x":1}']


def test_boolean_caveat(emu, table):
    emu.post([{"flag": True, "text": "s"}], {"table": table})
    r = emu.post([{"flag": False, "text": True}, {"flag": "true", "text": False}], {"table": table})
    assert r.json()["successful_rows"] == 2
    rows = emu.query(f"SELECT flag, text FROM {fq(table)} ORDER BY text")
    assert sorted(r["text"] for r in rows) == ["false", "s", "true"]
    assert sorted(r["flag"] for r in rows) == [False, True, True]
    assert column_types(emu, table)["flag"] == "BOOLEAN"


def test_uncastable_value_rejects_that_row_only(emu, table):
    emu.post([{"n": 1, "d": 1.0, "b": True}], {"table": table})
    r = emu.post([{"n": "abc"}, {"n": "42"}, {"d": "x"}, {"d": 3}, {"b": "maybe"}, {"b": 0},
                  {"n": {"o": 1}}, {"n": 2**63}], {"table": table})
    b = r.json()
    assert r.status_code == 200 and b["success"] is True
    assert (b["successful_rows"], b["rejected_rows"]) == (3, 5), b
    assert [e.split(":")[0] for e in b["errors"]] == ["row 0", "row 2", "row 4", "row 6", "row 7"]
    assert "BIGINT" in b["errors"][0]
    assert count(emu, table) == 4
    assert emu.scalar(f"SELECT n FROM {fq(table)} WHERE n = 42") == 42


def test_float_into_bigint_and_int_into_double(emu, table):
    emu.post([{"n": 1, "d": 0.5}], {"table": table})
    emu.post([{"n": 2.0, "d": 3}], {"table": table})
    assert emu.query(f"SELECT n, d FROM {fq(table)} ORDER BY n") == [{"n": 1, "d": 0.5}, {"n": 2, "d": 3.0}]


def test_keys_case_insensitive_columns(emu, table):
    emu.post([{"Name": "a"}], {"table": table})
    r = emu.post([{"name": "b"}, {"NAME": "c", "name": "d"}], {"table": table})
    b = r.json()
    assert (b["successful_rows"], b["rejected_rows"]) == (1, 1)
    assert list(column_types(emu, table)) == ["Name"]


def test_string_into_json_column(emu, table):
    emu.post([{"j": {"a": 1}}], {"table": table})
    emu.post([{"j": "plain"}, {"j": 5}], {"table": table})
    vals = [r["j"] for r in emu.query(f"SELECT j FROM {fq(table)}")]
    assert {"a": 1} in vals and "plain" in vals and 5 in vals
