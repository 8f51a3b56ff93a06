"""bench/gpu_check.sh --dry-run: every part of the GPU check runs on the CPU at tiny sizes, and the
script reports each part and goes on when one fails, with or without pytest."""
import csv
import json
import os
import subprocess
import sys
import tarfile

import pytest

from helpers import ROOT

PARTS = ["env", "cuda_tests", "speed", "compile", "inference", "profile", "quality"]


def gpu_check(*args, env=None, timeout=300):
    # the interpreter that runs the tests, not whichever python3 is first on PATH (a venv not activated)
    return subprocess.run(["bash", "bench/gpu_check.sh", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable,
                                                **(env or {})})


@pytest.mark.slow
def test_dry_run_runs_every_part_and_writes_its_outputs(tmp_path):
    out = tmp_path / "check"
    result = gpu_check("--dry-run", str(out))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "dry"
    assert [(p["part"], p["status"]) for p in summary["parts"]] == [(p, "pass") for p in PARTS]
    # reported, not bounded (how long is the machine's business), but it must be the parts' time, run one
    # after another (each part's seconds are whole, so each may round down by up to one)
    assert summary["elapsed_s"] >= sum(p["seconds"] for p in summary["parts"]) - len(PARTS)
    text = (out / "summary.md").read_text()
    assert "Dry run on the CPU" in text and "## Targets" in text
    for part in PARTS:
        assert f"| {part} | pass |" in text
        assert (out / part / f"{part}.log").is_file()

    assert json.loads((out / "env" / "env.json").read_text())["torch"]
    tests = json.loads((out / "cuda_tests" / "cuda_tests.json").read_text())
    assert tests["runner"] == "pytest" and tests["failed"] == 0 and tests["passed"] >= 8
    # only the CUDA-graph tests may skip in the rehearsal: a CPU cannot capture
    assert all("captured" in t["name"] for t in tests["tests"] if t["outcome"] == "skipped"), tests["tests"]
    assert tests["skipped"] == 2
    measured = [json.loads(line) for line in (out / "cuda_tests" / "measurements.jsonl").read_text().splitlines()]
    assert {m["test"] for m in measured} >= {"step_vs_cpu_float64", "bf16_vs_fp32", "channels_last", "tiled_inference",
                                             "out_of_memory_fallback", "loader", "train_resume_test", "torchrun_nccl"}
    speed = json.loads((out / "speed" / "speed.json").read_text())
    assert {r["variant"] for r in speed["training"]} >= {
        "reference structure, fp32", "fast step, fp32", "fast step, bf16 autocast + channels_last",
        "the same, the non-finite checks on the host (as before the device-side guard)"}
    compiled = json.loads((out / "compile" / "compile.json").read_text())
    assert [r["variant"] for r in compiled["training"]] == ["fast bf16 + each attention block compiled"]
    assert any(r["precision"].endswith("blocks compiled") for r in compiled["inference"])
    assert (out / "speed" / "speed.md").read_text().count("|") > 20 and (out / "speed" / "speed.png").is_file()
    inference = json.loads((out / "inference" / "inference.json").read_text())
    assert {r["size"] for r in inference["inference"]} == {64, 128} and not inference["training"]
    profile = json.loads((out / "profile" / "profile.json").read_text())
    assert [v["variant"] for v in profile["variants"]] == ["fast-bf16", "inference"]
    assert all(v["top"] for v in profile["variants"]) and (out / "profile" / "trace-inference.json.gz").is_file()
    # the quality part: SR (the dry run's first task) with SOT against OT, and SOT with --null-space
    rows = list(csv.DictReader((out / "quality" / "sr" / "results.csv").open()))
    assert [r["method"] for r in rows][1:] == ["OT", "SOT-l0.5", "SOT-l0.5 null-space"]
    for name in ("crops.png", "curves.png", "results.md", "quality_meta.json"):
        assert (out / "quality" / "sr" / name).is_file(), name
    assert len(list((out / "quality" / "sr").glob("metrics-*.jsonl"))) == 3
    assert "### sr" in text and "SOT also with --null-space" in text

    with tarfile.open(out / "gpu_check.tar.gz") as bundle:
        names = set(bundle.getnames())
    assert {"./summary.md", "./cuda_tests/cuda_tests.json", "./speed/speed.json", "./quality/sr/crops.png",
            "./profile/profile.md", "./gpu_check.log"} <= names
    assert not any(n.endswith((".pt", ".h5")) for n in names)


@pytest.mark.slow
def test_without_pytest_a_part_out_of_time_does_not_stop_the_rest(tmp_path):
    """The CUDA tests through bench/run_cuda_tests.py (as where pytest is missing), a part that runs
    out of time reported as such, the part after it still run, and --bundle's four files."""
    out = tmp_path / "bundle"
    result = gpu_check("--dry-run", "--bundle", "--parts", "cuda_tests,speed,inference",
                       "--tests-filter", "channels_last,tiled", str(out),
                       env={"GPU_CHECK_PYTEST": "0", "GPU_CHECK_LIMIT_speed": "1"})
    assert result.returncode == 1, result.stdout[-4000:]
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.log", "gpu_check.tar.gz", "summary.json", "summary.md"]
    summary = json.loads((out / "summary.json").read_text())
    assert [(p["part"], p["status"]) for p in summary["parts"]] == [("cuda_tests", "pass"), ("speed", "timeout"),
                                                                     ("inference", "pass")]
    assert "pytest is not importable" in (out / "gpu_check.log").read_text()
    with tarfile.open(out / "gpu_check.tar.gz") as bundle:
        tests = json.load(bundle.extractfile("./cuda_tests/cuda_tests.json"))
        assert "./inference/inference.json" in bundle.getnames()
    assert tests["runner"] == "bench/run_cuda_tests.py"
    assert sorted(t["name"] for t in tests["tests"] if t["outcome"] == "passed") == [
        "test_channels_last_on_and_off_agree", "test_tiled_inference_matches_untiled"]


def test_from_junit_without_the_file_is_one_line_and_status_2(tmp_path, capsys):
    """--from-junit on a file that is not there printed '0 passed, 0 failed, 0 skipped'."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_cuda_tests", ROOT / "bench" / "run_cuda_tests.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    missing = tmp_path / "junit.xml"
    assert runner.main(["--from-junit", str(missing), "--json", str(tmp_path / "out.json")]) == 2
    assert capsys.readouterr() == ("", f"error: {missing}: no such file, and no --log of pytest -v's output to read "
                                       "the outcomes from instead\n")
    assert runner.main(["--from-junit", str(missing), "--log", str(tmp_path / "pytest.log")]) == 2
    assert capsys.readouterr().err == f"error: {missing}: no such file, and the --log {tmp_path / 'pytest.log'} is missing too\n"
    assert not (tmp_path / "out.json").exists()
    (tmp_path / "pytest.log").write_text("tests/test_cuda.py::test_a PASSED\n")  # pytest killed: the log is read
    assert runner.main(["--from-junit", str(missing), "--log", str(tmp_path / "pytest.log")]) == 0
    assert capsys.readouterr().out == "1 passed, 0 failed, 0 skipped\n"
