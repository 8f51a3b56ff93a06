"""The demo's data: learnable (both sides from the same photographs), unpaired in training, held out in validation."""
import h5py
import numpy as np
import pytest

from common.data.images import read_image, to_uint8
from common.data.loader import UnpairedH5Dataset, UnpairedSampler
from common.data.patch_file import cut_patches
from common.demo import (DEMO_STRIDE, HELDOUT_PHOTOS, TRAIN_PHOTOS, WIDER_PHOTOS, WiderScore, build_demo_data,
                         centre_crop, demo_verdict, load_photo, photo_name)
from common.tasks import TASKS
from helpers import ROOT


def raw_photo(name: str) -> np.ndarray:
    """A training photograph as scikit-image ships it (uint8 RGB; grey ones replicated)."""
    import skimage.data

    img = getattr(skimage.data, name)()
    img = img[0] if isinstance(img, tuple) else img
    return np.repeat(img[:, :, None], 3, axis=2) if img.ndim == 2 else img[:, :, :3]


def pil_quarter(photo: np.ndarray) -> np.ndarray:
    """PIL's antialiased bicubic x1/4 of a uint8 photograph, rounded to uint8 levels (as int)."""
    from PIL import Image

    size = (photo.shape[1] // 4, photo.shape[0] // 4)
    planes = [np.asarray(Image.fromarray(photo[:, :, c].astype(np.float32) / 255, mode="F").resize(size, Image.BICUBIC))
              for c in range(3)]
    return (np.clip(np.stack(planes, axis=-1), 0, 1) * 255 + 0.5).astype(int)


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
    # every clean patch comes from a training photograph, and data[i] is the degraded twin of label[i];
    # checked against an oracle of its own: the photographs straight from scikit-image, patches cut by
    # plain slicing, and PIL's antialiased bicubic (MATLAB's kernel: it agrees to 1e-7 away from the
    # borders, where the two extend the image differently)
    k = 0
    for name in TRAIN_PHOTOS:
        photo = raw_photo(name)
        photo = photo[: photo.shape[0] // 4 * 4, : photo.shape[1] // 4 * 4]
        low = pil_quarter(photo)
        interior = np.zeros(low.shape[:2], dtype=bool)
        interior[3:-3, 3:-3] = True
        for top in range(0, photo.shape[0] - 127, DEMO_STRIDE):
            for left in range(0, photo.shape[1] - 127, DEMO_STRIDE):
                np.testing.assert_array_equal(label[k], photo[top:top + 128, left:left + 128].transpose(2, 0, 1))
                lt, ll = top // 4, left // 4
                inside = interior[lt:lt + 32, ll:ll + 32]
                diff = np.abs(data[k].transpose(1, 2, 0).astype(int) - low[lt:lt + 32, ll:ll + 32])[inside]
                assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (name, top, left)
                k += 1
    assert k == len(label)
    # validation: centre crops of the held-out photographs, none of them on either side
    gts = sorted(paths["val_gt"].iterdir())
    assert [p.stem for p in gts] == sorted(HELDOUT_PHOTOS)
    for path in gts:
        np.testing.assert_allclose(read_image(path), centre_crop(load_photo(path.stem), 256), atol=0.5 / 255 + 1e-6)
        low = to_uint8(read_image(paths["val_input"] / path.name)).astype(int)
        assert np.abs(low - pil_quarter(to_uint8(read_image(path))))[3:-3, 3:-3].max() <= 1, path.name
    heldout = patch_bytes(np.concatenate([to_uint8(cut_patches(load_photo(n), 128, DEMO_STRIDE)) for n in HELDOUT_PHOTOS]))
    assert not heldout & patch_bytes(label)
    # the wider held-out set: other photographs again, on neither side and not among the validation ones
    assert not {photo_name(n) for n in WIDER_PHOTOS} & (set(TRAIN_PHOTOS) | set(HELDOUT_PHOTOS))
    assert sorted(p.stem for p in paths["wider_gt"].iterdir()) == sorted(photo_name(n) for n in WIDER_PHOTOS)
    assert sorted(p.stem for p in paths["wider_input"].iterdir()) == sorted(photo_name(n) for n in WIDER_PHOTOS)


@pytest.fixture(scope="module")
def haze_demo(tmp_path_factory):
    """The dehazing demo's data, built once for the tests that only read it."""
    return build_demo_data(TASKS["dehazing"], tmp_path_factory.mktemp("haze-demo"))


def twins(paths, every: int = 7):
    """Every 7th degraded patch of a demo file beside its own clean twin, as floats in [0, 1]."""
    with h5py.File(paths["trainset"] / "demo.h5") as f:
        return f["data"][::every] / 255.0, f["label"][::every] / 255.0


@pytest.mark.slow
def test_the_rain_and_haze_demo_files_follow_their_physical_models(tmp_path, haze_demo):
    """Oracles of their own for the synthetic degradations, fitted to the file's pixels.

    Rain is screen-blended grey streaks, 1 - I = (1 - J)(1 - R): every channel of a pixel gives the same
    streak value R (to 8-bit rounding, 0.018 measured) and rain only brightens. Haze is
    I = J t + A (1 - t) with a grey airlight: each pixel's three channels lie on one line of slope
    t (0.08..0.9, as beta 0.5..2.5 over optical depths 0.2..1 give) and intercept A (1 - t), A in 0.7..1."""
    rainy, clean = twins(build_demo_data(TASKS["deraining"], tmp_path))
    dark = (1 - clean).min(axis=1) > 0.2
    streaks = 1 - (1 - rainy) / np.maximum(1 - clean, 1e-6)
    assert (streaks.max(axis=1) - streaks.min(axis=1))[dark].max() < 0.03
    assert streaks.min(axis=1)[dark].min() > -0.01
    assert 0.2 < (streaks.mean(axis=1)[dark] > 0.05).mean() < 0.8  # heavy rain: streaks over part of the image

    hazy, clean = twins(haze_demo)
    hi, lo = clean.argmax(axis=1)[:, None], clean.argmin(axis=1)[:, None]
    j_hi, j_lo = np.take_along_axis(clean, hi, 1)[:, 0], np.take_along_axis(clean, lo, 1)[:, 0]
    i_hi, i_lo = np.take_along_axis(hazy, hi, 1)[:, 0], np.take_along_axis(hazy, lo, 1)[:, 0]
    coloured = j_hi - j_lo > 0.3  # where the channels differ enough to fit the line
    t = (i_hi - i_lo) / np.maximum(j_hi - j_lo, 1e-6)
    offset = i_hi - t * j_hi
    off_line = np.abs(hazy - (t[:, None] * clean + offset[:, None])).max(axis=1)
    assert off_line[coloured].max() < 2.5 / 255
    assert np.exp(-2.5) - 0.02 < t[coloured].min() and t[coloured].max() < np.exp(-0.1) + 0.02
    far = coloured & (t < 0.8)
    airlight = offset[far] / (1 - t[far])
    assert 0.68 < airlight.min() and airlight.max() < 1.0


@pytest.mark.slow
def test_the_demo_files_patch_count_is_the_one_stated(haze_demo):
    """common/demo.py said 'about 1,100' patches a side and docs/TRAINING.md 'about 1,500': there are 1,555."""
    with h5py.File(haze_demo["trainset"] / "demo.h5") as f:
        count = len(f["label"])
        assert len(f["data"]) == count
    source = (ROOT / "common" / "demo.py").read_text()
    training = " ".join((ROOT / "docs" / "TRAINING.md").read_text().split())
    assert f"DEMO_STRIDE = {DEMO_STRIDE}    # overlapping 128x128 patches: {count:,} a side" in source
    assert f"(128x128 at stride {DEMO_STRIDE}, {count:,} a side)" in training


@pytest.mark.slow
def test_training_on_the_demo_file_is_unpaired(haze_demo):
    """A degraded patch meets its own clean twin only by chance: the loader draws partners at random."""
    dataset = UnpairedH5Dataset(haze_demo["trainset"])
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
