"""gdata/: building, converting, merging, inspecting and checking HDF5 training files."""
import importlib.util
import math
import os
import re
import tracemalloc
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import torch

from common.data import building, inspection
from common.data.degrade import imresize
from common.data.images import IMAGE_KINDS, read_image, write_image
from common.data.loader import UnpairedH5Dataset
from common.data.patch_file import H5PatchWriter, cut_patches, find_h5_files
from common.system.errors import InputError
from helpers import ROOT, run_script, write_h5


def make_folder(folder, sizes, seed=0):
    """Random RGB images of the given (h, w) sizes, written as PNG; returns the images as read back."""
    rng = np.random.default_rng(seed)
    for i, (h, w) in enumerate(sizes):
        write_image(folder / f"img{i:03d}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return [read_image(folder / f"img{i:03d}.png") for i in range(len(sizes))]


def indexed(n, side, offset=0, dtype=np.uint8):
    """Patch k is filled with the value offset + k: a patch tells where it came from."""
    return ((np.arange(n) + offset).reshape(n, 1, 1, 1) * np.ones((1, 3, side, side))).astype(dtype)


def first_values(ds):
    return [int(v) for v in ds[:, 0, 0, 0]]


def build(out, input_dir, patch, stride, dtype="uint8", batch=building.DEFAULT_BATCH, seed=0, **plan):
    jobs, attrs = building.plan_make(input_dir, patch, stride, **plan)
    return building.make_h5(out, jobs, dtype=dtype, seed=seed, batch=batch, attrs=attrs)


# ----------------------------------------------------------------------------- make
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_images_round_trip_through_the_training_loader(tmp_path, dtype):
    degraded = make_folder(tmp_path / "deg", [(40, 52), (33, 33)], seed=1)
    clean = make_folder(tmp_path / "clean", [(48, 40)], seed=2)
    out = tmp_path / "train" / "a.h5"
    counts = build(out, tmp_path / "clean", 16, 8, dtype=dtype, degraded_dir=tmp_path / "deg", batch=5)
    expect_data = np.concatenate([cut_patches(img, 16, 8) for img in degraded])
    expect_label = cut_patches(clean[0], 16, 8)
    assert counts == {"data": len(expect_data), "label": len(expect_label)}
    ds = UnpairedH5Dataset(tmp_path / "train")
    assert len(ds) == len(expect_data) and ds.num_labels == len(expect_label)
    for i in range(len(ds)):
        np.testing.assert_allclose(ds[i][0].numpy(), expect_data[i], atol=1e-6, rtol=0)
    with h5py.File(out) as f:
        assert f["data"].dtype == np.dtype(dtype) and f.attrs["layout"] == "NCHW"
        labels = f["label"][:].astype(np.float32) / (255.0 if dtype == "uint8" else 1.0)
        assert f.attrs["split"] == "folders" and f.attrs["degraded_source"] == str(tmp_path / "deg")
    np.testing.assert_allclose(labels, expect_label, atol=1e-6, rtol=0)


def test_patch_counts_and_skipped_small_images(tmp_path):
    make_folder(tmp_path / "in", [(70, 100), (70, 100), (10, 200)])
    counts = build(tmp_path / "a.h5", tmp_path / "in", 32, 16, as_name="data")
    assert counts == {"data": 2 * 3 * 5}  # rows at 0, 16, 32; columns at 0, 16, ..., 64; the thin image: none
    assert build(tmp_path / "b.h5", tmp_path / "in", 32, 32)["label"] == 2 * 2 * 3  # default: one 'label' set
    small = build(tmp_path / "c.h5", tmp_path / "in", 32, 16, as_name="data", batch=7)
    with h5py.File(tmp_path / "a.h5") as a, h5py.File(tmp_path / "c.h5") as c:
        assert small == counts
        np.testing.assert_array_equal(a["data"][:], c["data"][:])  # the batch size changes nothing


def test_make_notes_each_image_once_and_names_the_files_it_skips(tmp_path, capsys):
    """--split both reads every image twice (degraded for 'data', clean for 'label'): what is said of
    an image comes once, and a file that is no image of a kind read here is named, not passed over."""
    folder = tmp_path / "in"
    make_folder(folder, [(24, 24)])
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "gray.png"), rng.integers(0, 256, (24, 24), dtype=np.uint8))
    cv2.imwrite(str(folder / "deep.png"), rng.integers(0, 65536, (24, 24, 3), dtype=np.uint16))
    (folder / "anim.gif").write_bytes(b"GIF89a")
    assert build(tmp_path / "a.h5", folder, 16, 8, degradation="haze") == {"data": 3 * 4, "label": 3 * 4}
    assert capsys.readouterr().err.splitlines() == [
        f"note: {folder}: 1 file skipped, not an image of a kind read here ({IMAGE_KINDS}): anim.gif",
        f"note: {folder / 'deep.png'}: 16-bit image, scaled to [0, 1] by 1/65535",
        f"note: {folder / 'gray.png'}: grayscale image, converted to RGB"]


