"""A small built-in unpaired data set from the photographs that scikit-image ships.

Both sides of the training file come from the same six photographs: ``data`` holds their degraded
patches, ``label`` their clean patches. Training stays unpaired: the loader draws each degraded
patch's clean partner at random from all clean patches, so a degraded patch meets its own clean
version only by chance (about one draw in the number of patches). What the two sides share is the
kind of scene, which is what makes an unpaired set learnable: their distributions then differ by
the degradation alone, as in the paper's large collections (DIV2K, Rain1800). With a handful of
photographs, disjoint sides would differ in content and colour too, and a critic would reward
repainting them. Validation uses three more photographs, on neither side.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np

from .h5format import H5PatchWriter, cut_patches
from .degrade import DEGRADATIONS, degradation_scale
from .images import write_image
from .tasks import Task

TRAIN_PHOTOS = ("astronaut", "rocket", "immunohistochemistry", "stereo_motorcycle", "hubble_deep_field", "coffee")
HELDOUT_PHOTOS = ("chelsea", "camera", "brick")
HELDOUT_SIDE = 256  # centre crops keep CPU validation quick
DEMO_STRIDE = 32    # overlapping 128x128 patches: about 1,100 a side
DEMO_SEED = 2024
DEMO_DATA_VERSION = 2  # bumped when the demo's data change, so that an older cached set is rebuilt
LAST_STEP_SLACK = 0.3  # dB the last step may lie below the input before the demo counts as failed

def demo_report(task: Task, config, result, seconds: float) -> str:
    """What the demo prints at the end: what it trained on, its PSNR against the input, a verdict."""
    paper = {"gen_width": 80, "critic_width": 64}
    narrowed = [f"{k.split('_')[0].replace('gen', 'generator')} width {getattr(config, k)} (the paper's {v})"
                for k, v in paper.items() if getattr(config, k) != v]
    val = result.last_val
    lines = [f"demo done in {seconds / 60:.1f} min ({result.step} steps of {config.batch_size} patches"
             + (f"; {', '.join(narrowed)}, narrowed so that a CPU can train; real training keeps the paper's sizes"
                if narrowed else "") + ").",
             f"Data: degraded and clean patches of the same {len(TRAIN_PHOTOS)} photographs; each degraded patch "
             "is trained against a clean patch drawn at random, so training is unpaired, and the two sides differ "
             "by the degradation alone, as in the paper's large sets.",
             f"PSNR on {len(HELDOUT_PHOTOS)} held-out photographs: {task.input_label} {val['input_psnr']:.2f} dB; "
             f"SOT ({config.cost}, sigma {result.sigma:g}"
             + (", the moving average of G's weights" if config.ema_decay else "")
             + f"): best checkpoint {result.best_psnr:.2f} dB (best.pt), last step {val['psnr']:.2f} dB.",
             demo_verdict(task, val["input_psnr"], result.best_psnr, val["psnr"]),
             f"Test it: python {task.name}/test.py --demo"]
    return "\n".join(lines)


def demo_verdict(task: Task, input_psnr: float, best: float, last: float) -> str:
    """One line: does the demo's model restore? Its best checkpoint must beat the degraded input (by
    ``task.demo_gain`` dB), and its last step must not fall more than 0.3 dB below the input."""
    ok = best >= input_psnr + task.demo_gain and last >= input_psnr - LAST_STEP_SLACK
    target = f"+{task.demo_gain:g} dB"
    return (f"verdict: {'restores' if ok else 'does NOT restore'}: best checkpoint {best - input_psnr:+.2f} dB, "
            f"last step {last - input_psnr:+.2f} dB against the {task.input_label} ({input_psnr:.2f} dB); "
            f"target: best {target}, last at most {LAST_STEP_SLACK} dB below")


def load_photo(name: str) -> np.ndarray:
    """A scikit-image sample photograph as float32 RGB in [0, 1] (grayscale ones are replicated)."""
    import skimage.data

    img = getattr(skimage.data, name)()
    if isinstance(img, tuple):  # stereo pairs: the left view
        img = img[0]
    img = img.astype(np.float32) / 255.0
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return img[:, :, :3]


def centre_crop(img: np.ndarray, side: int) -> np.ndarray:
    h, w = img.shape[:2]
    side = min(side, h, w) // 16 * 16
    top, left = (h - side) // 2, (w - side) // 2
    return img[top:top + side, left:left + side]


def demo_paths(root: Path) -> dict[str, Path]:
    return {"trainset": root / "train", "val_input": root / "val" / "input", "val_gt": root / "val" / "gt"}


def crop_to_multiple(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom and right to a multiple of ``scale``, so that degraded and clean grids align."""
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def write_heldout(folder: Path, photos: list[tuple[str, np.ndarray]], degradation: str,
                  rng: np.random.Generator, side: int = HELDOUT_SIDE) -> tuple[Path, Path]:
    """Centre crops of held-out photographs: degraded in ``folder/input``, clean in ``folder/gt``."""
    degrade = DEGRADATIONS[degradation]
    for name, img in photos:
        clean = centre_crop(img, side)
        write_image(folder / "gt" / f"{name}.png", clean)
        write_image(folder / "input" / f"{name}.png", degrade(clean, rng))
    return folder / "input", folder / "gt"


