"""Reading and writing images, and moving them between NumPy (H x W x 3, RGB) and torch (1 x 3 x H x W)."""
from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from ..system.errors import InputError
from ..system.files import (available_memory, check_readable_file, human_bytes, temporary_path, unreadable_reason,
                            write_failure)
from ..system.text import note

# OpenCV's own warnings ("PNG input buffer is incomplete") would come before our one-line error
try:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
except AttributeError:  # pragma: no cover - builds without the logging module
    pass

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
IMAGE_KINDS = ", ".join(IMAGE_EXTENSIONS)  # for messages: what a folder is searched for

# What this run has said already: a folder is listed again (find_pairs tries several layouts) and an
# image read again (training validates on the same images every few steps), and a note repeated at
# each of these would bury the others.
_said: set = set()


def note_once(message: str, key=None) -> None:
    """:func:`note` ``message`` unless this run said it (or another message of ``key``) already."""
    key = message if key is None else key
    if key not in _said:
        _said.add(key)
        note(message)


def check_folder(folder: str | os.PathLike) -> Path:
    """``folder`` as a Path, or an error that says what it is instead (missing, a file, a link loop)."""
    folder = Path(folder)
    if not folder.is_dir():
        reason = unreadable_reason(folder, "a folder") or "a file"
        raise InputError(f"{folder}: not a folder" + (f" ({reason})" if reason != "no such file" else ""))
    return folder


@dataclass(frozen=True)
class FolderContents:
    """What lies directly inside a folder, each list sorted by name."""
    images: list[Path]       # named as an image of a kind read here (hidden ones included, as ever)
    others: list[Path]       # files of any other kind: not read
    subfolders: list[Path]   # not looked into
    hidden: int              # other names starting with '.' (.DS_Store, editors' files): not read


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:  # cannot be looked at: counted with the files, whose message names it
        return False


def folder_contents(folder: str | os.PathLike) -> FolderContents:
    """The images, other files and subfolders directly inside ``folder`` (see :class:`FolderContents`)."""
    folder = check_folder(folder)
    images, others, subfolders, hidden = [], [], [], 0
    for p in sorted(folder.iterdir()):
        if p.name.startswith("._"):  # macOS's AppleDouble metadata beside a copied photo: never an image
            others.append(p)
        elif p.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(p)
        elif p.name.startswith("."):
            hidden += 1
        elif _is_dir(p):
            subfolders.append(p)
        else:
            others.append(p)
    return FolderContents(images, others, subfolders, hidden)


def some_names(paths: list[Path], limit: int = 5) -> str:
    """The first ``limit`` names, then how many more: a message stays one readable line."""
    names = ", ".join(p.name for p in paths[:limit])
    return names + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def note_skipped(folder: str | os.PathLike, contents: FolderContents | None = None) -> None:
    """Say, once per folder in a run, which of its files are not read because they are no image of a
    kind read here (an animated .gif, a .heic, notes): nothing is left out without a word."""
    key = ("skipped", os.path.abspath(folder))
    if key in _said:
        return
    others = (contents or folder_contents(folder)).others
    if others:
        what = "1 file skipped, not an image" if len(others) == 1 else f"{len(others)} files skipped, not images"
        note_once(f"{folder}: {what} of a kind read here ({IMAGE_KINDS}): {some_names(others)}", key)
    else:
        _said.add(key)


def describe_contents(contents: FolderContents) -> str:
    """What a folder without images holds instead, for its error: "it holds 1 file of another kind: a.gif"."""
    parts = []
    if contents.others:
        n = len(contents.others)
        parts.append(f"{n} file{'s' if n != 1 else ''} of {'another kind' if n == 1 else 'other kinds'}: "
                     f"{some_names(contents.others)}")
    if contents.subfolders:
        n = len(contents.subfolders)
        parts.append(f"{n} subfolder{'s' if n != 1 else ''}, not looked into: {some_names(contents.subfolders)}")
    if parts:
        return "it holds " + "; and ".join(parts)
    return "it holds only hidden files (names starting with '.')" if contents.hidden else "it is empty"


