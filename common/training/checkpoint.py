"""Checkpoints: ours (state dicts, loaded with ``weights_only=True``) and the authors' (pickled modules).

Our format is one dict: ``format``, ``version`` (the format's), ``code_version`` (the version of this
code that wrote it, ``common.__version__``; absent from files written before it was recorded), ``task``, ``arch`` (the networks' constructor
arguments, so that a checkpoint alone rebuilds them), ``generator``/``critic`` state dicts, both
optimisers, ``epoch``, ``step``, ``sigma``, ``loss``, ``best_psnr`` and ``best_score`` (the best
validation so far by each measure), ``config`` and RNG states.
Writes are atomic: a temporary file in the same folder, flushed and fsynced, then renamed over the
target, so a checkpoint on disk is never half-written.

The authors' released files are whole pickled ``_NetG``/``_NetD`` modules from a module named
``srresnet_unet2``, under ``{"epoch", "model", "discr"}``. Unpickling them normally would import and
run whatever the pickle names. Instead a restricted unpickler admits only the classes such a file
needs, turns every module into an inert record of its tensors, and our networks are rebuilt from
those tensors by name. Anything else in the pickle is refused.
"""
from __future__ import annotations

import inspect
import math
import os
import pickle
import types
import warnings
from collections import OrderedDict
from pathlib import Path

import torch

from .. import __version__
from ..networks import Critic, Generator
from ..system.errors import InputError
from ..system.files import atomic_write, available_memory, human_bytes, unreadable_reason
from ..system.text import note

FORMAT = "sot-checkpoint"
VERSION = 1

# Branches the authors' _NetG creates and never calls (docs/METHOD.md): present in their files, not in ours.
UNUSED_AUTHOR_BRANCHES = ("shallow_feat2.", "shallow_feat3.")


class _RecordingWriter:
    """A file that keeps the OSError its ``write`` raised: torch.save turns it into a RuntimeError
    ("unexpected pos ...") that no longer says that the disk is full."""

    def __init__(self, f):
        self._f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self._f.flush()


