#!/usr/bin/env python
"""Merge HDF5 patch files into a training file, or concatenate them.
`python gdata/merge_h5.py --help` lists the flags."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.cli.flags import add_script_flags, positive_int, script_parser, seed_int  # noqa: E402
from common.cli.guard import run_guarded  # noqa: E402
from common.data import building  # noqa: E402
from common.data.images import some_names  # noqa: E402
from common.data.patch_file import DTYPES  # noqa: E402
from common.system.errors import InputError  # noqa: E402
from common.system.files import same_file  # noqa: E402
from common.system.text import note, printable  # noqa: E402

EXAMPLES = """\
examples:
  # degraded patches of one file as 'data', clean patches of another as 'label': trimmed to the same
  # count and shuffled by one permutation
  python gdata/merge_h5.py --data rainy.h5 --label clean.h5 --out data/rain/train.h5
  # several files on one side are concatenated first
  python gdata/merge_h5.py --data rainy_a.h5 rainy_b.h5 --label clean.h5 --out data/rain/train.h5 --seed 1
  # concatenate whole files ('data' with 'data', 'label' with 'label'), into a folder of their own:
  # training reads every .h5 of a folder (data/rain/ would then train on train.h5 too)
  python gdata/merge_h5.py --concat part1.h5 part2.h5 part3.h5 --out data/rain_all/train.h5
"""


def parser():
    p = script_parser(
        "gdata/merge_h5.py", examples=EXAMPLES,
        description="Build a training file from the patches of some files as 'data' (degraded) and of others "
                    "as 'label' (clean): each file gives its 'data' (resp. 'label') dataset, or its only "
                    "patch dataset; both sides are trimmed to the same count and shuffled with one seeded "
                    "permutation. Or concatenate whole files with --concat. Streamed in batches; the "
                    "output is in our layout (N x C x H x W).")
    p.add_argument("--data", nargs="+", metavar="FILE.h5", default=None, help="files of degraded patches")
    p.add_argument("--label", nargs="+", metavar="FILE.h5", default=None, help="files of clean patches")
    p.add_argument("--concat", nargs="+", metavar="FILE.h5", default=None,
                   help="concatenate these files' datasets, name by name, in the order given")
    p.add_argument("--out", metavar="FILE.h5", required=True, help="the file to write (replaced if it exists)")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the permutation (default: %(default)s)")
    p.add_argument("--no-shuffle", action="store_true", help="keep the sources' order (still trimmed)")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="stored type (default: uint8 if every source is uint8, else float32)")
    p.add_argument("--batch", type=positive_int, default=building.DEFAULT_BATCH,
                   help="patches read and written at a time (default: %(default)s)")
    add_script_flags(p, "the sources' layout: matlab (N x C x W x H), ours, or auto (each file's "
                                "'layout' attribute, else ours)")
    return p


def main(argv):
    args = parser().parse_args(argv)
    common = dict(dtype=args.dtype, layout=args.layout, batch=args.batch, progress=not args.quiet)
    if args.concat:
        if args.data or args.label:
            raise InputError("--concat does not go with --data/--label")
        counts = building.concat_h5(args.concat, args.out, **common)
    elif args.data and args.label:
        counts = building.merge_h5(args.data, args.label, args.out, seed=args.seed, shuffle=not args.no_shuffle,
                                  **common)
    else:
        raise InputError("give --data FILE.h5 ... and --label FILE.h5 ..., or --concat FILE.h5 ...")
    print(f"wrote {printable(args.out)}: " + ", ".join(f"{name} {n} patches" for name, n in counts.items()))
    beside = [f for f in sorted(Path(args.out).parent.glob("*.h5")) if not same_file(f, args.out)]
    if beside:  # training on the folder reads them all: the sources' patches, or another set, twice over
        note(f"{Path(args.out).parent}: holds {len(beside)} other .h5 file(s) beside {Path(args.out).name} "
             f"({some_names(beside)}); training on this folder reads every .h5 in it, those too: give --trainset "
             f"{args.out} itself, or move it to a folder of its own")


if __name__ == "__main__":
    run_guarded(main, sys.argv[1:], writes_files=True)
