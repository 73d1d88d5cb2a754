"""Full disk: the spool lives on a small filesystem made by the test (tmpfs, else a loop-mounted ext4 image,
else the test is skipped). `[spool] max_bytes` is 1 GiB, so a 507 can only come from the disk.

1. Filled through intake with no API key (nothing drains) until writers get 507 `spool_full`: every
   acknowledged record is in the spool, `PRAGMA integrity_check` is ok, the daemon keeps running and answers
   every further write with 507, and the log reports the full disk once (rate-limited), not once per request.
2. Then the API key is given (SIGHUP) with the emulator up: delivery must drain the spool without sending any
   batch twice, free space, and intake must resume by itself (a new write gets ok). This works because intake
   stops at `[spool] disk_reserve` (auto: 5% of the filesystem), leaving delivery room to record its progress.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agent_harness import Agent
from harness import Emulator
from reliability_common import integrity_check, spool_records, wait_until

TABLE = "bronze.fill"
FS_SIZE = os.environ.get("RELIABILITY_FULL_DISK_SIZE", "8m")


def mount_small_fs(directory: Path, size: str) -> tuple[str, list]:
    """Mounts a `size` filesystem at `directory`; returns (kind, cleanup commands)."""
    directory.mkdir(parents=True, exist_ok=True)
    tmpfs = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                           capture_output=True, text=True)
    if tmpfs.returncode == 0:
        return "tmpfs", [["umount", str(directory)]]
    image = directory.parent / "small-fs.img"
    steps = [["truncate", "-s", size.upper().rstrip("B"), str(image)], ["mkfs.ext4", "-q", "-F", str(image)],
             ["mount", "-o", "loop", str(image), str(directory)]]
    for step in steps:
        result = subprocess.run(step, capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot make a small filesystem: `mount -t tmpfs` said {tmpfs.stderr.strip()!r}; "
                        f"`{' '.join(step)}` said {result.stderr.strip()!r} (needs root / CAP_SYS_ADMIN)")
    return "ext4 loop image", [["umount", str(directory)], ["rm", "-f", str(image)]]


@pytest.fixture
def small_fs(tmp_path):
    directory = tmp_path / "small-fs"
    kind, cleanup = mount_small_fs(directory, FS_SIZE)
    yield directory, kind
    for step in cleanup:
        for _ in range(20):
            if subprocess.run(step, capture_output=True).returncode == 0:
                break
            time.sleep(0.25)  # the agent may still be exiting


FULL = re.compile(r"(disk|spool)( is)? full", re.IGNORECASE)


def full_lines(log: str) -> list[str]:
    """Log lines that report a full disk or spool."""
    return [line for line in log.splitlines() if FULL.search(line)]


def fill(agent: Agent, first: int = 0) -> tuple[list[int], dict, float]:
    """Writes 100-row requests with acks (ids from `first` on) until one is refused; returns (acked ids, the
    refusal, seconds)."""
    acked: list[int] = []
    started = time.monotonic()
    n = first
    with agent.connect() as conn:
        while True:
            rows = [{"i": n + k, "pad": "y" * 200} for k in range(100)]
            reply = conn.request(json.dumps({"data": rows, "config": {"table": TABLE}, "ack": f"f{n}"}))
            assert reply is not None, "the agent closed the connection while filling the disk"
            if not reply["ok"]:
                return acked, reply, time.monotonic() - started
            assert reply["accepted"] == 100, reply
            acked.extend(range(n, n + 100))
            n += 100
            assert n < 2_000_000, "the disk never filled"


def start_filling_agent(tmp_path: Path, fs: Path, url: str | None = None) -> Agent:
    api = f'[api]\nurl = "{url}"\n' if url else ""
    agent = Agent(tmp_path / "agent", default_table=TABLE, spool_path=str(fs / "spool.db"),
                  spool_config='max_bytes = "1GiB"',
                  env={"DEFINITE_API_KEY": "", "CREDENTIALS_DIRECTORY": ""},
                  extra_config=api + '[batch]\nlinger = "100ms"\nmax_rows = 2000\n[retry]\ninitial = "50ms"\nmax = "500ms"\n')
    agent.env.pop("DEFINITE_API_KEY", None)
    agent.env.pop("CREDENTIALS_DIRECTORY", None)
    return agent.start()


def test_full_disk_refuses_with_507_and_keeps_every_acknowledged_record(tmp_path, small_fs):
    fs, kind = small_fs
    agent = start_filling_agent(tmp_path, fs)
    try:
        acked, refusal, seconds = fill(agent)
        assert refusal["status"] == 507 and refusal["code"] == "spool_full", refusal
        assert "disk" in refusal["error"], refusal
        assert len(acked) > 1000, f"only {len(acked)} rows fitted on a {FS_SIZE} {kind}"
        # Further writes: refused the same way, the daemon stays up, nothing partial is stored. A refusal can
        # come while the daemon's checkpointer holds the WAL (under load its checkpoint outlasts the 250 ms the
        # writer waits for it), before the WAL's space is handed back; writes are then accepted again until
        # the disk is full for good. So the disk is filled again until further writes are steadily refused.
        late_acked: list[int] = []
        for attempt in range(3):
            with agent.connect() as conn:
                ids = [-1 - 200 * attempt - k for k in range(200)]
                refusals = [(i, conn.request(json.dumps({"data": [{"i": i}], "config": {"table": TABLE}, "ack": f"x{i}"})))
                            for i in ids]
            assert agent.process.poll() is None, agent.log()[-2000:]
            assert all(r["status"] == 507 and r["code"] == "spool_full" for _, r in refusals if not r["ok"]), refusals[:3]
            late_acked += [i for i, r in refusals if r["ok"]]
            print(f"attempt {attempt}: {sum(r['ok'] for _, r in refusals)} of 200 further writes accepted")
            if sum(r["ok"] for _, r in refusals) <= 5:
                break
            more, refusal, more_seconds = fill(agent, first=acked[-1] + 1)
            assert refusal["status"] == 507 and refusal["code"] == "spool_full", refusal
            acked += more
            seconds += more_seconds
        else:
            pytest.fail("the full disk never steadily refused further writes")
        # Everything acknowledged is in the spool, intact.
        assert integrity_check(agent.spool_path) == "ok"
        spooled = [r["i"] for r in spool_records(agent.spool_path, TABLE)]
        assert sorted(i for i in spooled if i >= 0) == acked, "acknowledged rows missing from the spool"
        assert sorted(i for i in spooled if i < 0) == sorted(late_acked), "acknowledged late rows missing from the spool"
        assert agent.status()["pending"] == len(acked) + len(late_acked)
        # The log reports the full disk once (per 10 s at most), not once per refused request.
        lines = full_lines(agent.log())
        elapsed = seconds + 5
        print(f"{kind} {FS_SIZE}: {len(acked)} rows acked before 507; {len(lines)} log lines mention 'full':\n"
              + "\n".join(lines))
        episodes = 1 + attempt  # each fill again ends in a refusal of its own
        assert 1 <= len(lines) <= episodes + int(elapsed // 10) + 1, lines
        files = {p.name: p.stat().st_size for p in fs.iterdir()}
        print("files on the full filesystem:", files)
    finally:
        agent.kill9()
    # After kill -9 on a full disk the spool is still intact.
    assert integrity_check(agent.spool_path) == "ok"


def test_full_disk_recovers_once_delivery_frees_space(tmp_path, small_fs):
    fs, kind = small_fs
    emu = Emulator(quiet=True)
    agent = start_filling_agent(tmp_path, fs, emu.stream_url)
    try:
        acked, refusal, _ = fill(agent)
        assert refusal["status"] == 507, refusal
        assert integrity_check(agent.spool_path) == "ok"
        full_before = len(full_lines(agent.log()))

        # Give the key (a file outside the full filesystem) and reload.
        key_file = tmp_path / "api-key"
        key_file.write_text(emu.api_key + "\n")
        key_file.chmod(0o600)
        config = Path(agent.config_path).read_text().replace("[api]\n", f'[api]\nkey_file = "{key_file}"\n', 1)
        Path(agent.config_path).write_text(config)
        agent.process.send_signal(signal.SIGHUP)

        deadline = time.monotonic() + 60
        while True:
            committed: dict[str, int] = {}
            for r in emu.requests():
                if r["successful_rows"]:
                    batch = (r.get("tags") or {}).get("agent_batch")
                    committed[batch] = committed.get(batch, 0) + 1
            twice = {b: n for b, n in committed.items() if n > 1}
            table = agent.status()["tables"][0]
            assert not twice, (f"batches the API committed were sent again: {len(twice)} batches, up to "
                               f"{max(twice.values())} times; agent's last error: {table['last_error']}")
            if table["pending"] == 0:
                # The refusal ends by itself once delivery freed the space: it used to last until the next
                # write, so status, status --check and /readyz said "full" over an empty spool.
                wait_until(lambda: agent.status()["intake_refused"] is None, timeout=10,
                           message="intake refused still shown after delivery emptied the spool, with no write since")
                with agent.connect() as conn:
                    reply = conn.request(json.dumps({"data": [{"i": -1}], "config": {"table": TABLE}, "ack": "resume"}))
                if reply and reply["ok"]:
                    break
            assert time.monotonic() < deadline, f"not drained / intake not resumed after 60 s: {table}"
            time.sleep(0.5)

        wait_until(lambda: agent.status()["pending"] == 0, timeout=30, message="the resume write delivered")
        totals = emu.query(f"SELECT count(*) AS n, count(DISTINCT i) AS d FROM lake.{TABLE}")[0]
        assert totals["d"] == len(acked) + 1 and totals["n"] == totals["d"], totals
        assert integrity_check(agent.spool_path) == "ok"
        lines = full_lines(agent.log())
        print(f"'full' log lines: {full_before} while filling, {len(lines)} in all")
        assert agent.process.poll() is None
    finally:
        agent.finish()
        print(f"--- tail of {agent.log_path} ---\n{agent.log()[-3000:]}")
        emu.stop()
