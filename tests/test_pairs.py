import numpy as np
import pytest

from common.errors import InputError
from common.images import write_image
from common.pairs import find_pairs


def touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        write_image(folder / n, np.zeros((8, 8, 3)))


def as_names(pairs):
    return sorted((p.input.name, p.gt.name if p.gt else None) for p in pairs)


def test_plain_folders_with_equal_names(tmp_path):
    touch(tmp_path / "in", "a.png", "b.jpg")
    touch(tmp_path / "gt", "a.png", "b.png")
    assert as_names(find_pairs(tmp_path / "in", tmp_path / "gt")) == [("a.png", "a.png"), ("b.jpg", "b.png")]


def test_rain100l_flat_and_input_target(tmp_path):
    touch(tmp_path / "flat", "rain-001.png", "norain-001.png", "rain-002.png", "norain-002.png")
    assert as_names(find_pairs(tmp_path / "flat")) == [("rain-001.png", "norain-001.png"),
                                                       ("rain-002.png", "norain-002.png")]
    touch(tmp_path / "v2" / "input", "rain-1.png")
    touch(tmp_path / "v2" / "target", "norain-1.png")
    assert as_names(find_pairs(tmp_path / "v2")) == [("rain-1.png", "norain-1.png")]
    touch(tmp_path / "v3" / "input", "1.png")
    touch(tmp_path / "v3" / "target", "1.png")
    assert as_names(find_pairs(tmp_path / "v3")) == [("1.png", "1.png")]


def test_spa(tmp_path):
    touch(tmp_path / "rain", "001.png", "002.png")
    touch(tmp_path / "gt", "001gt.png", "002gt.png")
    assert as_names(find_pairs(tmp_path)) == [("001.png", "001gt.png"), ("002.png", "002gt.png")]


def test_dense_haze_flat_and_split(tmp_path):
    touch(tmp_path / "flat", "01_hazy.png", "01_GT.png", "02_hazy.png", "02_GT.png")
    assert as_names(find_pairs(tmp_path / "flat")) == [("01_hazy.png", "01_GT.png"), ("02_hazy.png", "02_GT.png")]
    touch(tmp_path / "split" / "hazy", "51_hazy.png")
    touch(tmp_path / "split" / "GT", "51_GT.png")
    assert as_names(find_pairs(tmp_path / "split")) == [("51_hazy.png", "51_GT.png")]


def test_sots_outdoor(tmp_path):
    touch(tmp_path / "hazy", "0001_0.8_0.2.jpg", "0002_1_0.16.jpg")
    touch(tmp_path / "clear", "0001.png", "0002.png")
    assert as_names(find_pairs(tmp_path)) == [("0001_0.8_0.2.jpg", "0001.png"), ("0002_1_0.16.jpg", "0002.png")]


def test_own_photos_are_restore_only(tmp_path):
    touch(tmp_path, "IMG_0001.jpg", "holiday.png")
    pairs = find_pairs(tmp_path)
    assert as_names(pairs) == [("IMG_0001.jpg", None), ("holiday.png", None)]


def test_unmatched_names_are_listed(tmp_path):
    touch(tmp_path / "in", "a.png", "b.png", "c.png")
    touch(tmp_path / "gt", "a.png", "x.png")
    with pytest.raises(InputError) as err:
        find_pairs(tmp_path / "in", tmp_path / "gt")
    msg = str(err.value)
    assert "b.png, c.png" in msg and "x" in msg and "no ground truth for 2" in msg