def test_an_image_too_small_for_a_patch_is_named_once_and_left_out_of_the_files_attributes(tmp_path, capsys):
    make_folder(tmp_path / "in", [(24, 24), (8, 8)])
    assert build(tmp_path / "a.h5", tmp_path / "in", 16, 8, degradation="haze") == {"data": 4, "label": 4}
    assert capsys.readouterr().err.splitlines() == [
        f"note: {tmp_path / 'in' / 'img001.png'}: 8x8 is smaller than one 16x16 patch; "
        "it gave no 'data' or 'label' patches"]
    with h5py.File(tmp_path / "a.h5") as f:  # the images whose patches each side holds
        assert f.attrs["data_files"] == f.attrs["label_files"] == "img000.png"
    make_folder(tmp_path / "sr", [(32, 32), (20, 60)])  # x4: 15x5 degraded and 60x20 clean, both too small
    build(tmp_path / "b.h5", tmp_path / "sr", 32, 16, degradation="bicubic-x4")
    assert capsys.readouterr().err.splitlines() == [
        f"note: {tmp_path / 'sr' / 'img001.png'}: 15x5 once degraded (bicubic-x4) is smaller than one 8x8 "
        "patch, 60x20 than one 32x32; it gave no 'data' or 'label' patches"]
    make_folder(tmp_path / "rainy", [(24, 24), (8, 8)])  # two folders: the small one is on one side only
    make_folder(tmp_path / "clean", [(24, 24)] * 2)
    build(tmp_path / "c.h5", tmp_path / "clean", 16, 8, degraded_dir=tmp_path / "rainy")
    assert capsys.readouterr().err.splitlines() == [
        f"note: {tmp_path / 'rainy' / 'img001.png'}: 8x8 is smaller than one 16x16 patch; it gave no 'data' patches"]
    with h5py.File(tmp_path / "c.h5") as f:
        assert f.attrs["data_files"] == "img000.png" and f.attrs["label_files"] == "img000.png\nimg001.png"


def test_memory_stays_bounded_by_one_batch(tmp_path, monkeypatch):
    make_folder(tmp_path / "many", [(64, 64)] * 30)
    largest = []
    append = H5PatchWriter.append

    def spy(self, name, patches):
        largest.append(len(patches))
        append(self, name, patches)

    monkeypatch.setattr(H5PatchWriter, "append", spy)
    tracemalloc.start()
    counts = build(tmp_path / "a.h5", tmp_path / "many", 16, 4, as_name="data", batch=32)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    total_bytes = counts["data"] * 3 * 16 * 16 * 4  # every patch at once, as float32: 15.6 MB
    assert counts["data"] == 30 * 13 * 13 and max(largest) <= 32
    assert peak < total_bytes / 4, f"peak {peak} bytes"


