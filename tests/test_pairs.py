import re

import numpy as np
import pytest

from common.cli.test import test_main as run_test_script
from common.cli.train import parse_train_args
from common.data.images import IMAGE_KINDS, write_image
from common.data.pairs import find_pairs
from common.system.errors import InputError
from common.tasks import TASKS
from common.training.preflight import check_validation
from helpers import generator_checkpoint, write_photos


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


def empty(folder, *names):
    """Empty files named as a data set's archive names them: pairing reads names only."""
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).write_bytes(b"")
    return folder


def test_div2k_lr_names_carry_the_scale(tmp_path):
    """DIV2K names its LR images 0801x4.png beside the HR 0801.png (the tracks of other degradations
    0801x4m.png, ...); sr/test.py --input DIV2K_valid_LR_bicubic/X4/ --gt DIV2K_valid_HR/ found no pair."""
    lr = empty(tmp_path / "DIV2K_valid_LR_bicubic" / "X4", "0801x4.png", "0802x4.png", "0900x4.png")
    hr = empty(tmp_path / "DIV2K_valid_HR", "0801.png", "0802.png", "0900.png")
    expected = [("0801x4.png", "0801.png"), ("0802x4.png", "0802.png"), ("0900x4.png", "0900.png")]
    assert as_names(find_pairs(lr, hr)) == expected
    assert as_names(find_pairs(tmp_path)) == expected  # the DIV2K folder itself
    mild = empty(tmp_path / "DIV2K_valid_LR_mild", "0801x4m.png", "0802x4m.png", "0900x4m.png")
    assert [p.gt.name for p in sorted(find_pairs(mild, hr), key=lambda p: p.name)] == ["0801.png", "0802.png", "0900.png"]


def test_benchmark_sets_as_their_packs_name_them(tmp_path):
    """Set5, Set14, BSD100 and Urban100 come as image_SRF_4/ folders holding img_NNN_SRF_4_LR.png and
    _HR.png beside other methods' results (named in a note, not read), and as HR/ + LR_bicubic/X4/,
    whose LR names may carry the scale (babyx4.png against baby.png)."""
    methods = ("A+", "bicubic", "Glasner", "Kim", "nearest", "ScSR", "SelfExSR", "SRCNN")
    srf = empty(tmp_path / "Set5" / "image_SRF_4", *(f"img_00{i}_SRF_4_{kind}.png" for i in (1, 2)
                                                     for kind in ("HR", "LR", *methods)))
    assert as_names(find_pairs(srf)) == [("img_001_SRF_4_LR.png", "img_001_SRF_4_HR.png"),
                                         ("img_002_SRF_4_LR.png", "img_002_SRF_4_HR.png")]
    empty(tmp_path / "lr", "img_001_SRF_4_LR.png")
    empty(tmp_path / "hr", "img_001_SRF_4_HR.png")
    assert as_names(find_pairs(tmp_path / "lr", tmp_path / "hr")) == [("img_001_SRF_4_LR.png", "img_001_SRF_4_HR.png")]
    for lr_names in (("babyx4.png", "birdx4.png"), ("baby.png", "bird.png")):
        root = tmp_path / lr_names[0]
        empty(root / "HR", "baby.png", "bird.png")
        empty(root / "LR_bicubic" / "X4", *lr_names)
        assert as_names(find_pairs(root)) == [(lr_names[0], "baby.png"), (lr_names[1], "bird.png")]
        assert len(find_pairs(root / "LR_bicubic" / "X4", root / "HR")) == 2


def test_rain100h_and_rain100l_as_distributed(tmp_path):
    """Rain100L and Rain100H: rain-NNN.png with norain-NNN.png, in one folder, or (PReNet's copies) the
    norain images with the rainy ones in rainy/, or (JORDER's) rain/X2/norain-Nx2.png with
    norain/norain-N.png (rain/norain-Nx2.png for the light set)."""
    empty(tmp_path / "flat", "rain-001.png", "norain-001.png", "rain-100.png", "norain-100.png")
    assert as_names(find_pairs(tmp_path / "flat")) == [("rain-001.png", "norain-001.png"),
                                                       ("rain-100.png", "norain-100.png")]
    empty(tmp_path / "prenet" / "Rain100H", "norain-001.png", "norain-002.png")
    empty(tmp_path / "prenet" / "Rain100H" / "rainy", "rain-001.png", "rain-002.png")
    expected = [("rain-001.png", "norain-001.png"), ("rain-002.png", "norain-002.png")]
    assert as_names(find_pairs(tmp_path / "prenet" / "Rain100H")) == expected
    assert as_names(find_pairs(tmp_path / "prenet" / "Rain100H" / "rainy", tmp_path / "prenet" / "Rain100H")) == expected
    empty(tmp_path / "heavy" / "rain" / "X2", "norain-1x2.png", "norain-2x2.png")
    empty(tmp_path / "heavy" / "norain", "norain-1.png", "norain-2.png")
    assert as_names(find_pairs(tmp_path / "heavy")) == [("norain-1x2.png", "norain-1.png"),
                                                        ("norain-2x2.png", "norain-2.png")]
    empty(tmp_path / "light" / "rain", "norain-1x2.png")
    empty(tmp_path / "light" / "norain", "norain-1.png")
    assert as_names(find_pairs(tmp_path / "light")) == [("norain-1x2.png", "norain-1.png")]


