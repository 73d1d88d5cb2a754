"""Small helpers shared by the emulator tests."""

RESPONSE_FIELDS = ["success", "request_id", "stream_id", "table", "accepted", "successful_rows",
                   "rejected_rows", "partitions", "snapshot_id", "warnings", "errors"]


def fq(table: str) -> str:
    return "lake." + table


def check_shape(body: dict):
    """Exactly the documented response fields, in order."""
    assert list(body.keys()) == RESPONSE_FIELDS, body


def count(emu, table: str) -> int:
    return emu.scalar(f"SELECT count(*) FROM {fq(table)}")


def table_exists(emu, table: str) -> bool:
    ns, name = table.split(".")
    return bool(emu.scalar(
        "SELECT count(*) FROM information_schema.tables WHERE table_catalog = 'lake' "
        f"AND table_schema = '{ns}' AND lower(table_name) = lower('{name}')"))


def column_types(emu, table: str) -> dict:
    ns, name = table.split(".")
    return {r["column_name"]: r["data_type"] for r in emu.query(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_catalog = 'lake' "
        f"AND table_schema = '{ns}' AND lower(table_name) = lower('{name}') ORDER BY ordinal_position")}
