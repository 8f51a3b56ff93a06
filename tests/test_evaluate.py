import numpy as np
import pytest
import torch

from common.errors import InputError
from common.evaluate import evaluate
from common.images import read_image, write_image
from common.pairs import find_pairs
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