def write_training_file(path: Path, degraded_photos: list[tuple[str, np.ndarray]],
                        clean_photos: list[tuple[str, np.ndarray]], degradation: str, rng: np.random.Generator,
                        patch: int, stride: int, attrs: dict | None = None) -> Path:
    """An unpaired training file: ``data`` from the degraded ``degraded_photos``, ``label`` from the
    clean ``clean_photos``, both cut on the same grid (the degraded side at the degradation's scale).

    Given the same photographs on both sides, ``data[i]`` is the degraded twin of ``label[i]``: the
    loader's random partners make training unpaired, and ``--supervised`` can pair them."""
    degrade, scale = DEGRADATIONS[degradation], degradation_scale(degradation)
    attrs = {"degradation": degradation, "patch": patch, "stride": stride, "scale": scale,
             "data_photos": ",".join(n for n, _ in degraded_photos),
             "label_photos": ",".join(n for n, _ in clean_photos), **(attrs or {})}
    with H5PatchWriter(path, attrs=attrs) as writer:
        same = [n for n, _ in degraded_photos] == [n for n, _ in clean_photos]
        for k, (_, img) in enumerate(degraded_photos):
            clean = crop_to_multiple(img, scale)
            writer.append("data", cut_patches(degrade(clean, rng), patch // scale, stride // scale))
            if same:  # interleaved per photograph keeps data[i] beside its own clean patch
                writer.append("label", cut_patches(clean, patch, stride))
        if not same:
            for _, img in clean_photos:
                writer.append("label", cut_patches(crop_to_multiple(img, scale), patch, stride))
    return path


def built_as_now(train_file: Path, degradation: str) -> bool:
    """Whether the demo's training file exists and was built by this version with this degradation."""
    if not train_file.is_file():
        return False
    try:
        with h5py.File(train_file, "r") as f:
            return f.attrs.get("demo_version") == DEMO_DATA_VERSION and f.attrs.get("degradation") == degradation
    except OSError:
        return False


def build_demo_data(task: Task, root: str | Path, stride: int = DEMO_STRIDE) -> dict[str, Path]:
    """Write (once) the demo's training file and held-out validation folders under ``root``, degraded
    with the task's demo degradation."""
    degradation = task.degradation
    root = Path(root)
    paths = demo_paths(root)
    train_file = paths["trainset"] / "demo.h5"
    if built_as_now(train_file, degradation):
        return paths
    shutil.rmtree(root, ignore_errors=True)  # an older demo's data (other photographs or degradation)
    rng = np.random.default_rng(DEMO_SEED)
    write_heldout(root / "val", [(name, load_photo(name)) for name in HELDOUT_PHOTOS], degradation, rng)
    train = [(name, load_photo(name)) for name in TRAIN_PHOTOS]
    write_training_file(train_file, train, train, degradation, rng, task.patch, stride,
                        {"source": "scikit-image sample photographs", "seed": DEMO_SEED,
                         "split": "same photographs on both sides", "heldout_photos": ",".join(HELDOUT_PHOTOS),
                         "demo_version": DEMO_DATA_VERSION})
    return paths
