"""The demo's data: learnable (both sides from the same photographs), unpaired in training, held out in validation."""
import h5py
import numpy as np
import pytest

from common.data import UnpairedH5Dataset, UnpairedSampler
from common.h5format import cut_patches
from common.degrade import bicubic_down
from common.demo import (DEMO_STRIDE, HELDOUT_PHOTOS, TRAIN_PHOTOS, WIDER_PHOTOS, WiderScore, build_demo_data,
                         centre_crop, demo_verdict, load_photo, photo_name)
from common.images import read_image, to_uint8
from common.tasks import TASKS


def patch_bytes(patches: np.ndarray) -> set[bytes]:
    return {p.tobytes() for p in patches}


@pytest.mark.slow
def test_sr_demo_has_the_same_photographs_on_both_sides_and_validates_on_others(tmp_path):
    paths = build_demo_data(TASKS["sr"], tmp_path)
    assert not set(TRAIN_PHOTOS) & set(HELDOUT_PHOTOS)
    with h5py.File(paths["trainset"] / "demo.h5") as f:
        assert f.attrs["data_photos"] == f.attrs["label_photos"] == ",".join(TRAIN_PHOTOS)
        data, label = f["data"][:], f["label"][:]
    assert len(data) == len(label) > 1000  # overlapping patches: stride 32
    # every clean patch comes from a training photograph, and data[i] is the degraded twin of label[i]
    photos = {name: load_photo(name) for name in TRAIN_PHOTOS}
    clean = np.concatenate([to_uint8(cut_patches(p[: p.shape[0] // 4 * 4, : p.shape[1] // 4 * 4], 128, DEMO_STRIDE))
                            for p in photos.values()])
    np.testing.assert_array_equal(label, clean)
    degraded = np.concatenate([to_uint8(cut_patches(bicubic_down(p), 32, DEMO_STRIDE // 4)) for p in photos.values()])
    np.testing.assert_array_equal(data, degraded)
    # validation: centre crops of the held-out photographs, none of them on either side
    gts = sorted(paths["val_gt"].iterdir())
    assert [p.stem for p in gts] == sorted(HELDOUT_PHOTOS)
    for path in gts:
        np.testing.assert_allclose(read_image(path), centre_crop(load_photo(path.stem), 256), atol=0.5 / 255 + 1e-6)
    heldout = patch_bytes(np.concatenate([to_uint8(cut_patches(load_photo(n), 128, DEMO_STRIDE)) for n in HELDOUT_PHOTOS]))
    assert not heldout & patch_bytes(label)
    # the wider held-out set: other photographs again, on neither side and not among the validation ones
    assert not {photo_name(n) for n in WIDER_PHOTOS} & (set(TRAIN_PHOTOS) | set(HELDOUT_PHOTOS))
    assert sorted(p.stem for p in paths["wider_gt"].iterdir()) == sorted(photo_name(n) for n in WIDER_PHOTOS)
    assert sorted(p.stem for p in paths["wider_input"].iterdir()) == sorted(photo_name(n) for n in WIDER_PHOTOS)


@pytest.mark.slow
def test_training_on_the_demo_file_is_unpaired(tmp_path):
    """A degraded patch meets its own clean twin only by chance: the loader draws partners at random."""
    paths = build_demo_data(TASKS["dehazing"], tmp_path)
    dataset = UnpairedH5Dataset(paths["trainset"])
    sampler = UnpairedSampler(len(dataset), dataset.num_labels, 4, seed=0)
    draws = list(sampler)
    own = sum(i == j for i, j in draws)
    assert len(draws) > 1000 and own <= 3  # about one in len(dataset) by chance


def wider(gain, better=8):
    return WiderScore(30.0, 30.0 + gain, better, 10, ("moon", -0.4))


@pytest.mark.parametrize("best, last, wider_gain, ok", [(24.5, 23.0, 1.2, True), (23.9, 23.0, 1.2, False),
                                                       (24.5, 22.6, 1.2, False), (24.5, 23.0, 0.4, False)])
def test_verdict_needs_the_best_checkpoint_above_target_on_both_sets_and_the_last_step_near_the_input(
        best, last, wider_gain, ok):
    """Three validation photographs cannot tell a gain from noise: the wider held-out set must agree."""
    line = demo_verdict(TASKS["deraining"], 23.0, best, last, wider(wider_gain))
    assert line.startswith("verdict: restores" if ok else "verdict: does NOT restore")
    assert f"{best - 23.0:+.2f} dB" in line and f"{last - 23.0:+.2f} dB" in line
    assert f"{wider_gain:+.2f} dB on the 10 held-out (8 of 10 better)" in line
    assert demo_verdict(TASKS["sr"], 26.0, 26.05, 25.8, wider(0.05)).startswith("verdict: restores")
    assert demo_verdict(TASKS["sr"], 26.0, 26.0001, 26.0, wider(0.05)).startswith("verdict: does NOT")  # round-off
    assert demo_verdict(TASKS["sr"], 26.0, 26.05, 25.8, wider(-0.36)).startswith("verdict: does NOT restore")


@pytest.mark.slow
def test_an_older_demo_set_is_rebuilt_not_reused(tmp_path):
    """A demo-data folder left by an earlier version (other photographs or degradation) is replaced."""
    paths = build_demo_data(TASKS["dehazing"], tmp_path)
    with h5py.File(paths["trainset"] / "demo.h5", "a") as f:
        del f.attrs["demo_version"]
    (paths["val_gt"] / "stale.png").write_bytes(b"left over")
    build_demo_data(TASKS["dehazing"], tmp_path)
    with h5py.File(paths["trainset"] / "demo.h5") as f:
        assert "demo_version" in f.attrs
    assert not (paths["val_gt"] / "stale.png").exists()
