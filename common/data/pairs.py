"""Which degraded image goes with which ground truth, for validation and testing.

Besides two folders with equal file names, the common layouts of the real test sets are recognised
by themselves (see :data:`NAME_LAYOUTS` and :data:`SUBFOLDERS`): point ``--input`` at the data set's
folder and the pairs are found.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..system.errors import InputError
from ..system.text import note
from .images import (IMAGE_KINDS, check_folder, describe_contents, folder_contents, list_images, note_once, note_skipped,
                     some_names)


@dataclass(frozen=True)
class Pair:
    name: str            # the name results are written under (the input's, no extension)
    input: Path
    gt: Path | None      # None: restore only, no metrics


@dataclass(frozen=True)
class NameLayout:
    """How input and ground-truth file names (without extension) map to a shared key."""
    name: str
    description: str
    input_pattern: str   # a full match; group 1 is the key
    gt_pattern: str
    # in a folder holding both sides: the data set's images that are neither (other methods' results),
    # named in a note and not read
    others_pattern: str | None = None

    def input_key(self, stem: str) -> str | None:
        m = re.fullmatch(self.input_pattern, stem, re.S)  # a name may hold a line break
        return m.group(1) if m else None

    def gt_key(self, stem: str) -> str | None:
        m = re.fullmatch(self.gt_pattern, stem, re.S)
        return m.group(1) if m else None


NAME_LAYOUTS = (
    NameLayout("plain", "equal file names", r"(.+)", r"(.+)"),
    NameLayout("Rain100L", "rain-XXX with norain-XXX", r"rain-(.+)", r"norain-(.+)"),
    NameLayout("SPA", "NNN with NNNgt", r"(.+)", r"(.+)gt"),
    NameLayout("Dense-Haze", "NN_hazy with NN_GT", r"(.+)_hazy", r"(.+)_GT"),
    NameLayout("RESIDE SOTS", "ID_A_beta (or ID_k) with ID", r"([^_]+)(?:_[^_]+){1,2}", r"([^_]+)"),
    # tried after those above, so that every set they pair is paired as before
    NameLayout("DIV2K", "NNNNxS with NNNN, S the scale", r"(.+)x\d+[mdw]?", r"(.+)"),
    NameLayout("SRF", "NAME_SRF_S_LR with NAME_SRF_S_HR", r"(.+_SRF_\d+)_LR", r"(.+_SRF_\d+)_HR",
               others_pattern=r".+_SRF_\d+_.+"),
)

# Layouts recognised with both sides in one folder; the others need two folders, since their
# patterns would also match a folder of one's own photographs.
FLAT_NAME_LAYOUTS = ("Rain100L", "Dense-Haze", "SRF")

# A data set's folder whose images are all the ground truths of a flat layout may hold the inputs
# in a subfolder of this name (PReNet's Rain100H and Rain100L: rainy/rain-NNN.png beside norain-NNN.png)
INPUTS_BESIDE_GROUND_TRUTH = "rainy"

# (input folder, ground-truth folder) inside a data set's folder, matched without regard to case; a
# nested one before its parent's
SUBFOLDERS = (("input", "target"), ("rain", "gt"), ("rain/X2", "norain"), ("rain", "norain"), ("hazy", "clear"),
              ("hazy", "gt"), ("LR_bicubic/X4", "HR"), ("DIV2K_valid_LR_bicubic/X4", "DIV2K_valid_HR"))


def _match(inputs: list[Path], gts: list[Path], layout: NameLayout) -> list[Pair] | None:
    by_key: dict[str, Path] = {}
    for g in gts:
        key = layout.gt_key(g.stem)
        if key is None or key in by_key:
            return None
        by_key[key] = g
    pairs = []
    for p in inputs:
        key = layout.input_key(p.stem)
        if key is None or key not in by_key:
            return None
        pairs.append(Pair(p.stem, p, by_key[key]))
    if {pair.gt for pair in pairs} != set(by_key.values()):
        return None
    return pairs


def check_unique_names(files: list[Path], role: str) -> None:
    """Two files whose names differ only by extension (a.png, a.jpg) cannot be told apart by name:
    two inputs would be restored into one a.png, two ground truths would match one input."""
    by_stem: dict[str, Path] = {}
    for f in files:
        if f.stem in by_stem:
            first = by_stem[f.stem]
            consequence = (f"their restored images would both be written as {f.stem}.png" if role == "input"
                           else "either could be the ground truth of the input of that name")
            raise InputError(f"{first.parent}: two {role}s share the name '{f.stem}' ({first.name} and {f.name}): "
                             f"{consequence}; rename or remove one")
        by_stem[f.stem] = f


def _unpaired(inputs: list[Path], gts: list[Path], layout: NameLayout) -> tuple[list[Path], list[Path], int]:
    """The inputs and the ground truths that ``layout`` leaves without a partner, and how many of the
    names fit its patterns by dropping a part of themselves (which tells its layout from equal names)."""
    in_keys = {p: layout.input_key(p.stem) for p in inputs}
    gt_keys = {g: layout.gt_key(g.stem) for g in gts}
    input_side, gt_side = set(in_keys.values()) - {None}, set(gt_keys.values()) - {None}
    lone_inputs = [p for p, key in in_keys.items() if key not in gt_side]
    lone_gts = [g for g, key in gt_keys.items() if key not in input_side]
    fitting = sum(key is not None and key != f.stem for f, key in [*in_keys.items(), *gt_keys.items()])
    return lone_inputs, lone_gts, fitting


def _pairing_error(inputs: list[Path], gts: list[Path], where: str) -> InputError:
    """One line: one input and one ground truth left unpaired by the layout that pairs the most of
    these images (of equal counts, the one whose patterns fit the most names), and that layout."""
    closest = None
    for layout in NAME_LAYOUTS:
        lone_inputs, lone_gts, fitting = _unpaired(inputs, gts, layout)
        score = (len(inputs) - len(lone_inputs) + len(gts) - len(lone_gts), fitting)
        if closest is None or score > closest[0]:
            closest = (score, layout, lone_inputs, lone_gts)
    _, layout, lone_inputs, lone_gts = closest
    parts = []
    if lone_inputs:
        parts.append(f"no ground truth for {len(lone_inputs)} input{'s' if len(lone_inputs) != 1 else ''} "
                     f"({'such as ' if len(lone_inputs) > 1 else ''}{lone_inputs[0].name})")
    if lone_gts:
        parts.append(f"no input for {len(lone_gts)} ground truth{'s' if len(lone_gts) != 1 else ''} "
                     f"({'such as ' if len(lone_gts) > 1 else ''}{lone_gts[0].name})")
    why = " and ".join(parts) or "no name layout maps every input to exactly one ground truth"
    return InputError(f"{where}: cannot pair the images: {why}, by the closest name layout, {layout.name} "
                      f"({layout.description}); docs/TESTING.md lists the layouts read")


def pair_files(inputs: list[Path], gts: list[Path], where: str) -> tuple[list[Pair], NameLayout]:
    """Pair two lists of images by the first layout that pairs every input and uses every ground
    truth. If none does, the error names what the closest layout leaves unpaired."""
    check_unique_names(inputs, "input")
    check_unique_names(gts, "ground truth")
    for layout in NAME_LAYOUTS:
        pairs = _match(inputs, gts, layout)
        if pairs is not None:
            return pairs, layout
    raise _pairing_error(inputs, gts, where)


def _subfolder(root: Path, path: str) -> Path | None:
    """``root``'s subfolder ``path`` (``a/b`` for a nested one), each part matched without regard to case."""
    folder = root
    for name in path.lower().split("/"):
        folder = next((child for child in folder.iterdir() if child.is_dir() and child.name.lower() == name), None)
        if folder is None:
            return None
    return folder