def test_spa_sots_dense_haze_and_reside_as_distributed(tmp_path):
    """SPA-Data's test set real_test_1000/ (rain/NNN.png, gt/NNNgt.png), SOTS (hazy/ + gt/, several
    hazy images of one clean one indoors), Dense-Haze, NH-Haze and O-HAZE (NN_hazy with NN_GT), and
    RESIDE's NNNN_K_A hazy names against NNNN clean ones, each clean image shared by several."""
    empty(tmp_path / "real_test_1000" / "rain", "000.png", "999.png")
    empty(tmp_path / "real_test_1000" / "gt", "000gt.png", "999gt.png")
    assert as_names(find_pairs(tmp_path / "real_test_1000")) == [("000.png", "000gt.png"), ("999.png", "999gt.png")]
    empty(tmp_path / "indoor" / "hazy", *(f"1400_{k}.png" for k in range(1, 11)), "1401_1.png")
    empty(tmp_path / "indoor" / "gt", "1400.png", "1401.png")
    pairs = find_pairs(tmp_path / "indoor")
    assert len(pairs) == 11 and {p.gt.name for p in pairs if p.name.startswith("1400_")} == {"1400.png"}
    empty(tmp_path / "outdoor" / "hazy", "0001_0.8_0.2.jpg", "0001_0.85_0.16.jpg", "0002_1_0.2.jpg")
    empty(tmp_path / "outdoor" / "clear", "0001.png", "0002.png")
    assert as_names(find_pairs(tmp_path / "outdoor" / "hazy", tmp_path / "outdoor" / "clear")) == [
        ("0001_0.85_0.16.jpg", "0001.png"), ("0001_0.8_0.2.jpg", "0001.png"), ("0002_1_0.2.jpg", "0002.png")]
    empty(tmp_path / "Dense-Haze", "51_hazy.png", "51_GT.png", "55_hazy.png", "55_GT.png")
    assert as_names(find_pairs(tmp_path / "Dense-Haze")) == [("51_hazy.png", "51_GT.png"), ("55_hazy.png", "55_GT.png")]
    empty(tmp_path / "O-HAZE" / "hazy", "01_outdoor_hazy.jpg")
    empty(tmp_path / "O-HAZE" / "GT", "01_outdoor_GT.jpg")
    assert as_names(find_pairs(tmp_path / "O-HAZE")) == [("01_outdoor_hazy.jpg", "01_outdoor_GT.jpg")]


def test_unpaired_names_one_of_each_side_and_the_closest_layout(tmp_path):
    touch(tmp_path / "in", "a.png", "b.png", "c.png")
    touch(tmp_path / "gt", "a.png", "x.png")
    with pytest.raises(InputError) as err:
        find_pairs(tmp_path / "in", tmp_path / "gt")
    assert str(err.value) == (f"{tmp_path / 'in'} with {tmp_path / 'gt'}: cannot pair the images: no ground truth "
                              "for 2 inputs (such as b.png) and no input for 1 ground truth (x.png), by the closest "
                              "name layout, plain (equal file names); docs/TESTING.md lists the layouts read")
    lr = empty(tmp_path / "X4", "0801x4.png", "0802x4.png", "0803x4.png")
    hr = empty(tmp_path / "HR", "0801.png", "0802.png", "0899.png")
    with pytest.raises(InputError, match=r": no ground truth for 1 input \(0803x4.png\) and no input for 1 ground "
                                         r"truth \(0899.png\), by the closest name layout, DIV2K \(NNNNxS"):
        find_pairs(lr, hr)
    empty(tmp_path / "rain", "rain-1.png")
    empty(tmp_path / "clean", "1_GT.png")  # nothing pairs: the layout whose patterns fit the names
    with pytest.raises(InputError, match=r"\(rain-1.png\) and .* \(1_GT.png\), by the closest name layout, Rain100L"):
        find_pairs(tmp_path / "rain", tmp_path / "clean")


def div2k_photos(tmp_path):
    lr = write_photos(tmp_path / "DIV2K_valid_LR_bicubic" / "X4", ["0801x4.png", "0802x4.png"], side=8)
    return lr, write_photos(tmp_path / "DIV2K_valid_HR", ["0801.png", "0802.png"], side=32)


def test_training_validation_pairs_as_test_py_does(tmp_path):
    """sr/train.py --val-input DIV2K_valid_LR_bicubic/X4/ --val-gt DIV2K_valid_HR/ stopped before training."""
    lr, hr = div2k_photos(tmp_path)
    config = parse_train_args(TASKS["sr"], ["--val-input", str(lr), "--val-gt", str(hr)])
    assert [(p.input.name, p.gt.name) for p in check_validation(TASKS["sr"], config)] == [
        ("0801x4.png", "0801.png"), ("0802x4.png", "0802.png")]


@pytest.mark.slow
def test_test_py_scores_div2k_as_named(tmp_path, capsys):
    lr, hr = div2k_photos(tmp_path)
    run_test_script("sr", ["--checkpoint", str(generator_checkpoint(tmp_path / "g.pt")), "--input", str(lr),
                           "--gt", str(hr), "--device", "cpu", "--no-lpips", "--no-report", "--save", str(tmp_path / "res")])
    out = capsys.readouterr().out
    assert "0801x4: PSNR" in out and "0802x4: PSNR" in out and "mean: PSNR" in out


def notes(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: ")]


def test_other_methods_in_a_benchmark_pack_are_named(tmp_path, capsys):
    srf = empty(tmp_path / "Urban100" / "image_SRF_4", "img_001_SRF_4_HR.png", "img_001_SRF_4_LR.png",
                "img_001_SRF_4_bicubic.png")
    find_pairs(srf)
    assert notes(capsys) == [f"note: {srf}: 1 image(s) neither input nor ground truth of its SRF layout "
                             "(NAME_SRF_S_LR with NAME_SRF_S_HR) are not read: img_001_SRF_4_bicubic.png"]


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
