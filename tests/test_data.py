import pickle

import h5py
import numpy as np
import pytest
import torch

from common.data.loader import UnpairedH5Dataset
from common.data.patch_file import H5PatchWriter, cut_patches
from common.system.errors import InputError
from helpers import write_h5


def indexed_patches(n, side, dtype=np.uint8, channels=3):
    """Patch k is filled with the value k (so a patch tells which index it came from)."""
    values = np.arange(n).reshape(n, 1, 1, 1) * np.ones((1, channels, side, side))
    return values.astype(dtype)


def test_labels_are_drawn_independently_of_the_data_index(tmp_path):
    write_h5(tmp_path / "a.h5", indexed_patches(10, 8), indexed_patches(50, 32))
    ds = UnpairedH5Dataset(tmp_path, scale=4)
    assert len(ds) == 10 and ds.num_labels == 50
    torch.manual_seed(0)
    drawn = [int(round(ds[3][1][0, 0, 0].item() * 255)) for _ in range(200)]
    assert all(int(round(ds[3][0][0, 0, 0].item() * 255)) == 3 for _ in range(3))
    assert len(set(drawn)) > 30  # a fresh label each time, over the whole label set
    data_idx = np.arange(len(ds)).repeat(20)
    labels = [int(round(ds[int(i)][1][0, 0, 0].item() * 255)) for i in data_idx]
    assert abs(np.corrcoef(data_idx, labels)[0, 1]) < 0.2


def test_raw_uint8_mode_moves_bytes_and_as_float_scales_them(tmp_path):
    from common.data.loader import as_float
    write_h5(tmp_path / "a.h5", indexed_patches(4, 8) * 50, indexed_patches(4, 8))
    raw, plain = UnpairedH5Dataset(tmp_path, raw_uint8=True), UnpairedH5Dataset(tmp_path)
    assert raw[2][0].dtype == torch.uint8 and plain[2][0].dtype == torch.float32
    torch.testing.assert_close(as_float(raw[2][0][None]), plain[2][0][None])
    write_h5(tmp_path / "b.h5", indexed_patches(4, 8).astype(np.float32) / 255, indexed_patches(4, 8))
    assert UnpairedH5Dataset(tmp_path, raw_uint8=True)[0][0].dtype == torch.float32  # mixed files: floats


def test_uint8_and_float32_files_read_alike(tmp_path):
    rng = np.random.default_rng(0)
    data8 = rng.integers(0, 256, size=(4, 3, 16, 16), dtype=np.uint8)
    label8 = rng.integers(0, 256, size=(4, 3, 16, 16), dtype=np.uint8)
    write_h5(tmp_path / "u8" / "a.h5", data8, label8)
    write_h5(tmp_path / "f32" / "a.h5", data8.astype(np.float32) / 255, label8.astype(np.float32) / 255)
    a, b = UnpairedH5Dataset(tmp_path / "u8"), UnpairedH5Dataset(tmp_path / "f32")
    for i in range(4):
        da, db = a[i][0], b[i][0]
        assert da.dtype == db.dtype == torch.float32
        torch.testing.assert_close(da, db, atol=1e-7, rtol=0)
    assert float(a[0][1].max()) <= 1.0


def test_every_h5_file_in_the_folder_is_used(tmp_path):
    write_h5(tmp_path / "a.h5", indexed_patches(3, 8), indexed_patches(3, 8))
    write_h5(tmp_path / "b.h5", indexed_patches(5, 8) + 100, indexed_patches(2, 8))
    (tmp_path / "notes.txt").write_text("not data")
    ds = UnpairedH5Dataset(tmp_path)
    assert len(ds) == 8 and ds.num_labels == 5
    seen = [int(round(ds[i][0][0, 0, 0].item() * 255)) for i in range(8)]
    assert seen == [0, 1, 2, 100, 101, 102, 103, 104]


def test_matlab_layout_is_transposed_back(tmp_path):
    img = np.arange(3 * 8 * 12, dtype=np.uint8).reshape(1, 3, 8, 12)  # ours: C x H x W
    matlab = img.transpose(0, 1, 3, 2).copy()                          # MATLAB: C x W x H
    write_h5(tmp_path / "m" / "a.h5", matlab, matlab)
    ds = UnpairedH5Dataset(tmp_path / "m", layout="matlab")
    assert ds.data_shape == (3, 8, 12)
    np.testing.assert_array_equal((ds[0][0].numpy() * 255).round().astype(np.uint8), img[0])
    write_h5(tmp_path / "attr" / "a.h5", matlab, matlab, layout="NCWH")
    np.testing.assert_array_equal((UnpairedH5Dataset(tmp_path / "attr")[0][0].numpy() * 255).round(), img[0])


