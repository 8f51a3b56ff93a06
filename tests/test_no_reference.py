"""The no-reference score (common.evaluation.no_reference) and the choice of sigma made with it
(common.training.choice): the score must order degradations as their strength orders them, find the
clean image between too little and too much restoration, and not depend on anything but the images."""
from __future__ import annotations

import json

import numpy as np
import pytest

from common.data.degrade import add_haze, imresize, rain_streaks
from common.demo import HELDOUT_PHOTOS, TRAIN_PHOTOS, centre_crop, load_photo
from common.evaluation.no_reference import (MEASURED_REGRET, TRAINED_ON_CAVEAT, TRUSTED_REGRET, UNTRUSTED, CleanReference,
                                            SetScore, score_reliability)
from common.system.errors import InputError
from common.training.choice import recommendation_line, recommended, sigma_choices


@pytest.fixture(scope="module")
def halves():
    """Nine photographs cut in two: the clean reference is made of the left halves, the images scored
    are the right halves (the same kinds of scene, not the same pixels, as with a training set's clean
    side)."""
    photos = [centre_crop(load_photo(name), 192) for name in TRAIN_PHOTOS + HELDOUT_PHOTOS]
    return CleanReference.from_images([p[:, :96] for p in photos], "left halves"), [p[:, 96:] for p in photos]


def haze(img, strength):
    return add_haze(img, np.random.default_rng(1), beta=strength, airlight=0.85) if strength else img


def rain(img, strength):
    layer = rain_streaks(img.shape[:2], np.random.default_rng(1), "heavy")[0][:, :, None]
    return np.clip(1 - (1 - img) * (1 - strength * layer), 0, 1).astype(np.float32)


def blur(img, strength):  # downsampled by ``strength`` and back: what x4 SR's input lacks
    if not strength:
        return img
    return np.clip(imresize(imresize(img, 1 / strength), output_shape=img.shape[:2]), 0, 1).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("degrade, strengths", [(haze, (0, 0.5, 1, 2)), (rain, (0, 0.5, 1, 1.5)),
                                                (blur, (0, 2, 3, 4))])
def test_the_score_rises_with_the_degradations_strength(halves, degrade, strengths):
    """Measured (halves of 192x192 crops): haze 0.165 (clean), 0.309, 0.502, 0.730; rain 0.165, 0.240,
    0.372, 0.537; downsampling 0.165, 0.172, 0.202, 0.234. Mild blur is the score's weak spot: on halves
    of 128x128 crops, downsampling by 2 and 3 scored 0.197 and 0.217 against the clean images' 0.220."""
    reference, images = halves
    scores = [reference.score([degrade(img, s) for img in images]) for s in strengths]
    assert all(a < b for a, b in zip(scores, scores[1:])), scores


@pytest.mark.slow
@pytest.mark.parametrize("degrade, strength", [(haze, 1), (rain, 1), (blur, 3)])
def test_over_restoring_past_clean_raises_the_score_again(halves, degrade, strength):
    """A restoration that overshoots (the clean image minus a share of what the degradation added:
    more contrast and saturation than clean, dark anti-streaks, over-sharpened edges) must score worse
    than the clean image, and worse the further it goes: the score's minimum is where restoration
    should stop, which is what choosing a checkpoint or a sigma by it relies on."""
    reference, images = halves
    scores = [reference.score([np.clip(img - share * (degrade(img, strength) - img), 0, 1).astype(np.float32)
                               for img in images]) for share in (0, 0.5, 1)]
    assert scores[0] < scores[1] < scores[2], scores


@pytest.mark.slow
def test_the_score_is_deterministic_and_ignores_the_order_of_the_images(halves):
    reference, images = halves[0], halves[1][:3]
    assert reference.score(images) == reference.score(images[::-1]) == reference.score(list(images))
    again = CleanReference.from_images(halves[1][3:5], "right halves")
    assert again.score(images) == CleanReference.from_images(halves[1][3:5], "right halves").score(images)
    scores = SetScore(reference, expected=len(images))
    per_image = [scores.add(img) for img in images]
    assert scores.total() == pytest.approx(reference.score(images), rel=1e-6)
    assert per_image == [reference.image_score(img) for img in images]
    assert all(np.isfinite(per_image)) and min(per_image) > 0


def test_images_too_small_for_the_coarse_levels_are_scored_on_the_fine_ones(halves):
    reference, _ = halves
    small = np.random.default_rng(0).random((12, 12, 3)).astype(np.float32)
    assert np.isfinite(reference.image_score(small))  # 12 pixels: only the finest level has 7x7 neighbourhoods
    with pytest.raises(InputError, match="tiny.*at least 7 pixels"):
        CleanReference.from_images([small[:5, :5]], "tiny")


