#!/usr/bin/env python3
"""Query an emulator lake directly (when the emulator is NOT running: DuckDB locks the catalog).

    python3 Tests/Emulator/query.py --lake ./.lake "SELECT * FROM lake.bronze.events LIMIT 10"

While the emulator runs, use its endpoint instead:
    curl -s -d '{"sql":"SELECT count(*) FROM lake.bronze.events"}' http://127.0.0.1:8765/_admin/query
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import duckdb  # noqa: E402

from stream_emulator.lake import ducklake_extension_path  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lake", default="./.lake")
    p.add_argument("sql", nargs="?", default="SHOW ALL TABLES")
    a = p.parse_args()
    lake = os.path.abspath(a.lake)
    con = duckdb.connect(config={"autoinstall_known_extensions": False})
    con.execute(f"LOAD '{ducklake_extension_path()}'")
    con.execute(f"ATTACH 'ducklake:{lake}/catalog.ducklake' AS lake (DATA_PATH '{lake}/data/', READ_ONLY)")
    con.execute("USE lake")
    con.sql(a.sql).show(max_rows=100, max_width=200)


if __name__ == "__main__":
    main()
