#!/usr/bin/env python
"""Run tests/test_cuda.py without pytest, or turn a pytest run's results into the same JSON.

The GPU machine may have no pytest. The CUDA tests are plain functions (at most a ``tmp_path``
argument, skips raised as unittest.SkipTest), so this runner imports the file, calls every
``test_*`` function in order and reports each as passed, failed or skipped, with its time and, for a
failure, the end of its traceback. Either way it writes one JSON file that bench/gpu_check.sh's
summary reads, and prints a closing line like pytest's.

examples:
  python bench/run_cuda_tests.py --json out/cuda_tests.json
  python bench/run_cuda_tests.py --no-pytest --filter tiled,memory   # as if pytest were not installed
  python bench/run_cuda_tests.py --from-junit junit.xml --log pytest.log --json out/cuda_tests.json
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import re
import shutil
import sys
import tempfile
import time
import traceback
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_FILE = ROOT / "tests" / "test_cuda.py"


def is_skip(exc: BaseException) -> bool:
    # pytest.skip raises _pytest.outcomes.Skipped (a BaseException); ours raise unittest.SkipTest
    return isinstance(exc, unittest.SkipTest) or type(exc).__name__ == "Skipped"


def run_tests(names: list[str] | None, no_pytest: bool) -> list[dict]:
    if no_pytest:
        sys.modules["pytest"] = None  # `import pytest` now raises ImportError, as where it is not installed
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("test_cuda", TEST_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    tests = [(n, f) for n, f in vars(module).items() if n.startswith("test_") and inspect.isfunction(f)]
    if names:
        tests = [(n, f) for n, f in tests if any(part in n for part in names)]
    results = []
    for name, fn in tests:
        started = time.perf_counter()
        row = {"name": name, "outcome": "passed", "seconds": 0.0, "message": ""}
        if not module.ENABLED:
            row.update(outcome="skipped", message=module.SKIP_REASON)
            results.append(row)
            print(f"tests/test_cuda.py::{name} SKIPPED ({module.SKIP_REASON})", flush=True)
            continue
        # as pytest -v prints them, so that a run cut short can still be read from its log
        print(f"tests/test_cuda.py::{name} ...", flush=True)
        tmp = None
        try:
            kwargs = {}
            if "tmp_path" in inspect.signature(fn).parameters:
                tmp = Path(tempfile.mkdtemp(prefix=f"{name}-"))
                kwargs["tmp_path"] = tmp
            fn(**kwargs)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - a test's failure, whatever it raised
            if is_skip(exc):
                row.update(outcome="skipped", message=str(exc))
            else:
                row.update(outcome="failed",
                           message="".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-3000:])
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)  # checkpoints of the real networks are large
        row["seconds"] = round(time.perf_counter() - started, 2)
        results.append(row)
        print(f"tests/test_cuda.py::{name} {row['outcome'].upper()} ({row['seconds']:.1f} s)", flush=True)
        if row["outcome"] == "failed":
            print(row["message"], flush=True)
    return results


def from_junit(path: Path, log: Path | None) -> list[dict]:
    """The results of ``pytest --junitxml``; without the file (pytest killed), what ``pytest -v`` had
    printed of each test so far."""
    if path.is_file():
        import xml.etree.ElementTree as ET

        results = []
        for case in ET.parse(path).getroot().iter("testcase"):
            row = {"name": case.get("name"), "outcome": "passed", "seconds": float(case.get("time", 0)),
                   "message": ""}
            for tag, outcome in (("failure", "failed"), ("error", "failed"), ("skipped", "skipped")):
                found = case.find(tag)
                if found is not None:
                    row.update(outcome=outcome, message=((found.get("message") or "") + "\n"
                                                         + (found.text or ""))[-3000:])
                    break
            results.append(row)
        return results
    results = {}
    if log is not None and log.is_file():
        # pytest -v prints "test_cuda.py::NAME " as a test starts and its outcome when it ends: a name
        # without an outcome is the test the time limit cut short
        for m in re.finditer(r"test_cuda\.py::(\w+)(?: (PASSED|FAILED|SKIPPED|ERROR))?", log.read_text(errors="replace")):
            if m.group(2):
                outcome = {"PASSED": "passed", "SKIPPED": "skipped"}.get(m.group(2), "failed")
                results[m.group(1)] = {"name": m.group(1), "outcome": outcome, "seconds": None, "message": "from the log"}
            elif m.group(1) not in results:
                results[m.group(1)] = {"name": m.group(1), "outcome": "failed", "seconds": None,
                                       "message": "cut short: the part ran out of time during this test"}
    return list(results.values())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--json", default=None, metavar="FILE", help="write the results here")
    p.add_argument("--filter", default="", metavar="A,B", help="only tests whose names contain one of these")
    p.add_argument("--no-pytest", action="store_true", help="make `import pytest` fail, as where it is missing")
    p.add_argument("--from-junit", default=None, metavar="XML", help="convert a pytest --junitxml file instead")
    p.add_argument("--log", default=None, metavar="FILE", help="with --from-junit: pytest -v's output, if the XML is missing")
    p.add_argument("--require-run", action="store_true", help="fail when no test ran (all skipped: no CUDA)")
    args = p.parse_args(argv)
    names = [n for n in args.filter.split(",") if n]
    if args.from_junit:
        junit, log = Path(args.from_junit), Path(args.log) if args.log else None
        if not junit.is_file() and not (log and log.is_file()):  # nothing to read: not "0 passed, 0 failed"
            print(f"error: {junit}: no such file, and " + (f"the --log {log} is missing too" if log else
                  "no --log of pytest -v's output to read the outcomes from instead"), file=sys.stderr)
            return 2
        results, runner = from_junit(junit, log), "pytest"
    else:
        results, runner = run_tests(names, args.no_pytest), "bench/run_cuda_tests.py"
    counts = {k: sum(r["outcome"] == k for r in results) for k in ("passed", "failed", "skipped")}
    report = {"runner": runner, **counts, "tests": results}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"{counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    if counts["failed"] or not results:
        return 1
    if args.require_run and counts["passed"] == 0:
        print("no CUDA test ran", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
