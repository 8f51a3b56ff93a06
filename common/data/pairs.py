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
)

# Layouts recognised with both sides in one folder; the others need two folders, since their
# patterns would also match a folder of one's own photographs.
FLAT_NAME_LAYOUTS = ("Rain100L", "Dense-Haze")

# (input folder, ground-truth folder) inside a data set's folder, matched without regard to case
SUBFOLDERS = (("input", "target"), ("rain", "gt"), ("rain", "norain"), ("hazy", "clear"), ("hazy", "gt"))


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


def pair_files(inputs: list[Path], gts: list[Path], where: str) -> tuple[list[Pair], NameLayout]:
    """Pair two lists of images by the first layout that pairs every input and uses every ground
    truth. If none does, the error lists the names that equal-name pairing leaves unmatched."""
    check_unique_names(inputs, "input")
    check_unique_names(gts, "ground truth")
    for layout in NAME_LAYOUTS:
        pairs = _match(inputs, gts, layout)
        if pairs is not None:
            return pairs, layout
    gt_stems, in_stems = {g.stem for g in gts}, {p.stem for p in inputs}
    missing = [p.name for p in inputs if p.stem not in gt_stems]
    extra = sorted(gt_stems - in_stems)
    parts = []
    if missing:
        parts.append(f"no ground truth for {len(missing)} input(s): {', '.join(missing[:10])}")
    if extra:
        parts.append(f"no input for {len(extra)} ground truth(s): {', '.join(extra[:10])}")
    known = "; ".join(f"{l.name}: {l.description}" for l in NAME_LAYOUTS)
    why = "; ".join(parts) or "no name layout maps every input to exactly one ground truth"
    raise InputError(f"{where}: cannot pair the images ({why}). Known name layouts: {known}")


def _subfolder(root: Path, name: str) -> Path | None:
    for child in root.iterdir():
        if child.is_dir() and child.name.lower() == name:
            return child
    return None


def find_pairs(input_dir: str | os.PathLike, gt_dir: str | os.PathLike | None = None,
               verbose: bool = False) -> list[Pair]:
    """The (input, ground truth) pairs of a test set.

    With ``gt_dir``, the images of the two folders are paired by name (any of :data:`NAME_LAYOUTS`).
    Without it, ``input_dir`` may be a data set's folder: ``input/`` + ``target/`` (Rain100L),
    ``rain/`` + ``gt/`` (SPA), ``hazy/`` + ``clear/`` (RESIDE SOTS), ``hazy/`` + ``GT/``
    (Dense-Haze), or one folder holding both sides (``rain-*``/``norain-*``, ``*_hazy``/``*_GT``).
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
                    note_once(f"{root}: {len(loose)} image(s) beside its {sub_in.name}/ and {sub_gt.name}/ folders "
                              f"are not read (only those two are): {some_names(loose)}", ("loose", str(root)))
                break
        if pairs is None:
            files = list_images(root, notes=False)
            for candidate in (l for l in NAME_LAYOUTS if l.name in FLAT_NAME_LAYOUTS):
                gts = [f for f in files if candidate.gt_key(f.stem) is not None and candidate.input_key(f.stem) is None]
                ins = [f for f in files if f not in gts and candidate.input_key(f.stem) is not None]
                if gts and ins and len(ins) + len(gts) == len(files):
                    pairs, layout = pair_files(ins, gts, str(root))
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


def _what_instead(folder: Path, layout_hint: bool) -> str:
    """What a folder without images holds, and, if it has subfolders, which ones a test set's are."""
    contents = folder_contents(folder)
    text = describe_contents(contents)
    if layout_hint and contents.subfolders:
        known = ", ".join(f"{a}/ + {b}/" for a, b in SUBFOLDERS)
        text += f"; subfolders are read as a test set's when they are {known}"
    return text
