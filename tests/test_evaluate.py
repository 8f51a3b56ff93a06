import numpy as np
import pytest
import torch

from common.data.images import read_image, write_image
from common.data.pairs import find_pairs
from common.evaluation.evaluate import evaluate
from common.system.errors import InputError
from common.tasks import TASKS


class Shift(torch.nn.Module):
    """A stand-in restorer with a known, direction-dependent output: each row takes the row above."""

    def forward(self, x):
        return torch.cat([x[..., :1, :], x[..., :-1, :]], dim=-2)


def test_evaluate_writes_images_and_csv_and_measures_the_written_pixels(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.random((16, 20, 3))
    write_image(tmp_path / "in" / "a.png", img)
    write_image(tmp_path / "gt" / "a.png", img)
    ev = evaluate(torch.nn.Identity(), find_pairs(tmp_path / "in", tmp_path / "gt"), TASKS["deraining"],
                  torch.device("cpu"), save_dir=tmp_path / "out", progress=False)
    row = ev.rows[0]
    assert row["psnr"] == 100.0 and row["ssim"] == pytest.approx(1.0) and row["lpips"] is None
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "a.png"), read_image(tmp_path / "in" / "a.png"))
    assert (tmp_path / "out" / "metrics.csv").read_text().splitlines()[-1].startswith("mean,100.0000,1.0000,n/a")


