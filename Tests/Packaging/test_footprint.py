"""The release daemon's footprint (issue 19): the installed binary, stripped by `make install`, is at most
25 MB and carries no Foundation (whose ICU data alone is ~30 MB); an idle daemon keeps at most 24 MiB
resident.

The binary links FoundationEssentials only. A dependency that imports all of Foundation (TOMLKit does)
must lend nothing to the agent's files (they build with MemberImportVisibility): one `String(format:)`
would link Foundation, and with it ICU, back in."""
from __future__ import annotations

import re
import time

from agent_harness import Agent
from conftest import ROOT, run

MAX_BINARY_BYTES = 25_000_000
MAX_IDLE_RSS_KIB = 24 * 1024

# Symbols of Foundation proper, FoundationInternationalization and ICU (`$s10Foundation…` is the module
# Foundation; FoundationEssentials is `$s20FoundationEssentials…`).
FOUNDATION_SYMBOL = re.compile(r"\$s10Foundation\d|\$s30FoundationInternationalization|icudt\d+_dat|\bicu_\d+::")


def test_the_installed_binary_is_small_and_carries_no_foundation(release_binary, tmp_path):
    run("make", "--no-print-directory", "install", f"DESTDIR={tmp_path}", f"BIN={release_binary}", cwd=ROOT)
    installed = tmp_path / "usr/local/bin/definite-agent"
    size = installed.stat().st_size
    print(f"installed binary: {size / 1e6:.1f} MB ({size / 2**20:.1f} MiB)")
    assert size <= MAX_BINARY_BYTES, f"the installed binary is {size:,} bytes, over {MAX_BINARY_BYTES:,}"
    # ICU's data file names itself (icudt76l/…) all through; Foundation's types name their module.
    contents = installed.read_bytes()
    assert b"icudt" not in contents, "the binary carries ICU's data: something links Foundation"
    assert b"10Foundation" not in contents, "the binary carries Foundation's types"
    linked = sorted(set(FOUNDATION_SYMBOL.findall(run("nm", release_binary).stdout)))
    assert not linked, f"the release build links Foundation or ICU: {linked[:10]}"
    run(installed, "--version")


def test_an_idle_daemon_keeps_little_resident(release_binary, tmp_path, monkeypatch):
    monkeypatch.setenv("DEFINITE_AGENT_BIN", str(release_binary))
    started = time.monotonic()
    agent = Agent(tmp_path / "agent").start()
    try:
        figures = []
        for after in (5, 15):
            time.sleep(max(0.0, started + after - time.monotonic()))
            figures.append((after, agent.rss_kib()))
        print("idle RSS: " + ", ".join(f"{kib / 1024:.1f} MiB after {after} s" for after, kib in figures))
        for after, kib in figures:
            assert kib <= MAX_IDLE_RSS_KIB, f"{kib / 1024:.1f} MiB resident {after} s after start, at idle"
    finally:
        agent.finish()
