"""A score that needs no ground truth: how far restored images lie, in distribution, from clean ones.

An unsupervised user has degraded images, what the model makes of them, and clean images that do not
match them (the clean side of the training set, or a folder of their own). The score compares the
restored images with those clean images the way GAN evaluations compare two sets of images: the
sliced Wasserstein distance (SWD) between small neighbourhoods of their Laplacian pyramids (Karras et
al., "Progressive Growing of GANs", 2018, section 5). Each image is split into band-pass levels (the
finest detail, coarser detail, ...) and a low-pass residual (colour and shading); at every level the
7x7 neighbourhoods of its pixels (147 numbers with the three channels) are the image's descriptors.
Two sets of descriptors are compared along 256 fixed random directions, by the mean distance between
their quantiles (the Wasserstein-1 distance in one dimension), and the score is the mean over levels.
Lower is closer to clean; 0 is indistinguishable at this resolution.

Haze lifts the low-pass level's colours and flattens the band-pass ones; rain adds bright streaks to
the fine levels; blur empties them; a model that over-restores adds what clean images do not hold.
So the score of the restored images falls as a model restores and rises again as it overshoots.
The clean images need not show the same scenes: what matters is how the score moves between
checkpoints, sigmas, or an image and its restored version. How well it picks checkpoints and sigmas,
measured against PSNR, is in docs/RESULTS.md ("Choosing without ground truth"); choices made with it
say so where they are printed.

Deterministic and independent of the order of the images: descriptors are taken on a fixed grid, the
directions from a fixed seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..data.images import list_images, read_image
from ..system.errors import InputError
from ..system.files import same_file

LEVELS = 4            # three band-pass levels and the low-pass residual
NEIGHBOURHOOD = 7     # descriptor: 7x7 pixels x 3 channels
DIRECTIONS = 256      # random projections of the 147-dimensional descriptors
QUANTILES = (np.arange(256) + 0.5) / 256
DIRECTION_SEED = 2018
CLEAN_PATCHES = 256   # clean patches taken from a training file for the reference
PER_CLEAN = 128       # descriptors per level from each clean patch (at most)
PER_IMAGE = 2048      # descriptors per level from each scored image (at most)
SET_DESCRIPTORS = 65536  # descriptors per level of a whole set, an even share from each image
DESCRIPTOR = NEIGHBOURHOOD * NEIGHBOURHOOD * 3


def laplacian_pyramid(img: np.ndarray, levels: int = LEVELS) -> list[np.ndarray]:
    """``levels - 1`` band-pass levels, finest first, and the low-pass residual (float32, H x W x 3)."""
    gauss = [np.ascontiguousarray(img, dtype=np.float32)]
    for _ in range(levels - 1):
        gauss.append(cv2.pyrDown(gauss[-1]))
    bands = [g - cv2.pyrUp(smaller, dstsize=(g.shape[1], g.shape[0])) for g, smaller in zip(gauss, gauss[1:])]
    return bands + [gauss[-1]]


def descriptors(img: np.ndarray, cap: int) -> list[np.ndarray]:
    """Per level, the 7x7x3 neighbourhoods (one row of 147 each) at a regular grid of at most about ``cap``
    positions. An image smaller than a neighbourhood at some level gives none there."""
    out = []
    for level in laplacian_pyramid(img):
        h, w = level.shape[0] - NEIGHBOURHOOD + 1, level.shape[1] - NEIGHBOURHOOD + 1
        if h < 1 or w < 1:
            out.append(np.empty((0, DESCRIPTOR), np.float32))
            continue
        stride = max(1, math.ceil(math.sqrt(h * w / cap)))
        windows = np.lib.stride_tricks.sliding_window_view(level, (NEIGHBOURHOOD, NEIGHBOURHOOD), axis=(0, 1))
        picked = windows[::stride, ::stride]  # y, x, channel, 7, 7
        out.append(np.ascontiguousarray(picked.transpose(0, 1, 3, 4, 2)).reshape(-1, NEIGHBOURHOOD ** 2 * 3))
    return out


def _quantiles(values: np.ndarray) -> np.ndarray:
    """The :data:`QUANTILES` of each column (linear interpolation between order statistics), as a
    :data:`DIRECTIONS` x quantiles array."""
    ordered = np.sort(np.ascontiguousarray(values.T, dtype=np.float32), axis=1)  # rows sort fast, columns do not
    pos = QUANTILES * (ordered.shape[1] - 1)
    low = np.floor(pos).astype(int)
    high = np.minimum(low + 1, ordered.shape[1] - 1)
    frac = (pos - low).astype(np.float32)
    return ordered[:, low] * (1 - frac) + ordered[:, high] * frac


@dataclass(frozen=True)
class CleanReference:
    """What clean images look like to the score: per pyramid level, the channels' mean and spread (both
    sets are normalised by them, so that each level counts alike) and the quantiles of the clean
    descriptors along each direction. ``source`` says where the clean images came from; ``trained_on``,
    whether the model being scored was trained to imitate them (see :data:`TRAINED_ON_CAVEAT`)."""
    source: str
    count: int
    trained_on: bool
    means: tuple
    spreads: tuple
    directions: tuple
    quantiles: tuple

    @classmethod
    def from_images(cls, images, source: str, trained_on: bool = False) -> "CleanReference":
        per_level = [[] for _ in range(LEVELS)]
        count = 0
        for img in images:
            count += 1
            for k, d in enumerate(descriptors(img, PER_CLEAN)):
                per_level[k].append(d)
        rng = np.random.default_rng(DIRECTION_SEED)
        means, spreads, directions, quantiles = [], [], [], []
        for k in range(LEVELS):
            d = np.concatenate(per_level[k]) if per_level[k] else np.empty((0, DESCRIPTOR))
            direction = rng.standard_normal((DESCRIPTOR, DIRECTIONS))  # drawn for every level: the same at each
            if len(d) < 2:  # images too small for this level's neighbourhoods: the score leaves it out
                if k == 0:
                    raise InputError(f"{source}: too small for the no-reference score (it needs images of at least "
                                     f"{NEIGHBOURHOOD} pixels a side)")
                means.append(None), spreads.append(None), directions.append(None), quantiles.append(None)
                continue
            channels = d.reshape(len(d), -1, 3)
            mean, spread = channels.mean((0, 1)), channels.std((0, 1)) + 1e-6
            direction = (direction / np.linalg.norm(direction, axis=0, keepdims=True)).astype(np.float32)
            means.append(mean)
            spreads.append(spread)
            directions.append(direction)
            quantiles.append(_quantiles(_normalised(d, mean, spread) @ direction))
        return cls(source, count, trained_on, tuple(means), tuple(spreads), tuple(directions), tuple(quantiles))

    def distance(self, per_level: list[np.ndarray]) -> float:
        """The score of descriptors (as :func:`descriptors` gives them): the mean over pyramid levels of the
        sliced Wasserstein distance to the clean descriptors; levels an image (or the clean images) are too
        small for are left out."""
        out = []
        for k, d in enumerate(per_level):
            if len(d) >= 2 and self.quantiles[k] is not None:
                projected = _normalised(d, self.means[k], self.spreads[k]) @ self.directions[k]
                out.append(float(np.abs(_quantiles(projected) - self.quantiles[k]).mean()))
        return float(np.mean(out)) if out else float("nan")

    def image_score(self, img: np.ndarray) -> float:
        """One image's score (H x W x 3, float in [0, 1]): its own neighbourhoods against the clean images'.
        An image alone is one scene against many, so its score also says how unlike the clean images its
        content is; set against its input's, it says whether restoring moved it closer to clean."""
        return self.distance(descriptors(img, PER_IMAGE))

    def score(self, images) -> float:
        """The score of several images together: their neighbourhoods pooled, against the clean images'. It
        does not depend on their order. Lower is closer to clean."""
        scores = SetScore(self)
        for img in images:
            scores.add(img)
        return scores.total()


