"""Who may read the spool (every pending record is in it): 0600 whatever the umask, or 0640 with [spool] group;
a spool an older version made 0644 is narrowed at start, and the log says so; where that is impossible the
daemon refuses to start and says how to fix it. Every daemon that starts ends with SIGTERM and must exit 0."""
from __future__ import annotations

import grp
import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from agent_harness import Agent, agent_binary


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def spool_files(agent: Agent) -> list[str]:
    return [p for p in (agent.spool_path, agent.spool_path + "-wal", agent.spool_path + "-shm") if os.path.exists(p)]


def setpriv_or_skip() -> str:
    """`setpriv`, to run the daemon or a command as `nobody`; the test is skipped without it or root."""
    setpriv = shutil.which("setpriv")
    if os.getuid() != 0 or not setpriv:
        pytest.skip("needs root and setpriv to run a process as another user")
    return setpriv


@pytest.fixture
def loose_umask():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_a_new_spool_is_readable_by_the_daemon_user_only_under_umask_022(tmp_path, loose_umask):
    agent = Agent(tmp_path / "agent").start()
    try:
        with agent.connect() as conn:
            assert conn.request('{"secret":"pending record","ack":"1"}')["ok"]
        files = spool_files(agent)
        assert len(files) == 3, files  # the WAL and SHM exist while the daemon runs
        assert {f: oct(mode(f)) for f in files} == {f: oct(0o600) for f in files}
    finally:
        assert agent.stop() == 0, agent.log()[-3000:]


def test_an_existing_spool_others_can_read_is_narrowed_at_start_and_logged(tmp_path, loose_umask):
    agent = Agent(tmp_path / "agent").start()
    with agent.connect() as conn:
        assert conn.request('{"a":1,"ack":"1"}')["ok"]
    assert agent.stop() == 0
    for f in spool_files(agent):
        os.chmod(f, 0o644)  # as an older version left it
    agent.start()
    try:
        assert mode(agent.spool_path) == 0o600
        log = agent.log()
        assert "could be read by others: its access was narrowed" in log and "old_mode=0644" in log, log[-2000:]
        assert agent.spooled_records() == [{"a": 1}]
    finally:
        assert agent.stop() == 0, agent.log()[-3000:]


def test_a_group_gets_0640_and_the_files(tmp_path, loose_umask):
    if os.getuid() != 0:
        pytest.skip("giving the spool to another group needs root or membership of that group")
    group = next((g for g in grp.getgrall() if g.gr_gid != os.getgid()), None)
    if group is None:
        pytest.skip("no other group on this machine")
    agent = Agent(tmp_path / "agent", spool_config=f'group = "{group.gr_name}"').start()
    try:
        with agent.connect() as conn:
            assert conn.request('{"a":1,"ack":"1"}')["ok"]
        for f in spool_files(agent):
            assert mode(f) == 0o640 and os.stat(f).st_gid == group.gr_gid, (f, oct(mode(f)), os.stat(f).st_gid)
        check = agent.cli("config", "check")
        assert f'group = "{group.gr_name}"' in check.stdout.decode(), check.stdout
    finally:
        assert agent.stop() == 0, agent.log()[-3000:]


def test_a_spool_that_cannot_be_narrowed_stops_the_start_with_the_fix(loose_umask):
    """Run as `nobody` on a 0644 spool root owns: nobody can neither narrow it nor should it run on it."""
    setpriv = setpriv_or_skip()
    directory = Path(tempfile.mkdtemp(prefix="spool-access-"))
    try:
        directory.chmod(0o777)
        agent = Agent(directory)
        spool = Path(agent.spool_path)
        seed = Agent(directory / "seed", spool_path=str(spool)).start()
        assert seed.stop() == 0
        spool.chmod(0o644)
        result = subprocess.run([setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", agent_binary(), "run",
                                 "--config", agent.config_path], capture_output=True, timeout=60)
        assert result.returncode == 65, (result.returncode, result.stderr.decode())
        message = result.stderr.decode()
        assert str(spool) in message and "can be read by others (mode 0644)" in message and f"chmod 0600 {spool}" in message, message
        assert mode(str(spool)) == 0o644
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_a_command_that_may_not_look_at_the_spool_says_so_rather_than_that_there_is_none():
    """An operator without access to the spool's directory was told "no spool file here" and, by `status
    --check`, "the daemon never ran", while the daemon ran and delivered."""
    setpriv = setpriv_or_skip()
    directory = Path(tempfile.mkdtemp(prefix="spool-access-"))
    try:
        directory.chmod(0o755)
        private = directory / "private"
        private.mkdir(mode=0o700)
        agent = Agent(directory / "agent", spool_path=str(private / "spool.db")).start()
        try:
            for command in (["status", "--check"], ["status", "--json"], ["dlq", "list"], ["queue", "peek"]):
                result = subprocess.run([setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", agent_binary(),
                                         *command, "--config", agent.config_path], capture_output=True, timeout=60)
                said = (result.stdout + result.stderr).decode()
                assert result.returncode == 65, (command, result.returncode, said)
                assert "permission denied on the spool's directory" in said and "never ran" not in said, (command, said)
        finally:
            assert agent.stop() == 0, agent.log()[-3000:]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