def list_images(folder: str | os.PathLike, notes: bool = True) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name; the files of other kinds are named in
    a note, once per folder in a run (``notes=False``: the caller says it, see :func:`note_skipped`)."""
    contents = folder_contents(folder)
    for p in contents.images:  # a broken link or a link loop named like an image is an error, not skipped
        reason = unreadable_reason(p, "an image")
        if reason:
            raise InputError(f"{p}: {reason}")
    if notes:
        note_skipped(folder, contents)
    return contents.images


@dataclass(frozen=True)
class Header:
    """What an image file's header says, read without decoding its pixels."""
    width: int            # as the decoder gives the pixels
    height: int
    orientation: int = 1  # EXIF orientation still to apply (1: none; 2-8: mirrored and/or turned)
    frames: int = 1       # pages of a TIFF, frames of an animated WebP or PNG: only the first is read

    @property
    def shown_size(self) -> tuple[int, int]:
        """(width, height) as image viewers show the image: 5-8 turn it by a quarter."""
        return (self.height, self.width) if self.orientation >= 5 else (self.width, self.height)


ORIENTATIONS = {2: "mirrored left to right", 3: "turned 180 degrees", 4: "mirrored top to bottom",
                5: "mirrored along its diagonal", 6: "turned 90 degrees anticlockwise",
                7: "mirrored along its other diagonal", 8: "turned 90 degrees clockwise"}


def read_header(path: str | os.PathLike) -> Header | None:
    """The size and EXIF orientation an image's header declares (Pillow reads only the header and,
    for EXIF, the metadata before the pixels), or None for a format Pillow does not know."""
    limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # the size is what we want to know; nothing is decoded here
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # Python's open, not Pillow's: it takes any file name (see read_image)
            with open(path, "rb") as f, Image.open(f) as im:
                width, height = im.size
                # OpenCV applies a TIFF's orientation tag itself (and Pillow reports its size turned)
                orientation = 1 if im.format == "TIFF" else _orientation(im)
                return Header(int(width), int(height), orientation, _frames(im))
    except Exception:  # not a format Pillow knows: OpenCV has the last word
        return None
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _frames(im) -> int:
    """How many frames an opened Pillow image holds (a TIFF's pages are counted from their headers),
    1 where that cannot be told."""
    try:
        return max(1, int(getattr(im, "n_frames", 1)))
    except Exception:  # a damaged page chain: the first page is still what is read
        return 1


def _orientation(im) -> int:
    """The EXIF orientation tag (274) of an opened Pillow image, 1 when absent or not in 1-8."""
    try:
        if isinstance(im.info.get("exif"), bytes):
            # Image.getexif() would decode a PNG's pixels to look for a late eXIf chunk; the
            # metadata read with the header is enough (phones write it first)
            exif = Image.Exif()
            exif.load(im.info["exif"])
            value = exif.get(274, 1)
        else:
            value = 1
    except Exception:  # damaged metadata: show the pixels as stored
        return 1
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else 1