def test_bicubic_x4_matches_a_direct_matlab_style_implementation(tmp_path):
    def keys(x):
        x = abs(x)
        if x <= 1:
            return 1.5 * x ** 3 - 2.5 * x ** 2 + 1
        if x < 2:
            return -0.5 * x ** 3 + 2.5 * x ** 2 - 4 * x + 2
        return 0.0

    def mirror(k, n):  # 1-based, symmetric including the edge pixel
        while k < 1 or k > n:
            k = 1 - k if k < 1 else 2 * n + 1 - k
        return k

    def shrink(values, scale=0.25):  # one axis, MATLAB's imresize(..., 'bicubic') with antialiasing
        n = len(values)
        out = []
        for j in range(1, int(math.ceil(n * scale)) + 1):
            x = j / scale + 0.5 * (1 - 1 / scale)
            total = weight_sum = 0.0
            for i in range(math.floor(x - 2 / scale) - 1, math.ceil(x + 2 / scale) + 2):
                w = scale * keys(scale * (x - i))
                total += w * values[mirror(i, n) - 1]
                weight_sum += w
            out.append(total / weight_sum)
        return out

    def reference(img):
        rows = [[shrink(list(img[:, c, k])) for c in range(img.shape[1])] for k in range(img.shape[2])]
        tall = np.array(rows).transpose(2, 1, 0)  # shrunk height x width x channels
        cols = [[shrink(list(tall[r, :, k])) for r in range(tall.shape[0])] for k in range(tall.shape[2])]
        return np.array(cols).transpose(1, 2, 0)

    tiny = np.random.default_rng(0).random((8, 12, 3))
    np.testing.assert_allclose(imresize(tiny, 0.25), reference(tiny), atol=1e-4, rtol=0)

    img = make_folder(tmp_path / "hr", [(34, 50)])[0]  # cropped to 32 x 48 before shrinking
    lr = np.clip(reference(img[:32, :48].astype(np.float64)), 0, 1)
    out = tmp_path / "lr.h5"
    assert build(out, tmp_path / "hr", 16, 8, dtype="float32", as_name="data", degradation="bicubic-x4") == {"data": 15}
    with h5py.File(out) as f:
        assert f["data"].dtype == np.float32 and f.attrs["scale"] == 4 and f.attrs["degradation"] == "bicubic-x4"
        np.testing.assert_allclose(f["data"][:], cut_patches(lr, 4, 2), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_default_puts_every_image_on_both_sides_and_split_half_keeps_them_apart(tmp_path):
    make_folder(tmp_path / "photos", [(40, 40)] * 6)
    names = [f"img{i:03d}.png" for i in range(6)]
    out = tmp_path / "sr.h5"
    result = run_script("gdata/make_h5.py", "--input", str(tmp_path / "photos"), "--out", str(out),
                        "--patch", "16", "--stride", "8", "--degrade", "bicubic-x4", "--seed", "3", "--quiet")
    assert result.returncode == 0, result.stderr
    with h5py.File(out) as f:  # the default: the same photographs on both sides
        assert f.attrs["data_files"].split("\n") == f.attrs["label_files"].split("\n") == names
        assert f.attrs["split"] == "both" and f["data"].shape == (6 * 16, 3, 4, 4)
        assert f["label"].shape == (6 * 16, 3, 16, 16)
    out = tmp_path / "sr_half.h5"
    result = run_script("gdata/make_h5.py", "--input", str(tmp_path / "photos"), "--out", str(out), "--split", "half",
                        "--patch", "16", "--stride", "8", "--degrade", "bicubic-x4", "--seed", "3", "--quiet")
    assert result.returncode == 0, result.stderr
    with h5py.File(out) as f:
        data_files, label_files = f.attrs["data_files"].split("\n"), f.attrs["label_files"].split("\n")
        assert data_files == ["img000.png", "img001.png", "img002.png"]
        assert label_files == ["img003.png", "img004.png", "img005.png"]
        assert f["data"].shape == (3 * 16, 3, 4, 4) and f["label"].shape == (3 * 16, 3, 16, 16)
        assert (f.attrs["patch"], f.attrs["stride"], f.attrs["seed"], f.attrs["layout"]) == (16, 8, 3, "NCHW")
        assert f.attrs["source"] == str(tmp_path / "photos")
        labels = f["label"][:]
    clean_side = {cut.tobytes() for name in label_files
                  for cut in (cut_patches(read_image(tmp_path / "photos" / name), 16, 8) * 255 + 0.5).astype(np.uint8)}
    assert all(p.tobytes() in clean_side for p in labels)

    build(tmp_path / "third.h5", tmp_path / "photos", 16, 8, degradation="haze", split="0.3")
    build(tmp_path / "both.h5", tmp_path / "photos", 16, 8, degradation="haze", split="none")  # older spelling
    with h5py.File(tmp_path / "third.h5") as a, h5py.File(tmp_path / "both.h5") as b:
        assert len(a.attrs["data_files"].split("\n")) == 2 and len(a.attrs["label_files"].split("\n")) == 4
        assert b.attrs["data_files"] == b.attrs["label_files"] and b["data"].shape == b["label"].shape
    with pytest.raises(InputError, match="between 0 and 1"):
        build(tmp_path / "x.h5", tmp_path / "photos", 16, 8, degradation="haze", split="1.5")
    with pytest.raises(InputError, match="needs --degrade or --degraded-input"):
        build(tmp_path / "x.h5", tmp_path / "photos", 16, 8, split="half")

    make_folder(tmp_path / "rainy", [(40, 40)] * 6)  # a paired set: the same names (scenes) in both folders
    build(tmp_path / "pairs.h5", tmp_path / "photos", 16, 8, degraded_dir=tmp_path / "rainy", split="half")
    with h5py.File(tmp_path / "pairs.h5") as f:
        assert f.attrs["data_files"].split("\n") == data_files and f.attrs["label_files"].split("\n") == label_files
        assert f.attrs["degraded_source"] == str(tmp_path / "rainy") and f.attrs["split"] == "0.5 by name"


@pytest.mark.slow
def test_make_refuses_bad_requests(tmp_path):
    make_folder(tmp_path / "in", [(40, 40)])
    with pytest.raises(InputError, match="multiples of the scale 4"):
        build(tmp_path / "a.h5", tmp_path / "in", 18, 8, degradation="bicubic-x4")
    with pytest.raises(InputError, match="at least 2"):
        build(tmp_path / "a.h5", tmp_path / "in", 16, 8, degradation="haze", split="half")
    with pytest.raises(InputError, match="no 64x64 patch fits"):
        build(tmp_path / "a.h5", tmp_path / "in", 64, 8)
    with pytest.raises(InputError, match="must end in .h5"):
        build(tmp_path / "a.hdf", tmp_path / "in", 16, 8)
    assert not list(tmp_path.glob("*.h5*")) and not list(tmp_path.glob(".*"))  # nothing half-written
    result = run_script("gdata/make_h5.py", "--input", str(tmp_path / "nowhere"), "--out", str(tmp_path / "a.h5"))
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "nowhere" in result.stderr
    assert "Traceback" not in result.stderr


# ----------------------------------------------------------------------------- MATLAB layout
@pytest.mark.slow
def test_matlab_layout_is_read_and_converted(tmp_path):
    ours = np.arange(4 * 3 * 8 * 12, dtype=np.uint8).reshape(4, 3, 8, 12)  # N x C x H x W
    matlab = ours.transpose(0, 1, 3, 2).copy()                              # N x C x W x H
    src = write_h5(tmp_path / "m.h5", matlab, matlab, patch=8)
    with pytest.raises(InputError, match="--layout matlab"):
        building.convert_layout(src, tmp_path / "out.h5")  # no attribute: the layout must be said
    assert building.convert_layout(src, tmp_path / "out" / "c.h5", layout="matlab", batch=3) == {"data": 4, "label": 4}
    with h5py.File(tmp_path / "out" / "c.h5") as f:
        np.testing.assert_array_equal(f["data"][:], ours)
        assert f.attrs["layout"] == "NCHW" and f.attrs["patch"] == 8 and f.attrs["converted_layout"] == "matlab"
    converted, as_matlab = UnpairedH5Dataset(tmp_path / "out"), UnpairedH5Dataset(src, layout="matlab")
    assert converted.data_shape == as_matlab.data_shape == (3, 8, 12)
    torch.testing.assert_close(converted[2][0], as_matlab[2][0])

    tagged = write_h5(tmp_path / "t.h5", matlab, matlab, layout="NCWH")
    report = inspection.scan_h5(tagged)
    assert report.transposed and report.datasets["data"].patch == (3, 8, 12)
    assert "NCWH (MATLAB" in inspection.format_report(report)
    result = run_script("gdata/make_h5.py", "--convert", str(tagged), "--out", str(tmp_path / "t2.h5"),
                        "--dtype", "float32", "--quiet")
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "t2.h5") as f:
        np.testing.assert_allclose(f["label"][:], ours / 255.0, atol=1e-7)