def find_pairs(input_dir: str | os.PathLike, gt_dir: str | os.PathLike | None = None,
               verbose: bool = False) -> list[Pair]:
    """The (input, ground truth) pairs of a test set.

    With ``gt_dir``, the images of the two folders are paired by name (any of :data:`NAME_LAYOUTS`).
    Without it, ``input_dir`` may be a data set's folder: ``input/`` + ``target/`` (Rain100L),
    ``rain/`` + ``gt/`` (SPA), ``hazy/`` + ``clear/`` (RESIDE SOTS), ``hazy/`` + ``GT/``
    (Dense-Haze), ``LR_bicubic/X4/`` + ``HR/`` (the benchmark sets), the others of :data:`SUBFOLDERS`,
    one folder holding both sides (``rain-*``/``norain-*``, ``*_hazy``/``*_GT``,
    ``*_SRF_4_LR``/``*_SRF_4_HR``), or the ground truths with the inputs in ``rainy/`` (Rain100H).
    Otherwise every image in it is an input to restore, without metrics.
    """
    root = check_folder(input_dir)
    # the folders whose images are read, input first: their other files are named in a note, once
    # all is found (listing them while layouts are tried would say it of folders not used)
    read: list[Path] = [root]
    if gt_dir is not None:
        read.append(Path(gt_dir))
        pairs, layout = pair_files(list_images(root, notes=False), list_images(gt_dir, notes=False),
                                   f"{root} with {gt_dir}")
    else:
        pairs, layout = None, None
        for in_name, gt_name in SUBFOLDERS:
            sub_in, sub_gt = _subfolder(root, in_name), _subfolder(root, gt_name)
            if sub_in is not None and sub_gt is not None:
                read = [sub_in, sub_gt]  # the data set's folder itself is not read: its README stays unmentioned
                pairs, layout = pair_files(list_images(sub_in, notes=False), list_images(sub_gt, notes=False),
                                           f"{sub_in} with {sub_gt}")
                loose = list_images(root, notes=False)  # images there would be a user's, so they are named
                if loose:
                    note_once(f"{root}: {len(loose)} image(s) beside its {sub_in.relative_to(root)}/ and "
                              f"{sub_gt.relative_to(root)}/ folders "
                              f"are not read (only those two are): {some_names(loose)}", ("loose", str(root)))
                break
        if pairs is None:
            files = list_images(root, notes=False)
            for candidate in (l for l in NAME_LAYOUTS if l.name in FLAT_NAME_LAYOUTS):
                found = _flat_pairs(root, files, candidate)
                if found is not None:
                    (pairs, read), layout = found, candidate
                    break
        if pairs is None:
            check_unique_names(files, "input")
            pairs = [Pair(p.stem, p, None) for p in files]
    if not pairs:
        raise InputError(f"{read[0]}: no images in the input folder (looked for {IMAGE_KINDS}); "
                         + _what_instead(read[0], layout_hint=gt_dir is None and read[0] == root))
    for folder in read:
        note_skipped(folder)
    if verbose and layout is not None and layout.name != "plain":
        note(f"{root}: {layout.name} layout ({layout.description}), {len(pairs)} pairs")
    return pairs