def orient(img: np.ndarray, orientation: int) -> np.ndarray:
    """An H x W x C array as a viewer shows it under EXIF ``orientation`` (1-8)."""
    if orientation in (5, 6, 7, 8):
        # 5: transpose; 6: 90 degrees clockwise; 7: transverse; 8: 90 degrees anticlockwise
        img = {5: img.transpose(1, 0, 2), 6: img[::-1].transpose(1, 0, 2),
               7: img[::-1, ::-1].transpose(1, 0, 2), 8: img[:, ::-1].transpose(1, 0, 2)}[orientation]
    elif orientation == 2:
        img = img[:, ::-1]
    elif orientation == 3:
        img = img[::-1, ::-1]
    elif orientation == 4:
        img = img[::-1]
    return np.ascontiguousarray(img)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image as viewers show it (EXIF orientation applied): from the header
    alone where Pillow reads it, else by decoding the image. Refuses, as :func:`read_image` would, a
    file that is not there or whose header declares more than memory holds."""
    size = check_readable_file(path, "an image")
    header = read_header(path)
    _check_memory(Path(path), size, header)
    if header is not None:
        return header.shown_size
    h, w = read_image(path, notes=False).shape[:2]
    return w, h


# The first bytes of the formats whose last bytes are fixed, and those last bytes: a file that has
# the first but not the last was cut off (a copy or download that stopped).
_ENDINGS = ((b"\x89PNG\r\n\x1a\n", b"IEND\xaeB`\x82"), (b"\xff\xd8", b"\xff\xd9"))


def _why_undecodable(buffer: np.ndarray) -> str:
    """Why OpenCV read nothing, where the bytes tell: an empty file, or one cut off before its end."""
    if not buffer.size:
        return " (an empty file)"
    data = buffer.tobytes()
    for start, end in _ENDINGS:
        if data.startswith(start) and end not in data[-64:]:
            return f" (it ends early, after {human_bytes(len(data))}: cut off while it was copied or written?)"
    return ""


# A PGM or PPM header: its kind, width, height and largest value, between blanks and # comments.
_PNM_HEADER = re.compile(rb"P[2356](?:(?:\s|#[^\n]*\n)+(\d+)){3}\s")


def _pnm_maxval(buffer: np.ndarray) -> int | None:
    """The largest value a PGM or PPM declares (OpenCV reads its samples unscaled), else None."""
    m = _PNM_HEADER.match(buffer[:4096].tobytes())
    return int(m.group(1)) if m and int(m.group(1)) > 0 else None


def read_image(path: str | os.PathLike, notes: bool = True) -> np.ndarray:
    """Read an image as float32 RGB in [0, 1], H x W x 3, as image viewers show it.

    An EXIF orientation (phones store photographs sideways and say so) is applied, grayscale is
    replicated to three channels, an alpha channel is dropped, 16-bit images are scaled by 1/65535
    (a PGM or PPM by 1/its largest value), float values outside [0, 1] are clipped and of a file of
    several pages or frames the first is read, each with a note on stderr (``notes=False``:
    silently); anything unreadable is an :class:`InputError`. Nothing is read before the file's size
    and the pixels its header declares are known to fit in memory.
    """
    path = Path(path)
    size = check_readable_file(path, "an image")  # a FIFO would block, a link loop read as missing
    header = read_header(path)
    _check_memory(path, size, header)
    # Read as bytes and decode in memory: no path reaches OpenCV's file functions, which crash on
    # names that are not valid UTF-8.
    try:
        buffer = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise InputError(f"{path}: cannot read the image ({exc.strerror or exc})") from None
    try:
        raw = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED) if buffer.size else None
    except cv2.error as exc:
        reason = "larger than OpenCV decodes" if "MAX_IMAGE_PIXELS" in str(exc) else "OpenCV cannot decode it"
        raise InputError(f"{path}: not a readable image ({reason})") from None
    if raw is None:
        raise InputError(f"{path}: not a readable image" + _why_undecodable(buffer))
    # once per run: an image read again (validation images, both sides of make_h5) is the same image
    say = note_once if notes else (lambda message: None)
    if header is not None and header.frames > 1:
        kind = "pages" if path.suffix.lower() in (".tif", ".tiff") else "frames (an animation)"
        say(f"{path}: holds {header.frames} {kind}; only the first is read")
    maxval = _pnm_maxval(buffer) if raw.dtype in (np.uint8, np.uint16) else None
    if maxval is not None and maxval != np.iinfo(raw.dtype).max:
        say(f"{path}: largest value {maxval} (as its header declares), scaled to [0, 1] by 1/{maxval}")
        img = np.minimum(raw.astype(np.float32) / maxval, 1.0)
    elif raw.dtype == np.uint8:
        img = raw.astype(np.float32) / 255.0
    elif raw.dtype == np.uint16:
        say(f"{path}: 16-bit image, scaled to [0, 1] by 1/65535")
        img = raw.astype(np.float32) / 65535.0
    elif raw.dtype.kind == "f":
        img = _clipped_floats(path, raw, say)
    else:
        raise InputError(f"{path}: unsupported pixel type {raw.dtype}")
    if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
        say(f"{path}: grayscale image, converted to RGB")
        img = np.repeat(img.reshape(img.shape[0], img.shape[1], 1), 3, axis=2)
    elif img.ndim != 3 or img.shape[2] not in (3, 4):
        raise InputError(f"{path}: expected 1, 3 or 4 channels, got shape {raw.shape}")
    elif img.shape[2] == 4:
        say(f"{path}: RGBA image, alpha channel dropped")
        img = img[:, :, 2::-1]  # OpenCV reads BGR(A)
    else:
        img = img[:, :, ::-1]
    if header is not None and header.orientation != 1:
        say(f"{path}: EXIF orientation {header.orientation} applied (the stored pixels are "
            f"{ORIENTATIONS[header.orientation]} from how viewers show them)")
        return orient(img, header.orientation)
    return np.ascontiguousarray(img)


def _clipped_floats(path: Path, raw: np.ndarray, say) -> np.ndarray:
    """A float image's pixels in [0, 1]: values outside are clipped, with a note that says how many
    and the range seen (an HDR image, or one saved in 0-255); NaN or infinity is an error."""
    finite = np.isfinite(raw)
    if not finite.all():
        raise InputError(f"{path}: {raw.size - int(finite.sum())} of its {raw.size} float values are NaN or "
                         "infinite; not an image that can be restored")
    outside = int(np.count_nonzero((raw < 0) | (raw > 1)))
    if outside:
        say(f"{path}: {outside} of its {raw.size} float values lie outside [0, 1] (the range seen is "
            f"{float(raw.min()):.6g} to {float(raw.max()):.6g}) and were clipped to [0, 1]")
    return np.clip(raw, 0.0, 1.0).astype(np.float32, copy=False)


# Bytes per pixel while an image is read: the decoded pixels (up to 16-bit RGBA), the float32 copy
# and the RGB copy of it.
READ_BYTES_PER_PIXEL = 8 + 12 + 12


def _check_memory(path: Path, size: int, header: Header | None) -> None:
    """Refuse, before reading a byte, a file larger than memory (a sparse 1 TB file named a.png) or
    one whose header declares more pixels than memory holds."""
    available = available_memory()
    if available is None:
        return
    if size > available:
        raise InputError(f"{path}: the file is {human_bytes(size)}, more than the {human_bytes(available)} of "
                         "memory available to read it; is it an image?")
    if header is not None:
        needed = size + header.width * header.height * READ_BYTES_PER_PIXEL
        if needed > available:
            raise InputError(f"{path}: a {header.width}x{header.height} image needs about {human_bytes(needed)} "
                             f"of memory to read; {human_bytes(available)} is available")


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float image in [0, 1] to 8-bit, rounding to nearest (what a PNG of it holds)."""
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def write_image(path: str | os.PathLike, img: np.ndarray) -> None:
    """Write a float RGB image in [0, 1] (or uint8) as an 8-bit file; the folder is created.

    Encoded in memory and written under a temporary name, then renamed: no path reaches OpenCV (see
    :func:`read_image`), and an interrupted write leaves no half image."""
    path = Path(path)
    data = img if img.dtype == np.uint8 else to_uint8(img)
    if data.ndim == 3:
        data = data[:, :, ::-1]
    try:
        ok, encoded = cv2.imencode(path.suffix or ".png", np.ascontiguousarray(data))
    except cv2.error:
        ok = False
    if not ok:
        raise InputError(f"{path}: could not encode the image as {path.suffix or '.png'}")
    tmp = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(encoded.tobytes())
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise InputError(write_failure(path, exc, encoded.size, "image")) from None


def image_to_tensor(img: np.ndarray) -> torch.Tensor:
    """H x W x 3 float array to a 1 x 3 x H x W tensor."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).unsqueeze(0)


def tensor_to_image(t: torch.Tensor) -> np.ndarray:
    """1 x 3 x H x W (or 3 x H x W) tensor to an H x W x 3 float32 array, clipped to [0, 1]."""
    if t.dim() == 4:
        t = t[0]
    return t.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy()