# ----------------------------------------------------------------------------- merge and concatenate
def test_merge_trims_and_shuffles_both_sides_with_one_permutation(tmp_path):
    write_h5(tmp_path / "deg.h5", indexed(10, 4), indexed(2, 4, 200))  # its 'data' is taken, not its 'label'
    with h5py.File(tmp_path / "clean.h5", "w") as f:
        f.create_dataset("patches", data=indexed(7, 16, 100))           # the only dataset: taken as label
    out = tmp_path / "train.h5"
    counts = building.merge_h5([tmp_path / "deg.h5"], [tmp_path / "clean.h5"], out, seed=5, batch=3)
    assert counts == {"data": 7, "label": 7}
    with h5py.File(out) as f:
        data, label = first_values(f["data"]), first_values(f["label"])
        assert f.attrs["scale"] == 4 and f.attrs["seed"] == 5 and f["label"].shape == (7, 3, 16, 16)
    assert sorted(data) == list(range(7)) and data != list(range(7))
    assert label == [100 + d for d in data]
    assert UnpairedH5Dataset(tmp_path / "train.h5", scale=4).describe().startswith("1 file(s), 7 degraded")

    building.merge_h5([tmp_path / "deg.h5"], [tmp_path / "clean.h5"], tmp_path / "again.h5", seed=5)
    building.merge_h5([tmp_path / "deg.h5"], [tmp_path / "clean.h5"], tmp_path / "plain.h5", shuffle=False)
    with h5py.File(tmp_path / "again.h5") as a, h5py.File(tmp_path / "plain.h5") as b:
        assert first_values(a["data"]) == data and first_values(b["data"]) == list(range(7))