def _flat_pairs(root: Path, files: list[Path], layout: NameLayout) -> tuple[list[Pair], list[Path]] | None:
    """The pairs of a folder holding both sides of ``layout`` (and perhaps the images of other methods
    that the layout names), or holding its ground truths with the inputs in a subfolder, and the
    folders read, input first; None where the folder is not one of these."""
    gts = [f for f in files if layout.gt_key(f.stem) is not None and layout.input_key(f.stem) is None]
    ins = [f for f in files if f not in gts and layout.input_key(f.stem) is not None]
    others = [f for f in files if f not in gts and f not in ins and layout.others_pattern
              and re.fullmatch(layout.others_pattern, f.stem, re.S)]
    if not gts or len(ins) + len(gts) + len(others) != len(files):
        return None
    read, where = [root], str(root)
    if not ins:
        sub = _subfolder(root, INPUTS_BESIDE_GROUND_TRUTH)
        if sub is None:
            return None
        ins, read, where = list_images(sub, notes=False), [sub, root], f"{sub} with {root}"
    if others:
        note_once(f"{root}: {len(others)} image(s) neither input nor ground truth of its {layout.name} layout "
                  f"({layout.description}) are not read: {some_names(others)}", ("others", str(root)))
    return pair_files(ins, gts, where)[0], read


def _what_instead(folder: Path, layout_hint: bool) -> str:
    """What a folder without images holds, and, if it has subfolders, which ones a test set's are."""
    contents = folder_contents(folder)
    text = describe_contents(contents)
    if layout_hint and contents.subfolders:
        known = ", ".join(f"{a}/ + {b}/" for a, b in SUBFOLDERS)
        text += f"; subfolders are read as a test set's when they are {known}"
    return text
