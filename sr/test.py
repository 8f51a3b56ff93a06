#!/usr/bin/env python
"""Test an SOT x4 super-resolution checkpoint. `python sr/test.py --help` lists the flags."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.cli.test import test_main  # noqa: E402

if __name__ == "__main__":
    test_main("sr")