@pytest.mark.slow
def test_concatenate_files_in_order_across_dtypes_and_layouts(tmp_path):
    a = write_h5(tmp_path / "a.h5", indexed(3, 4), indexed(2, 8, 50))
    b = write_h5(tmp_path / "b.h5", indexed(4, 4, 10).astype(np.float32) / 255, indexed(1, 8, 60).astype(np.float32) / 255)
    ours = np.random.default_rng(0).integers(0, 256, (2, 3, 4, 6), dtype=np.uint8)
    c = write_h5(tmp_path / "c.h5", ours.transpose(0, 1, 3, 2).copy(), indexed(1, 8, 70), layout="NCWH")
    out = tmp_path / "all.h5"
    assert building.concat_h5([a, b], out, batch=2) == {"data": 7, "label": 3}
    with h5py.File(out) as f:
        assert f["data"].dtype == np.float32  # uint8 and float sources: float32 in [0, 1]
        np.testing.assert_allclose(f["data"][:, 0, 0, 0] * 255, [0, 1, 2, 10, 11, 12, 13], atol=1e-4)
        np.testing.assert_allclose(f["label"][:, 0, 0, 0] * 255, [50, 51, 60], atol=1e-4)
    result = run_script("gdata/merge_h5.py", "--concat", str(a), str(a), "--out", str(tmp_path / "aa.h5"), "--quiet")
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "aa.h5") as f:
        assert first_values(f["data"]) == [0, 1, 2, 0, 1, 2] and f["data"].dtype == np.uint8
    with pytest.raises(InputError, match="patches are 3x6x4"):
        building.concat_h5([a, c], tmp_path / "bad.h5", layout="ours")  # c read without its transpose
    d = write_h5(tmp_path / "d.h5", np.zeros((2, 3, 4, 6), np.uint8), indexed(1, 8))
    assert building.concat_h5([d, c], tmp_path / "dc.h5") == {"data": 4, "label": 2}
    with h5py.File(tmp_path / "dc.h5") as f:
        np.testing.assert_array_equal(f["data"][2:], ours)


# ----------------------------------------------------------------------------- inspect and check
BAD_FILES = {
    "no 'label' dataset": lambda f: f.create_dataset("data", data=indexed(2, 8)),
    "3 channels but 'label' has 1": lambda f: (f.create_dataset("data", data=indexed(2, 8)),
                                               f.create_dataset("label", data=np.zeros((2, 1, 8, 8), np.uint8))),
    "are not 4x the degraded": lambda f: (f.create_dataset("data", data=indexed(2, 8)),
                                          f.create_dataset("label", data=indexed(2, 16)),
                                          f.attrs.__setitem__("scale", 4)),
    "not a whole multiple": lambda f: (f.create_dataset("data", data=indexed(2, 6)),
                                       f.create_dataset("label", data=indexed(2, 16))),
    "holds 1 NaN or infinite": lambda f: (f.create_dataset("data", data=np.where(
                                              np.arange(200 * 48).reshape(200, 3, 4, 4) == 9000, np.inf,
                                              0.5).astype(np.float32)),
                                          f.create_dataset("label", data=indexed(2, 4))),
    r"values in \[0, 2\]": lambda f: (f.create_dataset("data", data=indexed(3, 4).astype(np.float32)),
                                      f.create_dataset("label", data=indexed(2, 4))),
    "'data' is empty": lambda f: (f.create_dataset("data", data=np.zeros((0, 3, 8, 8), np.uint8)),
                                  f.create_dataset("label", data=indexed(2, 8))),
}


