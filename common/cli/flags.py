"""What every script's command line shares: typed flag values, the one-line argparse parser (no
abbreviated flags), the flags every script that computes takes (``--device``, ``--gpus``,
``--precision``, defined here once: train.py's run configuration takes their rules from here too)
and the gdata scripts' own. The task scripts' command lines are ``common.cli.train`` and
``common.cli.test``; how a script ends is ``common.cli.guard``."""
from __future__ import annotations

import argparse
import textwrap

from ..data.patch_file import LAYOUT_CHOICES
from ..system.text import printable
from .guard import exit_bad_input


# Training runs in float32 (bf16 under autocast), whose largest number is 3.4e38: a weight or rate
# near it makes every loss it multiplies overflow, and each step would be skipped as non-finite.
# 1e30 is far beyond any sensible value and leaves a product with a loss of up to 1e8 finite.
TRAINING_LIMIT = 1e30
# float32's smallest normal number: below it a rate or weight is a subnormal (precision lost, and
# slow on CPUs) or, up to 7e-46, 0 itself (--lr 1e-320 would train nothing without a word).
FLOAT32_TINY = 2.0 ** -126


def _in_training_range(value: float, token: str, what: str, zero: bool = True) -> float:
    """``value`` where float32 training arithmetic holds it (``zero``: 0 is a value of its own, off)."""
    if value > TRAINING_LIMIT:
        raise argparse.ArgumentTypeError(f"{what} {token} is too large for float32 training arithmetic (every loss "
                                         f"it multiplies would overflow); give at most {TRAINING_LIMIT:g}")
    if 0 < value < FLOAT32_TINY:
        held = "0" if value <= 2.0 ** -150 else "a subnormal number"
        raise argparse.ArgumentTypeError(f"{what} {token} is too small for float32 training arithmetic (float32 holds "
                                         f"it as {held}); give {'0 or ' if zero else ''}at least {FLOAT32_TINY:.4g}")
    return value


def sigma_list(token: str) -> list[float]:
    """One ``--sigma`` token: ``100``, ``100,50`` or the reference's ``[100,50,30,10]``."""
    parts = token.strip().strip("[]()").replace(",", " ").split()
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number or list of numbers: {token!r}") from None
    if not values or any(not (v >= 0 and v < float("inf")) for v in values):
        raise argparse.ArgumentTypeError(f"sigma must be finite and non-negative: {token!r}")
    for v in values:
        _in_training_range(v, f"{v:g}", "sigma")
    return values


def positive_int(token: str) -> int:
    value = int(token)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(token: str) -> int:
    value = int(token)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def seed_int(token: str) -> int:
    """A seed: torch and NumPy take 0 to 2^32 - 1 alike (larger ones overflow the samplers' seeds)."""
    value = int(token)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must lie in [0, 2^32), got {value}")
    return value


def _float(token: str) -> float:
    try:
        return float(token)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {token!r}") from None


def finite_positive_float(token: str) -> float:
    value = _float(token)
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {token!r}")
    return _in_training_range(value, token, "the value", zero=False)


def finite_non_negative_float(token: str) -> float:
    value = _float(token)
    if not (0 <= value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, 0 or more, got {token!r}")
    return _in_training_range(value, token, "the value")


def decay(token: str) -> float:
    """A moving average's decay per step: 0 (off) or a number in (0, 1)."""
    value = _float(token)
    if not (0 <= value < 1):
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), e.g. 0.995; got {token!r}")
    return _in_training_range(value, token, "the decay")


def run_name(token: str) -> str:
    """``--name``: one folder inside ``--out``; a path that leaves it (``../x``, ``/x``) is refused."""
    if not token or token in (".", "..") or "/" in token or "\\" in token or "\0" in token:
        raise argparse.ArgumentTypeError(f"{printable(token)!r} must be a plain folder name inside --out "
                                         "(no '/', '..' or empty name)")
    return token


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line, ``error: <flag>: <problem>``, and exit status 2 like any
    other bad input (argparse's own would print the whole usage first). A flag is taken only as
    spelled in full: argparse would take ``--dem`` for ``--demo``, while train.py chooses the demo's
    defaults by the flag's own spelling."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)

    def error(self, message: str):
        exit_bad_input(f"error: {printable(message)} (see {self.prog} --help)")


DEVICES = ("auto", "cuda", "cpu")
PRECISIONS = ("auto", "bf16", "fp32")


# The flags of every script that computes: where, on which GPUs and in what arithmetic. train.py's
# RunConfig takes their defaults and choices from here (common.training.config.shared_option).
SHARED_FLAGS = {
    "device": (("--device",), dict(choices=DEVICES, default="auto",
                                   help="where to run; auto takes CUDA when available (default: %(default)s)")),
    "gpus": (("--gpus",), dict(default=None, metavar="IDS",
                               help="GPU ids to expose, as CUDA_VISIBLE_DEVICES (e.g. '0' or '0,1')")),
    "precision": (("--precision",), dict(choices=PRECISIONS, default="auto",
                                         help="network arithmetic; auto is bf16 autocast on CUDA and fp32 on the CPU "
                                              "(the transport cost and gradient-penalty norm are always fp32)")),
}


def common_flags(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--gpus``, ``--precision`` and ``--debug``."""
    for flags, keywords in SHARED_FLAGS.values():
        parser.add_argument(*flags, **keywords)
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors")


# ----------------------------------------------------------------------------- the scripts' shared flags
def script_parser(prog: str, description: str, examples: str):
    """An argparse parser for a gdata/ script, its examples shown verbatim after the flags."""
    return OneLineParser(prog=prog, description=textwrap.fill(description, 100), epilog=examples,
                         formatter_class=argparse.RawDescriptionHelpFormatter)


def add_script_flags(parser, layout_help: str, layout_group=None) -> None:
    """``--layout``, ``--quiet`` and ``--debug``, which every gdata/ script takes."""
    (layout_group or parser).add_argument("--layout", choices=LAYOUT_CHOICES, default="auto", help=layout_help)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
