#!/usr/bin/env python
"""Show what HDF5 training files hold and, with --check, refuse any that cannot train.
`python gdata/inspect_h5.py --help` lists the flags."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.cli.flags import add_script_flags, positive_int, script_parser  # noqa: E402
from common.cli.guard import run_guarded  # noqa: E402
from common.data import inspection  # noqa: E402
from common.data.patch_file import find_h5_files  # noqa: E402
from common.system.errors import InputError  # noqa: E402
from common.system.text import printable  # noqa: E402

EXAMPLES = """\
examples:
  python gdata/inspect_h5.py data/div2k_x4/train.h5
  python gdata/inspect_h5.py data/div2k_x4/ --check --scale 4
  python gdata/inspect_h5.py train_matlab.h5 --layout matlab --check
"""


def parser():
    p = script_parser(
        "gdata/inspect_h5.py", examples=EXAMPLES,
        description="For each file: its datasets with shape, dtype, patch size in our layout, value range "
                    "(a full scan, streamed) and chunking, its layout and attributes. --check exits with "
                    "status 2 and one line naming the file if one cannot train: no 'data' or 'label', "
                    "channels or patch sizes that do not match, patches that are not RGB, NaN/inf, float "
                    "values outside [0, 1], an empty dataset, or a declared size the file does not store "
                    "(such a dataset is not scanned). A file that points elsewhere (a dataset stored in "
                    "another file, a virtual dataset, an external link) is refused with or without --check.")
    p.add_argument("paths", nargs="+", metavar="FILE.h5|DIR", help="files, or folders (their *.h5 files)")
    p.add_argument("--check", action="store_true", help="exit with status 2 if a file cannot train")
    p.add_argument("--scale", type=positive_int, default=None,
                   help="with --check: clean patches must be SCALE times the degraded ones (default: the "
                        "file's 'scale' attribute, else any whole factor)")
    add_script_flags(p, "matlab (N x C x W x H), ours, or auto (the 'layout' attribute, else ours)")
    return p


def main(argv):
    args = parser().parse_args(argv)
    files = [f for path in args.paths for f in find_h5_files(path)]
    failures = []
    for path in files:
        try:
            report = inspection.scan_h5(path, args.layout, progress=not args.quiet)
        except InputError as exc:  # unreadable: report it with the others
            if args.debug:
                raise
            failures.append(exc)
            continue
        print(inspection.format_report(report, args.layout))
        if args.check:
            problems = inspection.h5_problems(report, args.scale)
            if problems:
                failures.append(InputError(f"{path}: {problems[0]}"))
            else:
                print(f"  check: ok ({report.datasets['data'].shape[0]} degraded, "
                      f"{report.datasets['label'].shape[0]} clean patches)")
    for exc in failures[:-1]:
        print(f"error: {printable(str(exc))}", file=sys.stderr)
    if failures:
        raise failures[-1]


if __name__ == "__main__":
    run_guarded(main, sys.argv[1:])