def gdata_main(name):
    """A gdata/ script's main(), run in-process."""
    spec = importlib.util.spec_from_file_location(f"gdata_{name}", ROOT / "gdata" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_merge_h5_says_when_its_output_shares_a_folder_with_other_training_files(tmp_path, capsys):
    """--help's '--concat part1.h5 ... --out data/rain/all.h5' left all.h5 beside data/rain/train.h5, and
    training on data/rain/ then read both; the concatenation beside its own parts reads each patch twice."""
    parts = tmp_path / "parts"
    a = write_h5(parts / "a.h5", indexed(3, 4), indexed(2, 8, 50))
    b = write_h5(parts / "b.h5", indexed(1, 4, 10), indexed(1, 8, 60))
    merge = gdata_main("merge_h5")
    merge(["--concat", str(a), str(b), "--out", str(parts / "all.h5"), "--quiet"])
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: ")]
    assert notes == [f"note: {parts}: holds 2 other .h5 file(s) beside all.h5 (a.h5, b.h5); training on this folder "
                     f"reads every .h5 in it, those too: give --trainset {parts / 'all.h5'} itself, or move it to a "
                     "folder of its own"]
    merge(["--concat", str(a), str(b), "--out", str(tmp_path / "all" / "train.h5"), "--quiet"])
    merge(["--concat", str(a), "--out", str(tmp_path / "all" / "train.h5"), "--quiet"])  # replaced: no other file
    assert "note: " not in capsys.readouterr().err
    text = (ROOT / "gdata" / "merge_h5.py").read_text()  # --help's --concat example: a folder of its own
    concat_out = re.search(r"--concat [^\n]*--out (\S+)", text).group(1)
    others = re.findall(r"--data [^\n]*--out (\S+)", text)
    assert others and all(Path(concat_out).parent != Path(o).parent for o in others)


def test_a_missing_file_is_not_called_a_missing_folder(tmp_path):
    inspect = gdata_main("inspect_h5")
    for path in (tmp_path / "x" / "nothere.h5", tmp_path / "nothere.HDF5"):
        with pytest.raises(InputError) as err:
            inspect([str(path)])
        assert str(err.value) == f"{path}: no such file"
    with pytest.raises(InputError) as err:
        find_h5_files(tmp_path / "nowhere")  # what --trainset names: a folder
    assert str(err.value) == f"{tmp_path / 'nowhere'}: training folder not found"
    with pytest.raises(InputError, match="training folder not found"):
        find_h5_files(f"{tmp_path / 'odd.h5'}/")  # a trailing slash: a folder, whatever its name


@pytest.mark.parametrize("message", list(BAD_FILES))
def test_check_names_the_file_and_the_problem(tmp_path, monkeypatch, message):
    monkeypatch.setattr(inspection, "SCAN_BYTES", 1000)  # many blocks: the scan streams
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        BAD_FILES[message](f)
    with pytest.raises(InputError, match=message) as err:
        inspection.check_h5(path)
    assert str(err.value).startswith(f"{path}: ")


@pytest.mark.slow
def test_inspect_script_prints_and_checks(tmp_path):
    good = write_h5(tmp_path / "ok" / "good.h5", indexed(3, 4), indexed(2, 16, 1), scale=4)
    path = tmp_path / "bad.h5"
    write_h5(path, np.full((2, 3, 4, 4), np.nan, np.float32), indexed(2, 16))
    result = run_script("gdata/inspect_h5.py", str(tmp_path / "ok"), str(path), "--check", "--quiet")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {path}: dataset 'data' holds 96 NaN or infinite values"
    assert "3 x 3 x 4 x 4" in result.stdout and "range [1, 2]" in result.stdout and "@scale = 4" in result.stdout
    assert "check: ok (3 degraded, 2 clean patches)" in result.stdout and "chunks none" in result.stdout
    result = run_script("gdata/inspect_h5.py", str(good), "--check", "--scale", "2")
    assert result.returncode == 2 and "not 2x" in result.stderr
    label_only = write_h5(tmp_path / "l.h5", indexed(1, 8), indexed(1, 8))
    with h5py.File(label_only, "a") as f:
        del f["data"]
    with pytest.raises(InputError, match="merged with a file of the other"):
        inspection.check_h5(label_only)


@pytest.mark.slow
def test_inspect_shows_each_sides_colour_statistics_and_warns_on_mismatched_sr_sides(tmp_path):
    """Shrinking keeps the mean colour: an SR file whose sides differ in it holds different scenes."""
    rng = np.random.default_rng(0)
    dark = (rng.random((4, 3, 4, 4)) * 100).astype(np.uint8)                 # mean about 50/255
    matched = write_h5(tmp_path / "matched.h5", dark, np.repeat(np.repeat(dark, 4, 2), 4, 3), scale=4)
    bright = (155 + rng.random((4, 3, 16, 16)) * 100).astype(np.uint8)      # mean about 205/255
    mismatched = write_h5(tmp_path / "mismatched.h5", dark, bright, scale=4)
    hazy = write_h5(tmp_path / "hazy.h5", (155 + rng.random((4, 3, 16, 16)) * 100).astype(np.uint8),
                    np.repeat(np.repeat(dark, 4, 2), 4, 3))  # haze brightens: a gap is expected, no warning
    report = inspection.scan_h5(matched)
    expected = dark.astype(np.float64).transpose(1, 0, 2, 3).reshape(3, -1) / 255
    np.testing.assert_allclose(report.datasets["data"].channel_mean, expected.mean(1), rtol=1e-12)
    np.testing.assert_allclose(report.datasets["data"].channel_std, expected.std(1), rtol=1e-9)
    np.testing.assert_allclose(report.datasets["label"].channel_mean, expected.mean(1), rtol=1e-12)
    outputs = {p.stem: run_script("gdata/inspect_h5.py", str(p), "--quiet").stdout for p in (matched, mismatched, hazy)}
    assert all("per-channel mean  data" in out and "per-channel std" in out for out in outputs.values())
    assert "warning" not in outputs["matched"] and "warning" not in outputs["hazy"]
    assert "warning: the sides' mean colours differ by 0.6" in outputs["mismatched"]


@pytest.mark.slow
def test_every_script_explains_itself():
    for script in ("gdata/make_h5.py", "gdata/merge_h5.py", "gdata/inspect_h5.py"):
        result = run_script(script, "--help")
        assert result.returncode == 0 and "examples:" in result.stdout and f"python {script}" in result.stdout


# ----------------------------------------------------------------------------- links and attributes
def test_a_soft_link_within_the_file_is_read_as_its_target(tmp_path):
    """Links are followed by hand (nothing outside the file is opened), but one that stays inside it
    is as good as the dataset it names."""
    with h5py.File(tmp_path / "linked.h5", "w") as f:
        f.create_group("patches")
        f["patches/lr"] = indexed(3, 4)
        f["patches/hr"] = indexed(3, 16, 10)
        f["data"] = h5py.SoftLink("/patches/lr")
        f["label"] = h5py.SoftLink("patches/hr")  # relative to the root, where the link is
    assert inspection.check_h5(tmp_path / "linked.h5", scale=4).datasets["data"].shape == (3, 3, 4, 4)
    assert len(UnpairedH5Dataset(tmp_path / "linked.h5", scale=4)) == 3
    building.merge_h5([tmp_path / "linked.h5"], [tmp_path / "linked.h5"], tmp_path / "out.h5", shuffle=False)
    with h5py.File(tmp_path / "out.h5") as f:
        assert first_values(f["data"]) == [0, 1, 2] and first_values(f["label"]) == [10, 11, 12]
    with h5py.File(tmp_path / "linked.h5", "a") as f:
        del f["data"]
        f["data"] = h5py.SoftLink("/")  # the file's root group itself
    with pytest.raises(InputError, match="'data' \\(a soft link to '/'\\) is a group"):
        UnpairedH5Dataset(tmp_path / "linked.h5", scale=4)


def test_convert_keeps_attributes_but_not_object_references(tmp_path, capsys):
    """A reference names an object of its own file: copied, it would name whatever is at that place
    in the new one. It is left out, and a note says so."""
    with h5py.File(tmp_path / "m.h5", "w") as f:
        f["data"], f["label"] = indexed(2, 4), indexed(2, 16)
        f.attrs["note"], f.attrs["points_at"] = "kept", f["data"].ref
    building.convert_layout(tmp_path / "m.h5", tmp_path / "c.h5", layout="ours")
    with h5py.File(tmp_path / "c.h5") as f:
        assert f.attrs["note"] == "kept" and "points_at" not in f.attrs
    assert "not copied (object references, which mean nothing in another file): attribute(s) points_at" in \
        capsys.readouterr().err


# ----------------------------------------------------------------------------- writing
@pytest.mark.parametrize("degrade", [None, "bicubic-x4"])
def test_the_space_a_file_needs_is_known_before_it_is_written(tmp_path, degrade):
    """What a full disk is said to lack (building.planned_patches, from the images' headers) is the
    patches the file then holds."""
    make_folder(tmp_path / "imgs", [(64, 48), (40, 72), (16, 16)])
    jobs, attrs = building.plan_make(tmp_path / "imgs", 16, 8, degradation=degrade)
    counts = building.make_h5(tmp_path / "o.h5", jobs, attrs=attrs)
    with h5py.File(tmp_path / "o.h5") as f:
        stored = {name: (f[name].shape[0], f[name].nbytes // f[name].shape[0]) for name in counts}
    assert building.planned_patches(jobs, "uint8") == stored
    assert building.planned_patches(jobs, "float32") == {name: (n, 4 * size) for name, (n, size) in stored.items()}


@pytest.mark.parametrize("patches", [24, 64, 100])
def test_the_space_a_file_is_said_to_need_is_no_more_than_it_takes(tmp_path, patches):
    """HDF5 allocates a dataset's chunks whole: 24 patches in a chunk of 64 take the space of 64. The
    full disk's message said a file of 24 128x128 patches needed about 1.2 MiB while 2 MiB were free
    (it takes 3.2 MiB); what it says now is at least that of whole chunks, and not much less than the
    file's size."""
    rng = np.random.default_rng(0)
    plan = {"data": (patches, 3 * 32 * 32), "label": (patches, 3 * 128 * 128)}
    with H5PatchWriter(tmp_path / "o.h5", plan=plan) as writer:
        writer.append("data", rng.integers(0, 256, (patches, 3, 32, 32), dtype=np.uint8))
        writer.append("label", rng.integers(0, 256, (patches, 3, 128, 128), dtype=np.uint8))
        said = writer.bytes_needed()
    size = os.path.getsize(tmp_path / "o.h5")
    assert said <= size < said + (64 << 10), (said, size)


# A stop signal that arrives while HDF5 is inside the writer's file (its Python 'fileobj' driver
# calls back to write) must reach its handler only once HDF5 has returned: raised inside HDF5, it
# would be a failed write, after which HDF5 crashes the process when the file closes.
SIGNAL_MID_WRITE = r"""
import signal, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from common.data import patch_file
from common.cli.guard import run_guarded

class Raw:  # the temporary's own file: SIGTERM comes during the 20th write HDF5 makes
    def __init__(self, raw):
        self.raw, self.writes = raw, 0
    def write(self, data):
        self.writes += 1
        if self.writes == 20:
            signal.raise_signal(signal.SIGTERM)
        return self.raw.write(data)
    def __getattr__(self, name):
        return getattr(self.raw, name)

opened = patch_file._TemporaryFile.__init__
def watched(self, path):
    opened(self, path)
    self.raw = Raw(self.raw)
patch_file._TemporaryFile.__init__ = watched

def main(argv):
    with patch_file.H5PatchWriter(argv[0]) as writer:
        for _ in range(100):
            writer.append("data", np.ones((64, 3, 16, 16), np.uint8))
run_guarded(main, sys.argv[2:], writes_files=True)
"""


@pytest.mark.slow
def test_a_stop_signal_during_an_hdf5_write_is_acted_on_after_it(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", SIGNAL_MID_WRITE, str(ROOT), str(tmp_path / "new" / "o.h5")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143, proc.stderr[-3000:]  # not -11: a segmentation fault
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().startswith("stopped by SIGTERM: removed the unfinished .sot-tmp-"), proc.stderr
    assert list(tmp_path.iterdir()) == []