def test_transpose_swaps_height_and_width_around_g(tmp_path):
    rng = np.random.default_rng(1)
    write_image(tmp_path / "in" / "a.png", rng.random((12, 16, 3)))
    pairs = find_pairs(tmp_path / "in")
    plain = evaluate(Shift(), pairs, TASKS["deraining"], torch.device("cpu"), save_dir=tmp_path / "p", progress=False)
    swapped = evaluate(Shift(), pairs, TASKS["deraining"], torch.device("cpu"), save_dir=tmp_path / "t",
                       transpose=True, progress=False)
    x = read_image(tmp_path / "in" / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p" / "a.png")[1:], x[:-1])    # rows shifted
    np.testing.assert_array_equal(read_image(tmp_path / "t" / "a.png")[:, 1:], x[:, :-1])  # columns shifted
    assert plain.rows[0].keys() == swapped.rows[0].keys() == {"name"}


def test_sr_upsamples_and_crops_a_slightly_larger_ground_truth(tmp_path):
    rng = np.random.default_rng(2)
    write_image(tmp_path / "lr" / "a.png", rng.random((10, 12, 3)))
    write_image(tmp_path / "hr" / "a.png", rng.random((42, 50, 3)))  # 4x plus 2 rows and 2 columns
    ev = evaluate(torch.nn.Identity(), find_pairs(tmp_path / "lr", tmp_path / "hr"), TASKS["sr"],
                  torch.device("cpu"), save_dir=tmp_path / "out", progress=False)
    assert read_image(tmp_path / "out" / "a.png").shape == (40, 48, 3)
    assert ev.rows[0]["psnr"] == pytest.approx(ev.rows[0]["input_psnr"])  # identity: output is the bicubic input
    write_image(tmp_path / "hr" / "a.png", rng.random((60, 60, 3)))
    with pytest.raises(InputError, match="ground truth is 60x60 but the restored a.png is 48x40"):
        evaluate(torch.nn.Identity(), find_pairs(tmp_path / "lr", tmp_path / "hr"), TASKS["sr"],
                 torch.device("cpu"), progress=False)


def test_y_channel_metrics(tmp_path):
    grey = np.full((16, 16, 3), 0.5)
    write_image(tmp_path / "in" / "a.png", np.zeros((16, 16, 3)))
    write_image(tmp_path / "gt" / "a.png", grey)
    ev = evaluate(torch.nn.Identity(), find_pairs(tmp_path / "in", tmp_path / "gt"), TASKS["dehazing"],
                  torch.device("cpu"), y_channel=True, progress=False)
    diff = 128 / 255 * 219  # 0.5 is stored as 128/255; Y spans 219 levels
    assert ev.rows[0]["psnr"] == pytest.approx(20 * np.log10(255 / diff), abs=1e-6)


def test_matlab_upscale_equals_prescaling_with_imresize_and_differs_from_pytorch(tmp_path):
    """--upscale matlab feeds G what MATLAB's imresize x4 makes (the paper's test inputs), which is what
    --prescaled on such pre-upscaled images does; PyTorch's kernel (a = -0.75) gives another input."""
    from common.data.degrade import imresize

    rng = np.random.default_rng(3)
    lr = rng.random((10, 12, 3))
    write_image(tmp_path / "lr" / "a.png", lr)
    write_image(tmp_path / "hr" / "a.png", rng.random((40, 48, 3)))
    lr = read_image(tmp_path / "lr" / "a.png")
    write_image(tmp_path / "up" / "a.png", imresize(lr, 4))
    cpu, sr = torch.device("cpu"), TASKS["sr"]
    matlab = evaluate(torch.nn.Identity(), find_pairs(tmp_path / "lr", tmp_path / "hr"), sr, cpu,
                      upscale="matlab", save_dir=tmp_path / "m", progress=False)
    pre = evaluate(torch.nn.Identity(), find_pairs(tmp_path / "up", tmp_path / "hr"), sr, cpu, prescaled=True,
                   progress=False)
    pytorch = evaluate(torch.nn.Identity(), find_pairs(tmp_path / "lr", tmp_path / "hr"), sr, cpu, progress=False)
    assert matlab.rows[0]["input_psnr"] == pytest.approx(pre.rows[0]["input_psnr"], abs=1e-9)
    assert matlab.rows[0]["input_psnr"] != pytest.approx(pytorch.rows[0]["input_psnr"], abs=1e-3)
    np.testing.assert_array_equal(read_image(tmp_path / "m" / "a.png"), read_image(tmp_path / "up" / "a.png"))


class Overshoot(torch.nn.Module):
    """Pushes every value 0.2 past the input: above 1 where the input is bright."""

    def forward(self, x):
        return x + 0.2


def test_reference_metrics_crop_to_the_task_multiple_and_take_psnr_on_unclamped_floats(tmp_path):
    rng = np.random.default_rng(4)
    img = rng.random((40, 70, 3)) * 0.5 + 0.5  # bright: the overshoot leaves [0, 1]
    write_image(tmp_path / "in" / "a.png", img)
    write_image(tmp_path / "gt" / "a.png", img)
    pairs, cpu = find_pairs(tmp_path / "in", tmp_path / "gt"), torch.device("cpu")
    ours = evaluate(Overshoot(), pairs, TASKS["deraining"], cpu, save_dir=tmp_path / "o", progress=False)
    theirs = evaluate(Overshoot(), pairs, TASKS["deraining"], cpu, save_dir=tmp_path / "r", reference_metrics=True,
                      progress=False)
    assert read_image(tmp_path / "o" / "a.png").shape == (40, 70, 3)
    assert read_image(tmp_path / "r" / "a.png").shape == (32, 64, 3)  # multiples of 16, as their deraining test
    assert theirs.rows[0]["psnr"] == pytest.approx(20 * np.log10(1 / 0.2), abs=1e-6)  # every value off by 0.2
    assert ours.rows[0]["psnr"] > theirs.rows[0]["psnr"] + 1  # clamping hides part of the overshoot
    with pytest.raises(InputError, match="smaller than the 64-pixel multiple"):
        evaluate(Overshoot(), pairs, TASKS["dehazing"], cpu, reference_metrics=True, progress=False)


def test_tiles_cost_what_test_py_says(tmp_path, capsys):
    """--tile 64 took 412 s where no tiles took 21 s, without a word: test.py now says what tiles
    cost, and the figure bounds the pixels the generator is run on."""
    from common.cli.test import test_main as run_test_script
    from common.evaluation.inference import restore, tiled_work
    from helpers import generator_checkpoint, tiny_generator, write_photos

    g = tiny_generator().eval()
    areas = []
    g.register_forward_pre_hook(lambda module, args: areas.append(args[0].shape[-2] * args[0].shape[-1]))
    restore(g, torch.rand(1, 3, 128, 128), tile=64)
    assert areas == [96 * 96] * 8  # four tiles, each with 32 pixels of context inside the image, in two passes
    assert tiled_work(64, 32) == 8.0 and sum(areas) / (128 * 128) <= tiled_work(64, 32)  # borders have less context
    write_photos(tmp_path / "in", ["a.png"], side=32)
    run_test_script("deraining", ["--checkpoint", str(generator_checkpoint(tmp_path / "g.pt")), "--input",
                                  str(tmp_path / "in"), "--device", "cpu", "--no-report", "--no-score", "--tile", "64",
                                  "--save", str(tmp_path / "res")])
    assert ("note: --tile 64: each tile is restored with 32 pixels of context on every side, twice (a first pass "
            "gathers the channel attention's image-wide statistics): up to 8.0x the work of restoring an image whole; "
            "without --tile, an image is restored in tiles only where it does not fit in memory"
            in capsys.readouterr().err)