@pytest.mark.parametrize("make,message", [
    (lambda f: f.create_dataset("data", data=np.zeros((2, 3, 8, 8), np.uint8)), "no 'label' dataset"),
    (lambda f: (f.create_dataset("data", data=np.zeros((2, 3, 8, 8), np.uint8)),
                f.create_dataset("label", data=np.zeros((2, 1, 8, 8), np.uint8))), "channels"),
    (lambda f: (f.create_dataset("data", data=np.full((2, 3, 8, 8), np.nan, np.float32)),
                f.create_dataset("label", data=np.zeros((2, 3, 8, 8), np.float32))), "NaN"),
    (lambda f: (f.create_dataset("data", data=np.full((2, 3, 8, 8), 255.0, np.float32)),
                f.create_dataset("label", data=np.zeros((2, 3, 8, 8), np.float32))), "values in"),
    (lambda f: (f.create_dataset("data", data=np.zeros((0, 3, 8, 8), np.uint8)),
                f.create_dataset("label", data=np.zeros((2, 3, 8, 8), np.uint8))), "empty"),
])
def test_bad_files_are_refused_with_their_name(tmp_path, make, message):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        make(f)
    with pytest.raises(InputError, match=message) as err:
        UnpairedH5Dataset(tmp_path)
    assert "bad.h5" in str(err.value)


def test_scale_mismatch_and_missing_folder(tmp_path):
    write_h5(tmp_path / "a.h5", indexed_patches(2, 16), indexed_patches(2, 32))
    with pytest.raises(InputError, match="not 4x"):
        UnpairedH5Dataset(tmp_path, scale=4)
    with pytest.raises(InputError, match="not found"):
        UnpairedH5Dataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .h5 files"):
        UnpairedH5Dataset(tmp_path / "empty")


def test_a_missing_training_file_is_not_called_a_folder(tmp_path):
    """--trainset data/rain/train.h5 that is not there: a file is missing, not a folder."""
    with pytest.raises(InputError) as err:
        UnpairedH5Dataset(tmp_path / "rain" / "train.h5")
    assert str(err.value) == f"{tmp_path / 'rain' / 'train.h5'}: no such file"


def test_files_open_lazily_and_handles_do_not_travel(tmp_path):
    write_h5(tmp_path / "a.h5", indexed_patches(2, 8), indexed_patches(2, 8))
    ds = UnpairedH5Dataset(tmp_path)
    assert ds._files == {}
    ds[0]
    assert len(ds._files) == 1
    clone = pickle.loads(pickle.dumps(ds))  # what a spawned DataLoader worker receives
    assert clone._files == {} and clone._datasets == {}
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    assert next(iter(loader))[0].shape == (2, 3, 8, 8)


def test_cut_patches_counts_and_content():
    img = np.random.default_rng(0).random((70, 100, 3)).astype(np.float32)
    p = cut_patches(img, 32, 16)
    assert p.shape == (3 * 5, 3, 32, 32)  # rows at 0,16,32; cols at 0,16,...,64
    np.testing.assert_array_equal(p[1], img[0:32, 16:48].transpose(2, 0, 1))
    assert cut_patches(img[:20], 32, 16).shape[0] == 0


def test_writer_streams_and_is_atomic(tmp_path):
    path = tmp_path / "out.h5"
    with H5PatchWriter(path, attrs={"patch": 8}) as w:
        w.append("data", np.full((3, 3, 8, 8), 0.5, np.float32))
        w.append("data", np.full((2, 3, 8, 8), 1.0, np.float32))
        w.append("label", np.zeros((4, 3, 8, 8), np.uint8))
        assert not path.exists()  # only the temporary file exists while writing
    with h5py.File(path) as f:
        assert f["data"].shape == (5, 3, 8, 8) and f["data"].dtype == np.uint8
        assert f["data"][0, 0, 0, 0] == 128 and f.attrs["layout"] == "NCHW" and f.attrs["patch"] == 8
    with pytest.raises(RuntimeError):
        with H5PatchWriter(tmp_path / "broken.h5") as w:
            w.append("data", np.zeros((1, 3, 8, 8), np.uint8))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == [path]
