import os
import sys

# Make `harness` and `stream_emulator` importable from the tests.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
