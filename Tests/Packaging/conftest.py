"""The shipped forms of definite-agent: the Debian package, the OCI image, the Kubernetes manifest.

They are made from the release build (`make build`), by the same scripts an operator runs
(scripts/package-deb, scripts/build-image); `scripts/check-packaging` runs this suite in CI."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT / "Tests" / "Integration", ROOT / "Tests" / "Emulator"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

RELEASE_BINARY = Path(os.environ.get("BIN", ROOT / ".build" / "release" / "definite-agent"))


def run(*args, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """A command with its output captured as text; on failure the assertion shows both streams."""
    kwargs.setdefault("timeout", 300)
    if "input" not in kwargs:
        kwargs["stdin"] = subprocess.DEVNULL
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)
    if check:
        assert result.returncode == 0, f"{' '.join(map(str, args))} exited {result.returncode}\n" \
                                       f"{result.stdout}\n{result.stderr}"
    return result


def require_tools(*tools: str) -> None:
    """Skips the test where a tool it needs is missing (scripts/install-deps installs them all)."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"not installed here: {', '.join(missing)} (scripts/install-deps installs them)")


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"{what} needs root")


@pytest.fixture(scope="session")
def release_binary() -> Path:
    """The release build, with its commit and build date: what the package and the image carry."""
    if not RELEASE_BINARY.is_file():
        pytest.fail(f"{RELEASE_BINARY} not found: run `make build` first")
    for made in (ROOT / ".build/share/man/definite-agent.1", ROOT / ".build/share/completions/definite-agent.bash"):
        if not made.is_file():
            pytest.fail(f"{made} not found: run `make build` first")
    return RELEASE_BINARY


@pytest.fixture(scope="session")
def version(release_binary) -> str:
    return run(release_binary, "--version").stdout.split()[0]