def named_tensors(value, name: str = ""):
    """(name, tensor) for every tensor in a (nested) checkpoint dict, named by its path in it
    (``generator.shallow_feat1.0.weight``, ``optim_g.state.0.square_avg``)."""
    if isinstance(value, torch.Tensor):
        yield name, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from named_tensors(item, f"{name}.{key}" if name else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from named_tensors(item, f"{name}[{i}]")


def state_bytes(value) -> int:
    """The bytes of the tensors in a (nested) checkpoint dict: about what it takes on disk."""
    return sum(t.numel() * t.element_size() for _, t in named_tensors(value))


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Atomically write a checkpoint dict of our format (``format``, ``version`` and ``code_version`` are added).

    A failed write (a full disk) raises the OSError that caused it, and the previous file is kept."""
    state = {"format": FORMAT, "version": VERSION, "code_version": __version__, **state}

    def write(f):
        writer = _RecordingWriter(f)
        try:
            torch.save(state, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise

    atomic_write(path, write)


# ----------------------------------------------------------------------------- the authors' files
class _PickledModule:
    """Inert stand-in for a pickled ``nn.Module``: keeps its attributes, runs nothing."""

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)


_AUTHOR_CLASSES = {"_NetG", "_NetD", "CAB", "CALayer", "SAM", "Encoder", "Decoder", "DownSample",
                   "UpSample", "SkipUpSample"}
_TORCH_MODULES = {"Conv2d", "PReLU", "ReLU", "Sigmoid", "LeakyReLU", "Linear", "Sequential",
                  "AdaptiveAvgPool2d", "Upsample"}
_ALLOWED_CALLABLES = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
}
if hasattr(torch._utils, "_rebuild_parameter_with_state"):
    _ALLOWED_CALLABLES[("torch._utils", "_rebuild_parameter_with_state")] = torch._utils._rebuild_parameter_with_state


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        module = {"__builtin__": "builtins"}.get(module, module)  # protocol-2 pickles use Python 2 names
        if module == "srresnet_unet2" and name in _AUTHOR_CLASSES:
            return _PickledModule
        if module.startswith("torch.nn.modules.") and name in _TORCH_MODULES:
            return _PickledModule
        if (module, name) in _ALLOWED_CALLABLES:
            return _ALLOWED_CALLABLES[(module, name)]
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: not part of an SOT checkpoint")


_restricted_pickle = types.SimpleNamespace(
    __name__="sot_restricted_pickle", Unpickler=_RestrictedUnpickler,
    load=lambda f, **kw: _RestrictedUnpickler(f, **kw).load(),
)


def _flatten_module(obj, prefix: str, out: dict) -> None:
    """Collect an inert module tree's parameters and persistent buffers under state-dict names."""
    d = getattr(obj, "__dict__", {})
    skip = d.get("_non_persistent_buffers_set") or set()
    for kind in ("_parameters", "_buffers"):
        for name, value in (d.get(kind) or {}).items():
            if isinstance(value, torch.Tensor) and name not in skip:
                out[prefix + name] = value.detach().clone() if isinstance(value, torch.nn.Parameter) else value
    for name, child in (d.get("_modules") or {}).items():
        if child is not None:
            _flatten_module(child, f"{prefix}{name}.", out)


def _load_authors(path: Path, map_location) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = torch.load(path, map_location=map_location, pickle_module=_restricted_pickle, weights_only=False)
    if not isinstance(obj, dict) or not isinstance(obj.get("model"), _PickledModule):
        raise InputError(f"{path}: not an SOT checkpoint (no 'model' network inside)")
    out = {"format": "authors", "epoch": obj.get("epoch"), "generator": {}, "critic": None}
    _flatten_module(obj["model"], "", out["generator"])
    if isinstance(obj.get("discr"), _PickledModule):
        out["critic"] = {}
        _flatten_module(obj["discr"], "", out["critic"])
    out["generator"] = {k: v for k, v in out["generator"].items() if not k.startswith(UNUSED_AUTHOR_BRANCHES)}
    out["arch"] = {"generator": infer_generator_arch(out["generator"], path),
                   "critic": infer_critic_arch(out["critic"]) if out["critic"] else None}
    return out


def infer_generator_arch(state: dict, path) -> dict:
    """The generator's constructor arguments, read off the shapes of its weights."""
    try:
        first = state["shallow_feat1.0.weight"]
        width, channels, kernel = first.shape[0], first.shape[1], first.shape[2]
        increment = state["stage1_encoder.down12.down.1.weight"].shape[0] - width
        reduction = width // state["shallow_feat1.1.CA.conv_du.0.weight"].shape[0]
    except KeyError as exc:
        raise InputError(f"{path}: the checkpoint's generator lacks {exc.args[0]}; not an SOT generator") from None
    except (IndexError, AttributeError, TypeError, ZeroDivisionError):
        raise InputError(f"{path}: the checkpoint's generator weights have shapes no SOT generator has; "
                         "the file is damaged or not ours") from None
    arch = dict(channels=int(channels), width=int(width), increment=int(increment),
                reduction=int(reduction), kernel_size=int(kernel))
    if min(arch.values()) < 1 or kernel % 2 == 0:
        raise InputError(f"{path}: the checkpoint's generator weights have shapes no SOT generator has "
                         f"({', '.join(f'{k} {v}' for k, v in arch.items())})")
    return arch


def _check_recorded_arch(recorded, inferred: dict, path, what: str, constructor) -> None:
    """A checkpoint's ``arch`` entry must name the constructor's arguments, as positive whole numbers
    that agree with the weights' shapes: a crafted one must not build a network of any size."""
    if not isinstance(recorded, dict):
        raise InputError(f"{path}: the checkpoint's {what} architecture is {type(recorded).__name__}, not a "
                         "table of sizes; the file is damaged or not ours")
    known = set(inspect.signature(constructor).parameters) - {"self"}
    for key, value in recorded.items():
        if key not in known:
            raise InputError(f"{path}: the checkpoint's {what} architecture has an unknown setting "
                             f"{key!r} (this code knows {', '.join(sorted(known))})")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{path}: the checkpoint's {what} architecture has {key} = {value!r}; "
                             "expected a whole number of at least 1")
    differ = [f"{k} {recorded[k]} vs {inferred[k]}" for k in recorded if k in inferred and recorded[k] != inferred[k]]
    if differ:
        raise InputError(f"{path}: the {what} in this checkpoint has another architecture: shape mismatch "
                         f"between its recorded arch and its weights ({'; '.join(differ)})")


def _is_state_dict(value) -> bool:
    return (isinstance(value, dict) and bool(value)
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()))


def infer_critic_arch(state: dict) -> dict:
    first = state["features.0.weight"]
    fc_in = state["fc1.weight"].shape[1]
    width = first.shape[0]
    side = int(round((fc_in / (8 * width)) ** 0.5))
    return dict(channels=int(first.shape[1]), hidden=int(state["fc1.weight"].shape[0]),
                input_size=32 * side, width=int(width))


