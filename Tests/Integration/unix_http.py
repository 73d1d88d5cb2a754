"""HTTP over a Unix stream socket with the standard library (the agent's `[intake] http_socket`), through the
documented client example's connection class, so the tests and the example share one."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "docs" / "clients" / "python"))

from http_client import UnixHTTPConnection  # noqa: E402


def request(path: str, method: str, uri: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
    """One request on its own connection: (status, the JSON body)."""
    conn = UnixHTTPConnection(path, timeout=30)
    try:
        conn.request(method, uri, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()
