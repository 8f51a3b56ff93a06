"""The task scripts end to end, as subprocesses, the way a user runs them."""
import json
import re
import re
import subprocess
import sys

import pytest

from common.data.images import read_image
from common.demo import HELDOUT_PHOTOS, TASK_DEMOS, WIDER_PHOTOS, photo_name
from common.tasks import TASKS
from helpers import ROOT, run_script


@pytest.mark.slow
@pytest.mark.parametrize("task", ["sr", "deraining", "dehazing"])
def test_demo_train_then_test(tmp_path, task):
    spec = TASKS[task]
    out = tmp_path / "checkpoints"  # test.py's default --out, from tmp_path
    # dehazing's keeps best.pt without looking at the ground truth; its verdict still scores it with it
    select = ["--select-by", "no-reference"] if task == "dehazing" else []
    train = run_script(f"{task}/train.py", "--demo", "--max-steps", "2", "--batchSize", "2", "--out", str(out),
                       "--seed", "1", "--no-tensorboard", *select)
    assert train.returncode == 0, train.stderr[-3000:]
    chose = "which chose best.pt by the no-reference score, not by their ground truth" if select else "which chose best.pt"
    assert f"validation photographs ({chose}): {spec.input_label}" in train.stdout
    assert "more held-out photographs (never trained on, never used to choose)" in train.stdout
    minutes = float(re.search(r"demo done in ([0-9.]+) min", train.stdout).group(1))
    assert minutes < 30  # the time it took (the restructuring had printed 29,941,339 min: seconds since 1970)
    # two steps restore nothing: the verdict says so, and SR's adds what was measured of it
    assert "verdict: does NOT restore" in train.stdout
    assert ("unsupervised x4 SR does not beat bicubic" in train.stdout) == (task == "sr")
    sigma = TASK_DEMOS[task].flags["sigma"]
    runs = list((out / task).glob(f"demo-*/sigma-{sigma:g}"))
    assert len(runs) == 1
    run = runs[0]
    for name in ("config.json", "last.pt", "best.pt", "metrics.jsonl", "samples/epoch-0001.png"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["sigma"] == sigma and config["seed"] == 1 and config["cost"] == spec.default_loss
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["kind"] for r in records] == ["train", "train", "val"]
    assert records[-1]["input_psnr"] > 10 and records[-1]["score"] > 0  # both measured, ground truth or not
    assert records[-1]["select_by"] == ("no-reference" if select else "psnr")

    save = tmp_path / "results"
    test = run_script(f"{task}/test.py", "--demo", "--out", str(out), "--save", str(save), "--y-channel")
    assert test.returncode == 0, test.stderr[-3000:]
    assert "mean: PSNR" in test.stdout and f"({spec.input_label}: PSNR" in test.stdout
    pngs = sorted(p.name for p in save.glob("*.png"))
    assert pngs == sorted([f"{photo_name(n)}.png" for n in WIDER_PHOTOS] + ["side_by_side.png"])
    picture = read_image(save / "side_by_side.png")  # input | restored | clean, one row per photograph
    assert picture.shape[0] > len(WIDER_PHOTOS) * 160 and picture.shape[1] > 3 * 160
    assert "image(s), worse on" in test.stdout  # how many improved, how many got worse, the worst
    assert f"side by side ({spec.input_label} | restored | clean)" in test.stdout
    csv_lines = (save / "metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("name,psnr,ssim,lpips,input_psnr") and csv_lines[-1].startswith("mean,")
    assert csv_lines[0].endswith(",score,input_score") and "no-reference score of the images together" in test.stdout

    if task == "dehazing":  # the README's picture: the command under it writes it, of the 3 validation photographs
        caption = re.search(r"\(`python (dehazing/test\.py [^`]*)`\s+writes this picture", (ROOT / "README.md").read_text())
        script, *argv = caption.group(1).split()
        readme = subprocess.run([sys.executable, str(ROOT / script), *argv, "--no-lpips", "--no-score", "--no-report"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert readme.returncode == 0, readme.stderr[-3000:]
        results = next((tmp_path / "results" / "dehazing").iterdir())
        assert sorted(p.name for p in results.glob("*.png")) == sorted([f"{n}.png" for n in HELDOUT_PHOTOS]
                                                                        + ["side_by_side.png"])

    if task == "sr":  # a demo that stopped part-way resumes as one, and gives its verdict at the end
        from common.training.config import read_run
        from common.training.loop import resume_command

        config, _ = read_run(run.parent / "run.json", spec)
        assert resume_command(spec, config).endswith(" --demo")  # what a stopped demo tells the user to run
        resumed = run_script("sr/train.py", "--demo", "--resume", "auto", "--out", str(out), "--max-steps", "3")
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        assert "demo resumed and done in" in resumed.stdout and "verdict: does NOT restore" in resumed.stdout


@pytest.mark.slow
def test_bad_input_is_one_line_and_exit_2(tmp_path):
    result = run_script("sr/train.py", "--trainset", str(tmp_path / "nothing"), "--max-steps", "1")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "nothing" in last
    assert "Traceback" not in result.stderr
    result = run_script("sr/test.py", "--checkpoint", str(tmp_path / "none.pt"), "--input", str(tmp_path))
    assert result.returncode == 2 and "checkpoint not found" in result.stderr


@pytest.mark.slow
def test_help_explains():
    for script in ("sr/train.py", "sr/test.py", "deraining/train.py", "dehazing/test.py"):
        result = run_script(script, "--help")
        assert result.returncode == 0 and "examples:" in result.stdout
