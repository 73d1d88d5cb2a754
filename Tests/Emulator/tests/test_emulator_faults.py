"""Fault injection, control and stats endpoints."""

import time

import pytest
import requests

from emu_helpers import check_shape, count, table_exists


def test_get_control_and_reset(emu):
    s = emu.faults()
    assert s["error_rate"] == 0 and s["reject_marker"] is None and s["force"] is None
    s = emu.control(error_rate=0.25, latency_range_ms=[1, 2])
    assert s["error_rate"] == 0.25 and s["latency_range_ms"] == [1, 2]
    assert emu.faults()["error_rate"] == 0.25
    assert emu.reset_faults()["error_rate"] == 0


def test_control_rejects_bad_settings(emu):
    for bad in ({"error_rate": 2}, {"no_such": 1}, {"reject_marker_mode": "x"}, {"force": {"count": 1}},
                {"latency_range_ms": [5, 1]}):
        r = requests.post(emu.url + "/_control", json=bad)
        assert r.status_code == 400, bad


def test_error_rate_500_503(emu, table):
    emu.control(error_rate=1.0)
    statuses = set()
    for _ in range(12):
        r = emu.post([{"id": 1}], {"table": table})
        check_shape(r.json())
        assert r.json()["success"] is False
        statuses.add(r.status_code)
    assert statuses == {500, 503}
    assert not table_exists(emu, table)


def test_rate_limit_429_retry_after(emu, table):
    emu.control(rate_limit_rate=1.0, retry_after=7)
    r = emu.post([{"id": 1}], {"table": table})
    assert r.status_code == 429 and r.headers["Retry-After"] == "7"
    check_shape(r.json())
    assert not table_exists(emu, table)


def test_seeded_decisions_are_reproducible(emu, table):
    def run():
        emu.control(seed=1234, error_rate=0.5)
        return [emu.post([{"id": 1}], {"table": table}).status_code for _ in range(16)]

    a, b = run(), run()
    assert a == b and 200 in a and ({500, 503} & set(a))


def test_fixed_latency(emu, table):
    emu.control(latency_ms=300)
    t = time.monotonic()
    assert emu.post([{"id": 1}], {"table": table}).status_code == 200
    assert time.monotonic() - t >= 0.3


def test_latency_range(emu, table):
    emu.control(latency_range_ms=[100, 200])
    t = time.monotonic()
    emu.post([{"id": 1}], {"table": table})
    assert time.monotonic() - t >= 0.1


def test_hang_past_client_timeout(emu, table):
    emu.control(hang_rate=1.0, hang_seconds=1.5)
    with pytest.raises(requests.exceptions.ReadTimeout):
        emu.post([{"id": 1}], {"table": table}, timeout=0.5, session=requests.Session())
    emu.control(hang_rate=0.0)
    assert emu.wait_until(lambda: any(e["fault"] == "hung" for e in emu.requests()), timeout=5)
    assert not table_exists(emu, table)


def test_drop_before_body(emu, table):
    emu.reset_stats()
    emu.control(drop_before_body_rate=1.0)
    with pytest.raises(requests.exceptions.ConnectionError):
        emu.post([{"id": 1}], {"table": table}, session=requests.Session())
    emu.control(drop_before_body_rate=0.0)
    assert emu.stats()["dropped_before_body"] == 1
    assert not table_exists(emu, table)


def test_drop_after_commit_writes_rows(emu, table):
    emu.reset_stats()
    emu.control(drop_after_commit_rate=1.0)
    with pytest.raises(requests.exceptions.ConnectionError):
        emu.post([{"id": 1}, {"id": 2}], {"table": table, "tags": {"batch_id": "dac-1"}},
                 session=requests.Session())
    emu.control(drop_after_commit_rate=0.0)
    assert count(emu, table) == 2
    st = emu.stats()
    assert st["dropped_after_commit"] == 1
    entry = [e for e in emu.requests() if (e["tags"] or {}).get("batch_id") == "dac-1"][0]
    assert entry["dropped_after_commit"] is True and entry["status"] is None


def test_reject_marker_row_mode(emu, table):
    emu.control(reject_marker="__reject")
    r = emu.post([{"id": 1}, {"id": 2, "__reject": True}, {"id": 3, "__reject": False}], {"table": table})
    b = r.json()
    assert r.status_code == 200 and (b["successful_rows"], b["rejected_rows"]) == (1, 2)
    assert "reject marker" in b["errors"][0]
    assert emu.query(f"SELECT id FROM lake.{table}") == [{"id": 1}]


def test_reject_marker_request_mode(emu, table):
    emu.control(reject_marker="__reject", reject_marker_mode="request")
    r = emu.post([{"id": 1}, {"id": 2, "__reject": 1}], {"table": table})
    assert r.status_code == 400
    check_shape(r.json())
    assert not table_exists(emu, table)
    assert emu.post([{"id": 1}], {"table": table}).status_code == 200


def test_anonymous_row_errors_give_the_reason_without_the_row(emu, table):
    emu.control(reject_marker="__reject", name_rejected_rows=False)
    b = emu.post([{"id": 1}, {"id": 2, "__reject": True}], {"table": table}).json()
    assert b["rejected_rows"] == 1 and b["errors"] == ["carries reject marker '__reject'"], b
    emu.control(reject_marker_mode="request")
    r = emu.post([{"id": 1}, {"id": 2, "__reject": True}], {"table": table})
    assert r.status_code == 400 and r.json()["errors"] == ["a row carries reject marker '__reject'; request rejected"]


def test_force_status_for_n_requests(emu, table):
    emu.control(force={"status": 401, "count": 2})
    codes = [emu.post([{"id": 1}], {"table": table}).status_code for _ in range(3)]
    assert codes == [401, 401, 200]
    emu.control(force={"status": 503, "count": 1})
    r = emu.post([{"id": 1}], {"table": table})
    assert r.status_code == 503
    check_shape(r.json())
    assert count(emu, table) == 1


def test_stats_and_reset(emu, table):
    emu.reset_stats()
    emu.post([{"id": 1}, {"id": 2}, 3], {"table": table})
    emu.post([{"id": 1}], {"table": table}, api_key="bad")
    s = emu.stats()
    assert s["total_requests"] == 2
    assert s["by_status"] == {"200": 1, "401": 1}
    assert s["rows_received"] == 3 and s["rows_rejected"] == 1
    assert s["rows_written"] == {f"lake.{table}": 2}
    emu.reset_stats()
    s = emu.stats()
    assert s["total_requests"] == 0 and s["by_status"] == {} and s["rows_written"] == {}


def test_requests_log_reset(emu, table):
    emu.post([{"id": 1}], {"table": table})
    assert emu.requests()
    emu.reset_requests()
    assert emu.requests() == []
