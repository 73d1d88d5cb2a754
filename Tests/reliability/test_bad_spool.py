"""Corrupted or foreign spools: a clear error at start (what, where, what to do), a non-zero exit, and the file
never overwritten. A truncated WAL is the exception: SQLite ignores an incomplete last frame, so the daemon
starts and keeps every record of the commits that are complete in the WAL (the torn last commit is gone:
with `durability = "normal"` that is the documented power-loss window).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from agent_harness import Agent, agent_binary
from reliability_common import integrity_check, spool_records

TABLE = "bronze.bad"
SPOOL_EXIT = 65


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(directory: Path) -> dict[str, str]:
    """Hash of every file in the directory (the spool and its -wal/-shm)."""
    return {p.name: sha256(p) for p in sorted(directory.iterdir()) if p.is_file()}


def assert_untouched(before: dict[str, str], after: dict[str, str]):
    """The spool file and a non-empty WAL are byte for byte the same. The -shm index (rebuilt by any SQLite
    connection, even a read-only one) is ignored; an empty -wal may appear or disappear."""
    empty = hashlib.sha256(b"").hexdigest()
    for name in set(before) | set(after):
        if not name.startswith("spool.db") or name.endswith("-shm"):
            continue
        if name.endswith("-wal") and before.get(name, empty) == empty and after.get(name, empty) == empty:
            continue
        assert before.get(name) == after.get(name), f"{name} changed: {before.get(name)} -> {after.get(name)}"


def make_agent(directory: Path, durability: str = "full", spool_dir: Path | None = None, **kwargs) -> Agent:
    spool = str((spool_dir or directory) / "spool.db")
    agent = Agent(directory, default_table=TABLE, durability=durability, spool_path=spool, **kwargs)
    agent.env.pop("DEFINITE_API_KEY", None)  # nothing drains: the spool keeps every record
    return agent


def write_records(agent: Agent, count: int, start: int = 0, per_request: int = 10) -> list[int]:
    """Sequential acked requests (each its own group commit)."""
    acked = []
    with agent.connect() as conn:
        for n in range(start, start + count, per_request):
            rows = [{"i": n + k, "pad": "z" * 100} for k in range(per_request)]
            reply = conn.request(json.dumps({"data": rows, "config": {"table": TABLE}, "ack": str(n)}))
            assert reply and reply["ok"], reply
            acked.extend(range(n, n + per_request))
    return acked


def populated_spool(directory: Path, spool_dir: Path | None = None) -> Agent:
    """A spool written by the daemon and closed cleanly (WAL checkpointed), holding 100 records."""
    agent = make_agent(directory, spool_dir=spool_dir).start()
    write_records(agent, 100)
    assert agent.stop() == 0
    return agent


def start_expecting_failure(agent: Agent, prefix: list[str] | None = None, grace: float = 5.0) -> tuple[int | None, str]:
    """Runs the daemon; returns (exit code, output), or (None, output) if it was still running after `grace`
    seconds (it is then killed: it accepted a spool it should have refused)."""
    process = subprocess.Popen([*(prefix or []), agent_binary(), "run", "--config", agent.config_path],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=agent.env)
    try:
        output, _ = process.communicate(timeout=grace)
        return process.returncode, output.decode(errors="replace")
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        return None, output.decode(errors="replace")


def assert_clear_error(code: int | None, output: str, path: str, *, what: list[str], todo: list[str]):
    assert code is not None, f"the daemon started and kept running on a spool it cannot use:\n{output}"
    assert code != 0, f"the daemon exited 0 on a bad spool:\n{output}"
    assert path in output, f"the error does not name the spool path {path}:\n{output}"
    lowered = output.lower()
    assert any(w in lowered for w in what), f"the error does not say what is wrong ({what}):\n{output}"
    assert any(t in lowered for t in todo), f"the error does not say what to do ({todo}):\n{output}"


# -- foreign and newer files -----------------------------------------------------------------------------------


def test_newer_schema_version_is_refused_and_left_untouched(tmp_path):
    agent = populated_spool(tmp_path / "agent")
    db = sqlite3.connect(agent.spool_path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    spool_dir = Path(agent.spool_path).parent
    before = snapshot(spool_dir)
    code, output = start_expecting_failure(agent)
    assert code == SPOOL_EXIT, (code, output)
    assert_clear_error(code, output, agent.spool_path, what=["schema version 99", "newer"],
                       todo=["run the newer version", "drain it there"])
    assert_untouched(before, snapshot(spool_dir))
    # The CLI says the same.
    status = agent.cli("status")
    assert status.returncode == SPOOL_EXIT and b"99" in status.stderr, status
    assert_untouched(before, snapshot(spool_dir))
    print("newer schema:", output.strip().splitlines()[-1])


def test_a_fifo_at_the_spool_or_key_path_is_refused_at_once(tmp_path):
    """A FIFO (or a hung mount behaving like one) at the spool path, or at `[api] key_file`: opening it blocked
    the start-up for ever, and SIGTERM, recorded by the early handler, could not end it. Refused now, with what
    is wrong."""
    agent = make_agent(tmp_path / "agent")
    os.mkfifo(agent.spool_path)
    code, output = start_expecting_failure(agent)
    assert code == SPOOL_EXIT, (code, output)
    assert_clear_error(code, output, agent.spool_path, what=["a fifo, not a regular file"], todo=["set [spool] path"])

    keyed = make_agent(tmp_path / "keyed")
    key = tmp_path / "key"
    os.mkfifo(key)
    config = Path(keyed.config_path).read_text()
    assert "[api]" not in config, config
    Path(keyed.config_path).write_text(config + f'\n[api]\nkey_file = "{key}"\n')
    code, output = start_expecting_failure(keyed)
    assert code is not None and code != 0, output
    assert str(key) in output and "a FIFO, not a regular file" in output, output


def test_a_file_that_is_not_sqlite_is_refused_and_left_untouched(tmp_path):
    agent = make_agent(tmp_path / "agent")
    payload = b"precious operator data, not a database\n" * 200
    Path(agent.spool_path).write_bytes(payload)
    code, output = start_expecting_failure(agent)
    assert code == SPOOL_EXIT, (code, output)
    assert_clear_error(code, output, agent.spool_path, what=["not a sqlite database", "not a definite-agent spool"],
                       todo=["move it away", "set [spool] path"])
    assert Path(agent.spool_path).read_bytes() == payload, "the foreign file was overwritten"
    assert sorted(p.name for p in Path(agent.spool_path).parent.iterdir() if p.name.startswith("spool.db")) == ["spool.db"]
    status = agent.cli("status")
    assert status.returncode == SPOOL_EXIT, status
    assert Path(agent.spool_path).read_bytes() == payload
    print("not sqlite:", output.strip().splitlines()[-1])


def foreign_sqlite(agent: Agent, user_version: int | None = None) -> None:
    """Another application's SQLite database in rollback-journal mode (SQLite's default)."""
    db = sqlite3.connect(agent.spool_path)
    db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
    db.execute("INSERT INTO invoices (amount) VALUES (12.5)")
    if user_version is not None:
        db.execute(f"PRAGMA application_id = {0x44464147}")
        db.execute(f"PRAGMA user_version = {user_version}")
    db.commit()
    db.close()


def test_a_foreign_sqlite_database_is_refused_with_a_clear_error(tmp_path):
    agent = make_agent(tmp_path / "agent")
    foreign_sqlite(agent)
    code, output = start_expecting_failure(agent)
    assert code == SPOOL_EXIT, (code, output)
    assert_clear_error(code, output, agent.spool_path, what=["not a definite-agent spool"],
                       todo=["set [spool] path", "move it away"])
    print("foreign sqlite:", output.strip().splitlines()[-1])


def test_a_foreign_sqlite_database_is_left_byte_for_byte_untouched(tmp_path):
    agent = make_agent(tmp_path / "agent")
    foreign_sqlite(agent)
    before = snapshot(Path(agent.spool_path).parent)
    code, _ = start_expecting_failure(agent)
    assert code == SPOOL_EXIT
    assert_untouched(before, snapshot(Path(agent.spool_path).parent))


def test_a_newer_spool_in_rollback_journal_mode_is_left_byte_for_byte_untouched(tmp_path):
    """A newer agent's spool that was copied or vacuumed into rollback-journal mode (e.g. `sqlite3 spool.db
    'PRAGMA journal_mode=DELETE'` by an operator)."""
    agent = make_agent(tmp_path / "agent")
    foreign_sqlite(agent, user_version=99)
    before = snapshot(Path(agent.spool_path).parent)
    code, output = start_expecting_failure(agent)
    assert code == SPOOL_EXIT, output
    assert "99" in output
    assert_untouched(before, snapshot(Path(agent.spool_path).parent))


def test_a_corrupted_page_is_refused_and_left_untouched(tmp_path):
    """Garbage written over the middle of a spool (not its header): refused as corrupt, or at least never
    silently rewritten."""
    agent = populated_spool(tmp_path / "agent")
    path = Path(agent.spool_path)
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big") or 65536  # the header's page size (1 means 65536)
    assert len(data) >= 3 * page, len(data)
    data[page:2 * page] = os.urandom(page)  # the second page: schema or table b-tree
    path.write_bytes(bytes(data))
    before = snapshot(path.parent)
    code, output = start_expecting_failure(agent)
    print("corrupt page:", code, output.strip().splitlines()[-1] if output.strip() else "")
    if code == 0:
        pytest.fail(f"the daemon started on a corrupt spool:\n{output}")
    assert code == SPOOL_EXIT, (code, output)
    assert_clear_error(code, output, agent.spool_path, what=["corrupt", "malformed", "not a usable"],
                       todo=[".recover", "move it away", "keep a copy"])
    assert_untouched(before, snapshot(path.parent))


# -- read-only locations -----------------------------------------------------------------------------------------


def _immutable(directory: Path):
    result = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"chattr +i not possible here: {result.stderr.strip()}")
    return lambda: subprocess.run(["chattr", "-i", str(directory)], check=True)


def _readonly_mount(directory: Path):
    """The spool directory is a tmpfs remounted read-only (with the spool already in it)."""
    result = subprocess.run(["mount", "-o", "remount,ro", str(directory)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot remount read-only: {result.stderr.strip()}")
    return lambda: subprocess.run(["umount", str(directory)], check=True)


@pytest.mark.parametrize("how", [
    "immutable_directory",
    "readonly_mount",
    "not_writable_by_the_user",
])
def test_a_spool_in_a_read_only_directory_is_a_clear_error(tmp_path, how):
    """The spool (100 records, cleanly stopped) sits in a directory the daemon cannot write:

    - `immutable_directory`: `chattr +i` on the directory, the -wal/-shm files removed (as for a spool copied
      there): SQLite cannot create its WAL (root ignores mode bits, not the immutable flag);
    - `readonly_mount`: a tmpfs remounted read-only;
    - `not_writable_by_the_user`: the daemon runs as `nobody` (setpriv), the directory is 0555 and the spool
      0644, owned by root.
    """
    if how == "not_writable_by_the_user":
        # /tmp/pytest-of-root is 0700: nobody needs a directory it can reach for the config and socket.
        base = Path(tempfile.mkdtemp(prefix="reliability-ro-"))
        os.chmod(base, 0o755)
        cleanup_base = lambda: shutil.rmtree(base, ignore_errors=True)  # noqa: E731
    else:
        base, cleanup_base = tmp_path, (lambda: None)
    try:
        _read_only_case(base, how)
    finally:
        cleanup_base()


def _read_only_case(tmp_path: Path, how: str):
    spool_dir = tmp_path / "spool-dir"
    spool_dir.mkdir()
    prefix: list[str] = []
    undo = None
    if how == "readonly_mount":
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(spool_dir)],
                                 capture_output=True, text=True)
        if mounted.returncode != 0:
            pytest.skip(f"cannot mount tmpfs: {mounted.stderr.strip()}")
        undo = lambda: subprocess.run(["umount", str(spool_dir)], check=False)  # noqa: E731
    try:
        agent = populated_spool(tmp_path / "agent", spool_dir=spool_dir)
        # A clean stop checkpoints the WAL and closes the spool: the WAL is gone (SQLite removes it with the
        # last connection), or at most left empty.
        wal = Path(agent.spool_path + "-wal")
        assert not wal.exists() or wal.stat().st_size == 0
        if how == "immutable_directory":
            for name in ("spool.db-wal", "spool.db-shm"):
                (spool_dir / name).unlink(missing_ok=True)
            undo = _immutable(spool_dir)
        elif how == "readonly_mount":
            result = subprocess.run(["mount", "-o", "remount,ro", str(spool_dir)], capture_output=True, text=True)
            if result.returncode != 0:
                pytest.skip(f"cannot remount read-only: {result.stderr.strip()}")
        else:
            if shutil.which("setpriv") is None:
                pytest.skip("setpriv not installed")
            # nobody must reach the config and the socket directory; the spool directory is 0555.
            os.chmod(tmp_path / "agent", 0o777)
            os.chmod(spool_dir, 0o555)
            prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        before = snapshot(spool_dir)
        code, output = start_expecting_failure(agent, prefix)
        last = output.strip().splitlines()[-1] if output.strip() else ""
        print(f"{how}: exit {code}: {last}")
        assert_clear_error(code, output, agent.spool_path,
                           what=["read-only", "readonly", "cannot open", "writable", "permission", "cannot create"],
                           todo=["writable", "check", "permission"])
        assert code == SPOOL_EXIT, (code, output)
        assert_untouched(before, snapshot(spool_dir))
    finally:
        if undo:
            undo()
        os.chmod(spool_dir, 0o755) if spool_dir.exists() else None
    if how != "readonly_mount":
        # Writable again: the same spool opens and still holds its 100 records.
        agent = make_agent(tmp_path / "agent", spool_dir=spool_dir).start()
        try:
            assert agent.status()["pending"] == 100
        finally:
            agent.finish()


# -- a torn WAL --------------------------------------------------------------------------------------------------


def wal_commit_boundaries(wal: bytes) -> tuple[int, list[int]]:
    """(frame size, byte offsets just after each commit frame) of a WAL file whose frames share its salt."""
    magic, _version, page_size, _seq, salt1, salt2 = struct.unpack(">IIIIII", wal[:24])
    assert magic in (0x377F0682, 0x377F0683), hex(magic)
    frame = 24 + page_size
    boundaries = []
    offset = 32
    while offset + frame <= len(wal):
        _page, commit, fsalt1, fsalt2 = struct.unpack(">IIII", wal[offset:offset + 16])
        if (fsalt1, fsalt2) != (salt1, salt2):
            break
        offset += frame
        if commit:
            boundaries.append(offset)
    return frame, boundaries


def records_in(db_bytes: bytes, wal_bytes: bytes, scratch: Path) -> list[int]:
    scratch.mkdir()
    (scratch / "spool.db").write_bytes(db_bytes)
    (scratch / "spool.db-wal").write_bytes(wal_bytes)
    return sorted(r["i"] for r in spool_records(str(scratch / "spool.db"), TABLE)) if wal_bytes or db_bytes else []


def test_a_truncated_wal_keeps_every_complete_commit_and_the_daemon_starts(tmp_path):
    agent = make_agent(tmp_path / "agent", durability="normal").start()
    acked = write_records(agent, 300)  # 30 requests, 30 commits
    agent.kill9()
    wal_path = Path(agent.spool_path + "-wal")
    wal = wal_path.read_bytes()
    db_bytes = Path(agent.spool_path).read_bytes()
    frame, boundaries = wal_commit_boundaries(wal)
    assert len(boundaries) >= 5, f"expected many commits in the WAL, found {len(boundaries)}"
    # Cut inside the last frame of the last commit: not a frame boundary.
    cut = boundaries[-1] - frame // 2 - 7
    assert (cut - 32) % frame != 0
    wal_path.write_bytes(wal[:cut])
    for extra in (Path(agent.spool_path + "-shm"),):
        extra.unlink(missing_ok=True)  # as after a reboot: the shared-memory index is rebuilt from the WAL
    expected = records_in(db_bytes, wal[:boundaries[-2]], tmp_path / "expected")
    full = records_in(db_bytes, wal, tmp_path / "untouched")
    assert full == acked, "before the cut the WAL held every acknowledged record"
    lost = sorted(set(acked) - set(expected))
    print(f"WAL: {len(boundaries)} commits, frame {frame} bytes, cut at {cut} of {len(wal)}; "
          f"records in complete commits {len(expected)}, lost with the torn last commit {len(lost)}")
    assert 0 < len(lost) <= 10, lost  # exactly the last request's commit

    agent.start()
    try:
        assert agent.process.poll() is None
        spooled = sorted(r["i"] for r in agent.spooled_records(TABLE))
        assert spooled == expected, "the daemon does not hold exactly the records of the complete commits"
        assert agent.status()["pending"] == len(expected)
        assert integrity_check(agent.spool_path) == "ok"
        # And it keeps working: new records are spooled after the recovered ones.
        more = write_records(agent, 20, start=10_000)
        assert sorted(r["i"] for r in agent.spooled_records(TABLE)) == expected + more
    finally:
        agent.finish()