# ----------------------------------------------------------------------------- the memory a network needs
def check_network_memory(networks: dict, bytes_per_parameter: int, device: torch.device, what: str,
                         held: str) -> None:
    """Refuse networks whose parameters alone cannot be held on ``device`` (a width of 200000 asked the
    allocator for terabytes and died with its traceback, or the system killed the process without a
    word). ``networks``: name -> a function that builds it, called on the meta device: counted, nothing
    allocated. ``what`` begins the line (the flags, or the checkpoint); ``held``: what the bytes are."""
    with torch.device("meta"):
        counts = {name: sum(p.numel() for p in build().parameters()) for name, build in networks.items()}
    needed = bytes_per_parameter * sum(counts.values())
    available = torch.cuda.mem_get_info(device)[1] if device.type == "cuda" else available_memory()
    if available is not None and needed > available:
        listed = ", ".join(f"{name} {count:,} parameters" for name, count in counts.items())
        raise InputError(f"{what}: the networks ({listed}) need about {human_bytes(needed)} for {held}; "
                         f"{human_bytes(available)} is available on {device}")


# ----------------------------------------------------------------------------- reading either format
def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """Read a checkpoint of either format into a dict with at least ``format``, ``arch``,
    ``generator`` and ``critic`` (state dicts; ``critic`` may be ``None``)."""
    path = Path(path)
    reason = unreadable_reason(path, "a checkpoint file")
    if reason:
        raise InputError(f"{path}: " + ("checkpoint not found" if reason == "no such file" else reason))
    try:
        with warnings.catch_warnings():  # torch's remarks on a file's pickle protocol would break the one line
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "srresnet_unet2" not in str(exc):
            raise InputError(f"{path}: {_refusal(str(exc), path)}") from None
        try:
            return check_tensors(_load_authors(path, map_location), path)
        except pickle.UnpicklingError as exc2:
            raise InputError(f"{path}: {exc2}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the checkpoint ({exc.strerror or exc})") from None
    except Exception as exc:  # whatever torch.load chokes on (zip, pickle or memo errors) means the same
        if not _pickle_or_zip(path):  # a text file: torch's error would be a stray KeyError on its first byte
            raise InputError(f"{path}: {NEITHER}") from None
        reason = (str(exc).splitlines() or [""])[0].split(". ")[0]  # torch's first sentence says it
        raise InputError(f"{path}: not a checkpoint, or a damaged one ({type(exc).__name__}: {reason})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise InputError(f"{path}: not an SOT checkpoint (no '{FORMAT}' format tag)")
    version = ckpt.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise InputError(f"{path}: checkpoint version {version!r} is not a whole number; the file is damaged")
    if version > VERSION:
        raise InputError(f"{path}: checkpoint version {version} is newer than this code ({VERSION})")
    if not _is_state_dict(ckpt.get("generator")):
        raise InputError(f"{path}: the checkpoint holds no generator weights ('generator' is "
                         f"{'missing' if 'generator' not in ckpt else type(ckpt['generator']).__name__})")
    if ckpt.get("critic") is not None and not _is_state_dict(ckpt["critic"]):
        raise InputError(f"{path}: the checkpoint's 'critic' is {type(ckpt['critic']).__name__}, not weights")
    if ckpt.get("generator_ema") is not None and not _is_state_dict(ckpt["generator_ema"]):
        raise InputError(f"{path}: the checkpoint's 'generator_ema' is {type(ckpt['generator_ema']).__name__}, "
                         "not weights")
    for key in ("arch", "config", "optim_g", "optim_d", "rng"):
        if ckpt.get(key) is not None and not isinstance(ckpt[key], dict):
            raise InputError(f"{path}: the checkpoint's '{key}' is {type(ckpt[key]).__name__}, not a table")
    check_fields(ckpt, path)
    return check_tensors(ckpt, path)


def _whole(low: int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# What training writes in a checkpoint besides tensors, and what each must be where present: these
# are read back on resume, in test.py's report and by --resume CKPT.
FIELDS = {"code_version": (lambda v: isinstance(v, str), "text"),
          "task": (lambda v: isinstance(v, str), "text"),
          "loss": (lambda v: isinstance(v, str), "text"),
          "sigma": (lambda v: _real(v) and v >= 0, "a finite number, 0 or more"),
          "step": (_whole(0), "a whole number, 0 or more"),
          "epoch": (_whole(1), "a whole number, 1 or more"),
          "batch_in_epoch": (_whole(0), "a whole number, 0 or more"),
          "skipped_steps": (_whole(0), "a whole number, 0 or more"),
          "best_psnr": (lambda v: v is None or _real(v), "a finite number or None"),
          "best_score": (lambda v: v is None or _real(v), "a finite number or None"),
          "best_kept": (lambda v: isinstance(v, dict) and all(
              isinstance(k, str) and (x is None or isinstance(x, (str, bool)) or _real(x)) for k, x in v.items()),
              "a table of validation measures")}
CONFIG_FIELDS = {"task": FIELDS["task"], "align_corners": (lambda v: isinstance(v, bool), "true or false")}


def check_fields(ckpt: dict, path) -> None:
    """Refuse a checkpoint whose own fields (its step, sigma, task, best PSNR; the recorded config's task
    and align_corners, which test.py follows) are not what training writes."""
    for table, rules, where in ((ckpt, FIELDS, "'{}'"), (ckpt.get("config") or {}, CONFIG_FIELDS, "config's '{}'")):
        for key, (ok, what) in rules.items():
            if key in table and not ok(table[key]):
                value = table[key]
                shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:60] + "..."
                raise InputError(f"{path}: the checkpoint's {where.format(key)} is {shown}, not {what}; the file is "
                                 "damaged or not ours")


# Where a checkpoint keeps weights and optimiser states: tensors there must be floating-point.
FLOAT_TABLES = ("generator", "critic", "generator_ema", "optim_g", "optim_d")


def _tensor_problem(t: torch.Tensor, floating: bool) -> str | None:
    """What keeps a tensor of a checkpoint from being used as a dense array of values, or None."""
    if t.layout != torch.strided:
        return f"a {str(t.layout).replace('torch.', '')} tensor, not a dense one"
    if t.is_quantized:
        return f"a quantised tensor ({str(t.dtype).replace('torch.', '')})"
    if t.is_meta:
        return "a meta tensor (a shape without values)"
    if t.untyped_storage().nbytes() < t.numel() * t.element_size():  # a training checkpoint holds each value
        return (f"of shape {tuple(t.shape)} over a storage of {t.untyped_storage().nbytes()} bytes (one value "
                "repeated, as expand() makes: a small file that asks for a large network)")
    if t.is_complex() or (floating and not t.is_floating_point()):
        return f"of dtype {str(t.dtype).replace('torch.', '')}, not floating-point"
    return None


def check_tensors(ckpt: dict, path) -> dict:
    """Refuse, naming it, a tensor the networks cannot take as it is: sparse or another layout, quantised,
    meta, complex, or weights and optimiser states that are not floating-point (int64 weights would be
    cast without a word). Nothing is computed: layouts and dtypes only."""
    for name, tensor in named_tensors(ckpt):
        problem = _tensor_problem(tensor, floating=name.split(".")[0] in FLOAT_TABLES)
        if problem:
            raise InputError(f"{path}: the checkpoint's tensor {name} is {problem}; the file is damaged or not a "
                             "checkpoint this code reads")
    return ckpt


NEITHER = "not a checkpoint (neither a PyTorch file nor a pickle)"


def _pickle_or_zip(path) -> bool:
    """Whether a file begins as a pickle (protocol 2 or later) or as torch's zip of one."""
    with open(path, "rb") as f:
        head = f.read(4)
    return head[:1] == b"\x80" or head == b"PK\x03\x04"


def _refusal(message: str, path) -> str:
    """What torch's safe loader refused, in a line: code named in the pickle, another pickle it cannot
    read (an unsupported instruction), or a file that is no pickle at all; nothing in it was run."""
    if "Weights only load failed" not in message:
        return f"not a checkpoint ({message.splitlines()[0]})"
    if "GLOBAL" in message or "Unsupported global" in message:
        return "not an SOT checkpoint (it pickles code that is not ours; nothing in it was run)"
    if not _pickle_or_zip(path):
        return NEITHER
    detail = message.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
    reason = detail[0].strip() if detail and "WeightsUnpickler error" in message else "an unsafe pickle"
    return f"not an SOT checkpoint (torch's safe loader refuses its pickle: {reason}; nothing in it was run)"


def load_weights(module: torch.nn.Module, state: dict, path, what: str) -> None:
    """``load_state_dict`` with an error that names the keys that differ (another architecture)."""
    ours = module.state_dict()
    missing = [k for k in ours if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(ours[k].shape)}" for k in ours
             if k in state and state[k].shape != ours[k].shape]
    unexpected = [k for k in state if k not in ours]
    if missing or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} key(s), e.g. {', '.join(missing[:3])}")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatch(es), e.g. {'; '.join(wrong[:3])}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:3])}")
        raise InputError(f"{path}: the {what} in this checkpoint has another architecture: " + "; ".join(parts))
    module.load_state_dict({k: state[k] for k in ours}, strict=True)
    # checked as the module holds them: float64 weights of 1e300 are finite until cast to float32
    broken = [k for k, v in module.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise InputError(f"{path}: the {what}'s weights hold NaN or infinite values as float32 ({len(broken)} tensor(s), "
                         f"e.g. {broken[0]}); the checkpoint is damaged")
    if unexpected:
        note(f"{path}: ignoring {len(unexpected)} {what} key(s) this code does not use, e.g. "
             f"{', '.join(unexpected[:3])}")


def build_generator(ckpt: dict, path, averaged: bool = True, device=None) -> Generator:
    """The checkpoint's generator. Its size comes from its weights' shapes; a recorded ``arch`` must
    agree with them, and its weights must fit in memory (where it is built, and on ``device``, where it
    goes next). A run trained with ``--ema`` also holds the generator's weight average, which is the
    model to use (``averaged``); ``averaged=False`` takes the weights training continues from."""
    if not _is_state_dict(ckpt.get("generator")):
        raise InputError(f"{path}: the checkpoint holds no generator weights")
    # The weights' names do not depend on the sizes: a tiny generator tells which are missing.
    names = Generator(width=4, increment=4, reduction=4).state_dict().keys()
    missing = [k for k in names if k not in ckpt["generator"]]
    if missing:
        unexpected = [k for k in ckpt["generator"] if k not in names]
        raise InputError(f"{path}: the generator in this checkpoint has another architecture: missing "
                         f"{len(missing)} key(s), e.g. {', '.join(missing[:3])}"
                         + (f"; {len(unexpected)} unexpected key(s), e.g. {', '.join(unexpected[:3])}"
                            if unexpected else ""))
    arch = infer_generator_arch(ckpt["generator"], path)
    recorded = (ckpt.get("arch") or {}).get("generator")
    if recorded is not None:
        _check_recorded_arch(recorded, arch, path, "generator", Generator.__init__)
        arch = {**arch, **recorded}
    if arch["channels"] != 3:
        raise InputError(f"{path}: the generator takes {arch['channels']}-channel images; this code restores "
                         "RGB (3 channels)")
    sizes = f"{path}: the checkpoint's generator is {arch['width']} wide (increment {arch['increment']})"
    for place in {torch.device("cpu"), torch.device(device or "cpu")}:
        check_network_memory({"generator": lambda: Generator(**arch)}, 4, place, sizes, "their float32 weights alone")
    try:
        gen = Generator(**arch)
    except (ValueError, RuntimeError) as exc:
        raise InputError(f"{path}: the checkpoint's generator cannot be built ({exc})") from None
    if averaged and ckpt.get("generator_ema") is not None:
        if not _is_state_dict(ckpt["generator_ema"]):
            raise InputError(f"{path}: the checkpoint's generator average holds no weights")
        load_weights(gen, ckpt["generator_ema"], path, "generator average")
    else:
        load_weights(gen, ckpt["generator"], path, "generator")
    return gen


def build_critic(ckpt: dict, path) -> Critic | None:
    if not ckpt.get("critic"):
        return None
    if not _is_state_dict(ckpt["critic"]):
        raise InputError(f"{path}: the checkpoint's critic holds no weights")
    try:
        arch = infer_critic_arch(ckpt["critic"])
    except (KeyError, IndexError, AttributeError, TypeError, ZeroDivisionError):
        raise InputError(f"{path}: the checkpoint's critic weights have shapes no SOT critic has") from None
    recorded = (ckpt.get("arch") or {}).get("critic")
    if recorded is not None:
        _check_recorded_arch(recorded, arch, path, "critic", Critic.__init__)
        arch = {**arch, **recorded}
    try:
        critic = Critic(**arch)
    except (ValueError, RuntimeError) as exc:
        raise InputError(f"{path}: the checkpoint's critic cannot be built ({exc})") from None
    load_weights(critic, ckpt["critic"], path, "critic")
    return critic


def trained_task(ckpt: dict):
    """The task a checkpoint records it was trained for (a name, as the file holds it), or None: the
    authors' files record none."""
    return ckpt.get("task") or (ckpt.get("config") or {}).get("task")


def trained_align_corners(ckpt: dict) -> bool:
    """How the checkpoint's SR inputs were upsampled in training (its config's ``align_corners``): how
    test.py upsamples them by default. False where it records nothing (docs/FIDELITY.md)."""
    return bool((ckpt.get("config") or {}).get("align_corners", False))


def load_generator(path: str | os.PathLike, map_location="cpu") -> Generator:
    """A :class:`Generator` in eval mode with the weights of a checkpoint of either format."""
    ckpt = read_checkpoint(path, map_location)
    return build_generator(ckpt, path, device=map_location).to(map_location).eval()
