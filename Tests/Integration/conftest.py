import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_harness import Agent  # noqa: E402


@pytest.fixture
def agent(tmp_path):
    running = Agent(tmp_path / "agent").start()
    yield running
    running.stop_and_assert_clean()
