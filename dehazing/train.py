#!/usr/bin/env python
"""Train SOT for dehazing. `python dehazing/train.py --help` lists the flags."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.cli.train import train_main  # noqa: E402

if __name__ == "__main__":
    train_main("dehazing")