def test_how_far_the_score_can_be_trusted_is_what_the_study_measured_for_the_task_and_reference(halves):
    reference, images = halves
    trained_on = CleanReference.from_images(images, "the training set", trained_on=True)
    assert score_reliability(trained_on) == TRAINED_ON_CAVEAT and "--clean" in TRAINED_ON_CAVEAT
    assert score_reliability(reference) != TRAINED_ON_CAVEAT
    for (task, on), regrets in MEASURED_REGRET.items():
        said = score_reliability(trained_on if on else reference, task)
        assert said.startswith("NOT to be trusted") == (max(regrets) > TRUSTED_REGRET or task in UNTRUSTED), said
        figure = f"{max(regrets):.1f} dB" if max(regrets) > TRUSTED_REGRET else f"{max(regrets):.2f} dB"
        assert (f"the {task} checkpoints it chose" in said and figure in said) or UNTRUSTED.get(task, "\0") in said


def _sigma_folder(root, sigma, records, best=True):
    folder = root / f"sigma-{sigma:g}"
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if best:
        (folder / "best.pt").write_bytes(b"")
    return folder


def test_a_sweep_recommends_the_sigma_whose_best_checkpoint_scores_closest_to_clean(tmp_path):
    val = {"kind": "val", "select_by": "no-reference", "reference_trained_on": False}
    _sigma_folder(tmp_path, 100, [{**val, "step": 50, "score": 0.40, "psnr": 20.0, "kept": True},
                                  {**val, "step": 100, "score": 0.45, "psnr": 21.0, "kept": False}])
    _sigma_folder(tmp_path, 10, [{**val, "step": 50, "score": 0.35, "psnr": 19.0, "kept": True},
                                 {"kind": "train", "step": 60},
                                 {**val, "step": 100, "score": 0.30, "psnr": 18.5, "kept": True}])
    _sigma_folder(tmp_path, 1, [{**val, "step": 50, "score": 0.10, "kept": True}], best=False)  # best.pt gone
    choices = sigma_choices(tmp_path)
    assert [(c.sigma, c.step, c.score) for c in choices] == [(10, 100, 0.30), (100, 50, 0.40)]
    assert recommended(choices).sigma == 10
    line = recommendation_line(choices)
    assert line.startswith(f"recommended: {tmp_path / 'sigma-10' / 'best.pt'} (sigma 10, step 100")
    assert f"by validation PSNR: {tmp_path / 'sigma-100' / 'best.pt'} (sigma 100, 20.00 dB, against 18.50 dB" in line
    assert TRAINED_ON_CAVEAT not in line and ("chosen without ground truth: measured against PSNR on the demos' data "
                                              "only (docs/RESULTS.md, \"Choosing without ground truth\")); by" in line)
    assert recommendation_line(choices[:1]) is None  # one sigma: nothing to choose between


def test_a_recommendation_against_the_training_sets_clean_side_says_it_is_not_to_be_trusted(tmp_path):
    val = {"kind": "val", "select_by": "no-reference", "reference_trained_on": True, "kept": True, "step": 10}
    _sigma_folder(tmp_path, 3, [{**val, "score": 0.2}])
    _sigma_folder(tmp_path, 30, [{**val, "score": 0.3}])
    assert recommendation_line(sigma_choices(tmp_path)).endswith(f"chosen without ground truth: {TRAINED_ON_CAVEAT})")
    for sigma in (3, 30):  # a dehazing run: what the study measured for dehazing against its training set
        (tmp_path / f"sigma-{sigma}" / "config.json").write_text(json.dumps({"task": "dehazing"}))
    assert "NOT to be trusted alone: in the study (docs/RESULTS.md) the dehazing checkpoints it chose against the " \
           "training set's clean side were up to 3.5 dB behind" in recommendation_line(sigma_choices(tmp_path))


@pytest.mark.slow
def test_validation_without_ground_truth_keeps_best_pt_by_the_score_and_a_sweep_recommends_a_sigma(
        tmp_path, monkeypatch, capsys):
    """--val-input without --val-gt: every validation measures the no-reference score against --val-clean
    (other photographs than the validation ones), best.pt is the checkpoint of the lowest score (weights
    and record), a resume carries that best on, and the two-sigma run ends recommending one of them."""
    import torch

    from common.cli.train import train_main
    from common.training.checkpoint import read_checkpoint
    from helpers import brightened_set, smooth_photos, write_images

    brightened_set(tmp_path, monkeypatch, paired=False)
    write_images(tmp_path / "clean", smooth_photos(8, 4))
    flags = ["--trainset", str(tmp_path / "train"), "--loss", "sot-l0.5", "--sigma", "10", "1", "--critic-init",
             "kaiming", "--critic-width", "8", "--init", "identity", "--batchSize", "8", "--lr", "1e-4", "--seed",
             "0", "--gen-width", "8", "--gen-increment", "8", "--val-input", str(tmp_path / "in"), "--val-clean",
             str(tmp_path / "clean"), "--val-steps", "5", "--max-steps", "20", "--out", str(tmp_path / "runs"),
             "--name", "r", "--device", "cpu", "--no-tensorboard"]
    train_main("deraining", flags)
    first = capsys.readouterr().out
    train_main("deraining", ["--resume", "auto", "--name", "r", "--out", str(tmp_path / "runs"), "--max-steps", "30"])
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "deraining" / "r"
    for sigma in ("10", "1"):
        folder = run / f"sigma-{sigma}"
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        val = [r for r in records if r["kind"] == "val"]
        assert len(val) == 6 and all(r["psnr"] is None and r["select_by"] == "no-reference" for r in val)
        assert all(r["reference_trained_on"] is False and r["score"] > 0 and r["input_score"] > 0 for r in val)
        best = min(val, key=lambda r: r["score"])
        running = [min(r["score"] for r in val[:i + 1]) for i in range(len(val))]
        assert [r["kept"] for r in val] == [r["score"] == m for r, m in zip(val, running)]
        assert [r["best_score"] for r in val] == running  # the resume started from the best before it
        kept = read_checkpoint(folder / "best.pt")
        assert kept["step"] == best["step"] and kept["best_score"] == best["score"] and kept["best_psnr"] is None
        at_step = folder / f"step-{best['step']:08d}.pt"
        if at_step.is_file():  # the same weights as the step's own checkpoint
            assert torch.equal(read_checkpoint(at_step)["generator"]["shallow.0.weight"],
                               kept["generator"]["shallow.0.weight"])
    assert "validation no-reference score" in first and "PSNR" not in first.split("validation")[1].split("\n")[0]
    line = next(line for line in out.splitlines() if line.startswith("recommended: "))
    assert str(run / "sigma-") in line and "chosen without ground truth" in line and "by validation PSNR" not in line