class SetScore:
    """Scores images one at a time (:meth:`add`) and the set they make together (:meth:`total`), each
    image's descriptors computed once. For the set, each image keeps an even share of at most
    :data:`SET_DESCRIPTORS` a level (``expected``: how many images will come), so that a test set of
    thousands of images fits in memory."""

    def __init__(self, reference: CleanReference, expected: int = 1):
        self.reference = reference
        self.share = max(64, SET_DESCRIPTORS // max(expected, 1))
        self.kept: list[list[np.ndarray]] = [[] for _ in range(LEVELS)]

    def add(self, img: np.ndarray) -> float:
        """``img``'s own score (:meth:`CleanReference.image_score`); it also joins the set."""
        per_level = descriptors(img, PER_IMAGE)
        for k, d in enumerate(per_level):
            self.kept[k].append(d[:: max(1, math.ceil(len(d) / self.share))])
        return self.reference.distance(per_level)

    def total(self) -> float:
        """The score of every image added, together."""
        return self.reference.distance([np.concatenate(k) if k else np.empty((0, DESCRIPTOR)) for k in self.kept])


def _normalised(d: np.ndarray, mean: np.ndarray, spread: np.ndarray) -> np.ndarray:
    return ((d.reshape(len(d), -1, 3) - mean) / spread).reshape(len(d), -1).astype(np.float32)


def spaced_indices(total: int, count: int) -> np.ndarray:
    """``count`` indices spread evenly over ``range(total)`` (all of them when there are fewer)."""
    if total <= count:
        return np.arange(total)
    return np.unique(np.linspace(0, total - 1, count).round().astype(int))


def reference_from_training_data(dataset, count: int = CLEAN_PATCHES) -> CleanReference:
    """The reference from the clean side of a training set (a ``common.data.loader.UnpairedH5Dataset``):
    ``count`` of its clean patches, spread evenly over its files."""
    indices = spaced_indices(dataset.num_labels, count)
    patches = (dataset.clean_patch(int(j)).permute(1, 2, 0).numpy() for j in indices)
    return CleanReference.from_images(patches, f"{len(indices)} clean patches of the training set", trained_on=True)


def reference_from_folder(folder: str | Path, flag: str = "--clean",
                          scored: tuple[tuple[str | None, str], ...] = ()) -> CleanReference:
    """The reference from a folder of clean images (any sizes; read as every image is read). ``flag`` names
    the folder and ``scored`` the folders of the images scored and of their answers (folder, flag): the
    folder may be none of them, or the score would compare the restored images with their own inputs or
    answers."""
    for other, other_flag in scored:
        if other and same_file(other, folder):
            raise InputError(f"{flag} {folder} is the {other_flag} folder: the score would compare the restored "
                             "images with their own inputs or answers; give clean images of their own")
    paths = list_images(folder)
    return CleanReference.from_images((read_image(p) for p in paths), f"{len(paths)} clean images in {folder}")


# What the study in docs/RESULTS.md ("Choosing without ground truth") measured, said wherever the score
# chooses or judges: per task and reference (True: the training set's clean side; False: clean
# photographs of other scenes that the model was not trained on), how far the checkpoint the score chose
# on the demo's validation photographs fell behind the one validation PSNR chose, in PSNR on the 10
# wider held-out photographs (dB; the most within a run, the most across sigmas), and, where those
# figures mislead, what does not show in them.
MEASURED_REGRET = {("dehazing", True): (3.51, 3.46), ("dehazing", False): (0.0, 0.0),
                   ("deraining", True): (0.40, 0.49), ("deraining", False): (1.55, 1.41),
                   ("sr", True): (0.90, 0.90), ("sr", False): (0.90, 0.0)}
UNTRUSTED = {"sr": ("on x4 SR it agreed with validation PSNR and shared its mistake: on photographs that chose nothing "
                    "it ranked the checkpoints against PSNR (rank correlation -0.46), and its verdicts on single images "
                    "agreed with PSNR's on 9 to 21% of them")}
TRUSTED_REGRET = 1.0  # dB: a choice that fell further behind than this in the study is said not to be trusted
TRAINED_ON_CAVEAT = ("the model was trained to imitate these clean images, and against them the score can keep falling as "
                     "a model over-restores; clean photographs of the same kind of scene that it was not trained on "
                     "(--clean, or --val-clean in training) are a fairer reference")


def reliability(trained_on: bool, task: str | None = None) -> str:
    """One sentence: how far the score's choices can be trusted, as the study measured them for this task
    and kind of reference (``trained_on``: the clean images are the training set's)."""
    against = "the training set's clean side" if trained_on else "clean photographs not trained on"
    measured = MEASURED_REGRET.get((task, trained_on))
    if measured is None:
        return TRAINED_ON_CAVEAT if trained_on else ("measured against PSNR on the demos' data only "
                                                     "(docs/RESULTS.md, \"Choosing without ground truth\")")
    if task in UNTRUSTED:
        return f"NOT to be trusted: in the study (docs/RESULTS.md) {UNTRUSTED[task]}"
    worst = max(measured)
    if worst > TRUSTED_REGRET:
        remedy = (TRAINED_ON_CAVEAT if trained_on else "photographs of other kinds of scene misled it: give clean "
                  "photographs of the same kind of scene as the inputs")
        return (f"NOT to be trusted alone: in the study (docs/RESULTS.md) the {task} checkpoints it chose against "
                f"{against} were up to {worst:.1f} dB behind those validation PSNR chose; {remedy}")
    return (f"in the study (docs/RESULTS.md) the {task} checkpoints it chose against {against} were at most "
            f"{worst:.2f} dB behind those validation PSNR chose")


def score_reliability(reference: CleanReference, task: str | None = None) -> str:
    """:func:`reliability` for this reference."""
    return reliability(reference.trained_on, task)
