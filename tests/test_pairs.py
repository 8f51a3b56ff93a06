import re

import numpy as np
import pytest

from common.data.images import IMAGE_KINDS, write_image
from common.data.pairs import find_pairs
from common.system.errors import InputError


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


def notes(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: ")]


def test_files_of_other_kinds_are_named_once_per_folder(tmp_path, capsys):
    touch(tmp_path / "in", "a.png", "b.jpg")
    for name in ("anim.gif", "notes.txt", ".DS_Store", "._b.jpg"):  # ._b.jpg: macOS's metadata of b.jpg
        (tmp_path / "in" / name).write_bytes(b"GIF89a")
    (tmp_path / "in" / "old results").mkdir()
    assert as_names(find_pairs(tmp_path / "in")) == [("a.png", None), ("b.jpg", None)]
    assert as_names(find_pairs(tmp_path / "in")) == [("a.png", None), ("b.jpg", None)]  # validation lists it again
    assert notes(capsys) == [f"note: {tmp_path / 'in'}: 3 files skipped, not images of a kind read here "
                             f"({IMAGE_KINDS}): ._b.jpg, anim.gif, notes.txt"]  # other hidden files, subfolders unmentioned
    touch(tmp_path / "gt", "a.png", "b.png")
    for i in range(7):
        (tmp_path / "gt" / f"{i}.heic").write_bytes(b"")
    find_pairs(tmp_path / "in", tmp_path / "gt")
    assert notes(capsys) == [f"note: {tmp_path / 'gt'}: 7 files skipped, not images of a kind read here "
                             f"({IMAGE_KINDS}): 0.heic, 1.heic, 2.heic, 3.heic, 4.heic and 2 more"]


def test_layouts_note_the_folders_they_read_and_not_the_data_sets_own_files(tmp_path, capsys):
    touch(tmp_path / "set" / "input", "rain-1.png")
    touch(tmp_path / "set" / "target", "norain-1.png")
    (tmp_path / "set" / "README.txt").write_text("Rain100L")  # beside the layout's subfolders: not read
    (tmp_path / "set" / "target" / "Thumbs.db").write_bytes(b"")
    assert as_names(find_pairs(tmp_path / "set")) == [("rain-1.png", "norain-1.png")]
    assert notes(capsys) == [f"note: {tmp_path / 'set' / 'target'}: 1 file skipped, not an image of a kind read "
                             f"here ({IMAGE_KINDS}): Thumbs.db"]
    touch(tmp_path / "set", "extra.png")  # an image beside the layout's subfolders is a user's: named
    assert as_names(find_pairs(tmp_path / "set")) == [("rain-1.png", "norain-1.png")]
    assert notes(capsys)[0] == (f"note: {tmp_path / 'set'}: 1 image(s) beside its input/ and target/ folders are not "
                                "read (only those two are): extra.png")
    touch(tmp_path / "flat", "01_hazy.png", "01_GT.png")
    (tmp_path / "flat" / "readme.txt").write_text("Dense-Haze")
    assert as_names(find_pairs(tmp_path / "flat")) == [("01_hazy.png", "01_GT.png")]
    assert notes(capsys) == [f"note: {tmp_path / 'flat'}: 1 file skipped, not an image of a kind read here "
                             f"({IMAGE_KINDS}): readme.txt"]


def test_a_folder_without_images_says_what_it_looked_for_and_what_it_holds(tmp_path, capsys):
    (tmp_path / "gif").mkdir()
    (tmp_path / "gif" / "anim.gif").write_bytes(b"GIF89a")
    with pytest.raises(InputError) as err:
        find_pairs(tmp_path / "gif")
    assert str(err.value) == (f"{tmp_path / 'gif'}: no images in the input folder (looked for {IMAGE_KINDS}); "
                              "it holds 1 file of another kind: anim.gif")
    assert notes(capsys) == []  # the error says it: no note before it
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="; it is empty$"):
        find_pairs(tmp_path / "empty")
    touch(tmp_path / "parent" / "rainy", "1.png")  # a folder one level too high
    with pytest.raises(InputError, match=r"it holds 1 subfolder, not looked into: rainy; .*input/ \+ target/"):
        find_pairs(tmp_path / "parent")
    touch(tmp_path / "sots" / "hazy")  # a test set's subfolders, empty: the error names the input one
    touch(tmp_path / "sots" / "clear")
    with pytest.raises(InputError, match=f"^{re.escape(str(tmp_path / 'sots' / 'hazy'))}: no images in the input"):
        find_pairs(tmp_path / "sots")