def test_validation_without_ground_truth_cannot_be_kept_by_psnr_nor_scored_against_itself(tmp_path, capsys):
    from common.cli.train import train_main
    from helpers import write_h5, write_photos

    trainset = tmp_path / "train"
    patches = np.random.default_rng(0).integers(0, 256, (2, 3, 128, 128), dtype=np.uint8)
    write_h5(trainset / "t.h5", patches, patches)
    val = write_photos(tmp_path / "val")
    base = ["--trainset", str(trainset), "--batchSize", "2", "--val-input", str(val), "--out", str(tmp_path / "runs"), "--device", "cpu",
            "--no-tensorboard"]
    for extra, message in ((["--select-by", "psnr"], "--select-by psnr keeps best.pt by validation PSNR"),
                           (["--val-clean", str(val)], "is the --val-input folder")):
        with pytest.raises(SystemExit) as stop:
            train_main("deraining", base + extra)
        assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_test_py_without_ground_truth_says_whether_the_model_helped_and_against_what(tmp_path, capsys):
    """With --clean: each image's score and its input's, the set's, how many got closer to clean, in the
    terminal and metrics.csv. Without --clean, the checkpoint's training set where it still is (with the
    warning that the model imitated it), and where it is gone a note saying what to give."""
    from common.cli.test import test_main as run_test_script
    from helpers import generator_checkpoint, write_h5, write_photos

    write_photos(tmp_path / "in", ["a.png", "b.png"], side=40)
    write_photos(tmp_path / "clean", ["x.png", "y.png"], side=64, seed=3)
    patches = np.random.default_rng(0).integers(0, 256, (3, 3, 64, 64), dtype=np.uint8)
    write_h5(tmp_path / "train" / "t.h5", patches, patches)
    generator_checkpoint(tmp_path / "g.pt", task="deraining", config={"trainset": str(tmp_path / "train")})
    common = ["--checkpoint", str(tmp_path / "g.pt"), "--input", str(tmp_path / "in"), "--device", "cpu",
              "--no-report"]

    run_test_script("deraining", common + ["--clean", str(tmp_path / "clean"), "--save", str(tmp_path / "r1")])
    out = capsys.readouterr().out
    assert "no-reference score of the images together (lower is closer to clean): rainy input" in out
    # what the study measured for deraining against photographs of other scenes
    assert f"(against 2 clean images in {tmp_path / 'clean'}; NOT to be trusted alone: in the study" in out
    csv = (tmp_path / "r1" / "metrics.csv").read_text().splitlines()
    assert csv[0] == "name,score,input_score" and [line.split(",")[0] for line in csv[1:]] == ["a", "b", "mean"]

    run_test_script("deraining", common + ["--save", str(tmp_path / "r2")])
    out = capsys.readouterr().out
    assert "(against 3 clean patches of the training set; in the study (docs/RESULTS.md) the deraining " \
           "checkpoints it chose against the training set's clean side were at most" in out

    (tmp_path / "train" / "t.h5").rename(tmp_path / "t.h5")
    (tmp_path / "train").rmdir()
    run_test_script("deraining", common + ["--save", str(tmp_path / "r3")])
    captured = capsys.readouterr()
    assert "its training set is not where the checkpoint says" in captured.err and "--clean DIR" in captured.err
    assert "no-reference score" not in captured.out and not (tmp_path / "r3" / "metrics.csv").exists()

    with pytest.raises(SystemExit) as refused:  # the inputs as their own clean reference
        run_test_script("deraining", common + ["--clean", str(tmp_path / "in"), "--save", str(tmp_path / "r4")])
    assert refused.value.code == 2 and "is the --input folder" in capsys.readouterr().err
    assert not (tmp_path / "r4").exists()
