#!/usr/bin/env python3
"""Local emulator of Definite's Stream API writing into a real DuckLake.

    python3 Tests/Emulator/emulator.py --listen 127.0.0.1:8765 --lake ./.lake --api-key test-key

See Tests/Emulator/README.md.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from stream_emulator.server import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
