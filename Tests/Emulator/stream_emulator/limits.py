"""The Stream API limits and their exact definitions -- the ONE place they live.

definite-agent applies exactly these definitions before sending, so keep the
two in step. Reference: "Limits" in shared/reference/stream-api.md.

  MAX_BODY_BYTES  10 MB = 10,000,000 bytes, measured on the request body
                  AFTER decompression (a gzip body is inflated with a bounded
                  zlib.decompressobj and refused as soon as it passes this).
                  Over it -> 413 for the whole request.
  MAX_ROWS        50,000 records per request. Over it -> 413.
  MAX_FIELD_BYTES "field size" = the byte length of the compact JSON encoding
                  of a top-level field value of a row (for a string: its
                  UTF-8 byte length + 2 for the quotes; escapes are not
                  counted). A row with any field > 1,000,000 bytes is rejected
                  (that row only).
  MAX_DEPTH       "depth": a scalar has depth 0; an object or array has
                  1 + the max depth of its children (an empty one: 1). The row
                  object itself therefore has depth >= 1. A row with
                  depth > 10 is rejected (that row only).
"""

from __future__ import annotations

import orjson

MAX_BODY_BYTES = 10_000_000
MAX_ROWS = 50_000
MAX_FIELD_BYTES = 1_000_000
MAX_DEPTH = 10


def field_size(value) -> int:
    """Byte length of the compact JSON encoding of one field value."""
    if isinstance(value, str):
        # Fast path: a string whose worst-case UTF-8 size fits is not encoded.
        n = len(value)
        if n * 4 + 2 <= MAX_FIELD_BYTES:
            return n + 2  # lower bound; exact value not needed below the limit
        return len(value.encode("utf-8", "surrogatepass")) + 2
    if isinstance(value, (dict, list)):
        return len(orjson.dumps(value))
    if value is None:
        return 4
    if value is True:
        return 4
    if value is False:
        return 5
    return len(orjson.dumps(value)) if isinstance(value, float) else len(str(value))


def depth_exceeds(value, limit: int) -> bool:
    """True when depth(value) > limit (stops descending as soon as it knows)."""
    if isinstance(value, dict):
        if limit < 1:
            return True
        for v in value.values():
            if isinstance(v, (dict, list)) and depth_exceeds(v, limit - 1):
                return True
        return False
    if isinstance(value, list):
        if limit < 1:
            return True
        for v in value:
            if isinstance(v, (dict, list)) and depth_exceeds(v, limit - 1):
                return True
        return False
    return limit < 0


def depth(value) -> int:
    """Depth as defined above (used by tests and docs; the server uses depth_exceeds)."""
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def row_limit_violation(row: dict) -> str | None:
    """Reason a row breaks the field-size or depth limit, else None."""
    if depth_exceeds(row, MAX_DEPTH):
        return f"nesting depth exceeds {MAX_DEPTH}"
    for key, value in row.items():
        if value is None or value is True or value is False:
            continue
        if isinstance(value, (int, float)):
            continue
        if field_size(value) > MAX_FIELD_BYTES:
            return f"field '{key}' exceeds {MAX_FIELD_BYTES} bytes"
    return None
