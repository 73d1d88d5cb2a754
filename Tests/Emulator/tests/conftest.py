import itertools
import os

import pytest

from harness import Emulator

_counter = itertools.count()


@pytest.fixture(scope="session")
def emu_session():
    """One emulator for most tests: namespaces bronze,silver; keys test-key + second-key (+ env key)."""
    e = Emulator(api_keys=("test-key", "second-key"), namespaces=("bronze", "silver"),
                 env={"EMULATOR_API_KEYS": "env-key-1, env-key-2"})
    yield e
    e.stop()


@pytest.fixture
def emu(emu_session):
    """The shared emulator with faults reset before and after each test."""
    emu_session.reset_faults()
    yield emu_session
    emu_session.reset_faults()


@pytest.fixture
def table():
    """A fresh table name per test (tests share one lake)."""
    return f"bronze.t{os.getpid()}_{next(_counter)}"
