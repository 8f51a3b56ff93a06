"""common.restore_image and common.Restorer: one image restored from Python exactly as test.py restores
each of a folder's, whatever the task; SR's low-resolution input comes back 4x larger."""
import numpy as np
import pytest
import torch

import common
from common.data.images import read_image, to_uint8
from common.data.pairs import Pair
from common.evaluation.evaluate import evaluate
from common.system.errors import InputError
from common.tasks import TASKS
from common.training.checkpoint import load_generator
from helpers import generator_checkpoint, write_photos


def as_test_py_writes(checkpoint, image_path, task, tmp_path, **options):
    """The 8-bit image test.py writes for ``image_path`` (its evaluate(), as its main calls it)."""
    out = tmp_path / "written"
    evaluate(load_generator(checkpoint), [Pair("x", image_path, None)], TASKS[task], torch.device("cpu"),
             save_dir=out, progress=False, **options)
    return to_uint8(read_image(out / "x.png"))


def test_an_sr_input_comes_back_4x_larger_as_test_py_writes_it(tmp_path):
    """An LR image straight to the SR generator came back LR-sized where tasks.model_input was not called."""
    ckpt = generator_checkpoint(tmp_path / "g.pt", task="sr")
    photo = write_photos(tmp_path / "in", names=("lr.png",), side=10, wider=2) / "lr.png"
    restored = common.restore_image(ckpt, photo, device="cpu")
    assert restored.shape == (40, 48, 3) and restored.dtype == np.uint8
    assert np.array_equal(restored, as_test_py_writes(ckpt, photo, "sr", tmp_path))
    restore = common.Restorer(ckpt, device="cpu")  # loaded once: the array, as uint8 and as float, gives the same
    lr = to_uint8(read_image(photo))
    assert np.array_equal(restore(lr), restored)
    as_float = restore(lr / np.float32(255))
    assert as_float.dtype == np.float32 and as_float.shape == (40, 48, 3) and 0 <= as_float.min() <= as_float.max() <= 1
    assert np.array_equal(to_uint8(as_float), restored)
    # an input already at the output's size (the authors' test setup) is not upsampled again
    assert common.restore_image(ckpt, restored, device="cpu", prescaled=True).shape == (40, 48, 3)


def test_the_other_tasks_restore_at_the_inputs_size_tiles_and_transposition_included(tmp_path):
    photo = write_photos(tmp_path / "in", names=("p.png",), side=40, wider=8) / "p.png"
    for task, options in (("dehazing", {}), ("deraining", {"tile": 32, "tile_overlap": 8}),
                          ("deraining", {"transpose": True})):
        ckpt = generator_checkpoint(tmp_path / f"{task}.pt", task=task)
        restored = common.restore_image(ckpt, photo, device="cpu", **options)
        assert restored.shape == (40, 48, 3)
        assert np.array_equal(restored, as_test_py_writes(ckpt, photo, task, tmp_path, **options)), options


def test_the_authors_checkpoints_need_the_task_named_and_another_tasks_is_refused(authors_checkpoint, tmp_path):
    path, _, _ = authors_checkpoint
    image = np.full((16, 16, 3), 128, np.uint8)
    with pytest.raises(InputError, match="the authors' checkpoints record no task; give task= one of 'sr'"):
        common.Restorer(path, device="cpu")
    assert common.restore_image(path, image, task="deraining", device="cpu").shape == (16, 16, 3)
    ours = generator_checkpoint(tmp_path / "g.pt", task="dehazing")
    with pytest.raises(InputError, match="g.pt: trained for dehazing, not for x4 super-resolution; leave out task="):
        common.Restorer(ours, task="sr", device="cpu")


def test_the_checkpoints_upsampling_grid_is_followed(tmp_path):
    trained = generator_checkpoint(tmp_path / "a.pt", task="sr", config={"task": "sr", "align_corners": True})
    assert common.Restorer(trained, device="cpu").align_corners is True
    assert common.Restorer(trained, device="cpu", align_corners=False).align_corners is False
    assert common.Restorer(generator_checkpoint(tmp_path / "b.pt", task="sr"), device="cpu").align_corners is False


@pytest.mark.parametrize("image, error, words", [
    (np.zeros((8, 8), np.uint8), ValueError, r"H x W x 3 \(RGB\), not of shape \(8, 8\)"),
    (np.zeros((8, 8, 4), np.uint8), ValueError, r"not of shape \(8, 8, 4\)"),
    (np.full((8, 8, 3), 255.0), ValueError, "values in \\[0, 1\\], and this one's are 255 to 255; divide 8-bit values by 255"),
    (np.full((8, 8, 3), np.nan, np.float32), ValueError, "NaN or infinite"),
    (np.zeros((8, 8, 3), np.int64), ValueError, "uint8 or floats in \\[0, 1\\], not int64"),
    ([[[0, 0, 0]]], TypeError, "a file's path or a NumPy array, not list"),
], ids=["grayscale", "RGBA", "floats of 0-255", "NaN", "int64", "a list"])
def test_an_image_it_cannot_take_is_refused_saying_what_it_takes(tmp_path, image, error, words):
    restore = common.Restorer(generator_checkpoint(tmp_path / "g.pt", task="dehazing"), device="cpu")
    with pytest.raises(error, match=words):
        restore(image)


def test_options_of_the_wrong_kind_are_refused(tmp_path):
    ckpt = generator_checkpoint(tmp_path / "g.pt", task="dehazing")
    for options, words in (({"tile": 8}, "at least 32 pixels"), ({"precision": "fp16"}, "auto, bf16, fp32"),
                           ({"upscale": "lanczos"}, "pytorch, matlab"), ({"task": "denoising"}, "'sr', 'deraining'"),
                           ({"tile_overlap": -1}, "0 or more")):
        with pytest.raises(ValueError, match=words):
            common.Restorer(ckpt, device="cpu", **options)
    with pytest.raises(InputError, match="missing.pt: checkpoint not found"):
        common.restore_image(tmp_path / "missing.pt", np.zeros((8, 8, 3), np.uint8), device="cpu")
