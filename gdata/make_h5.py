#!/usr/bin/env python
"""Cut a folder of images into an HDF5 training file (degrading it on the fly if asked), or convert a
MATLAB-layout file to ours. `python gdata/make_h5.py --help` lists the flags."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.cli.flags import add_script_flags, positive_int, script_parser, seed_int  # noqa: E402
from common.cli.guard import run_guarded  # noqa: E402
from common.data import building  # noqa: E402
from common.data.degrade import DEGRADATIONS  # noqa: E402
from common.data.patch_file import DTYPES  # noqa: E402
from common.system.errors import InputError  # noqa: E402
from common.system.text import note, printable  # noqa: E402

EXAMPLES = """\
examples:
  # x4 SR from clean photographs: every image gives bicubic-x4 LR 32x32 patches ('data') and clean
  # 128x128 patches ('label'); training pairs each LR patch with a clean patch drawn at random
  python gdata/make_h5.py --input DIV2K_train_HR/ --out data/div2k_x4/train.h5 --patch 128 --stride 64 --degrade bicubic-x4
  # deraining from a folder of rainy photographs and a folder of clean ones
  python gdata/make_h5.py --degraded-input rainy/ --input clean/ --out data/rain/train.h5 --patch 128 --stride 64
  # one side per file (merge them with gdata/merge_h5.py)
  python gdata/make_h5.py --input rainy/ --as data --out rainy.h5 --patch 128 --stride 64
  python gdata/make_h5.py --input clean/ --as label --out clean.h5 --patch 128 --stride 64
  # a file written by the authors' MATLAB scripts (N x C x W x H) to ours (N x C x H x W)
  python gdata/make_h5.py --convert train_matlab.h5 --out data/rain/train.h5 --layout matlab
"""


def parser():
    p = script_parser(
        "gdata/make_h5.py", examples=EXAMPLES,
        description="Cut every image of a folder into square patches and write them, streamed in batches, "
                    "into an HDF5 training file: 'data' (degraded patches) and 'label' (clean patches), "
                    "N x C x H x W. --patch and --stride are the clean side's; degraded patches of x4 SR "
                    "are patch/4 on a stride/4 grid. Attributes record how the file was made.")
    p.add_argument("--input", metavar="DIR", help="folder of images: the clean side (or the only folder)")
    p.add_argument("--out", metavar="FILE.h5", required=True, help="the file to write (replaced if it exists)")
    p.add_argument("--patch", type=positive_int, default=128, help="clean patch side in pixels (default: %(default)s)")
    p.add_argument("--stride", type=positive_int, default=64, help="step between patches (default: %(default)s)")
    p.add_argument("--degrade", choices=tuple(DEGRADATIONS), default=None,
                   help="degrade images on the fly: bicubic-x4 (MATLAB-style antialiased bicubic), "
                        "rain-light, rain-heavy or haze")
    p.add_argument("--split", default=None, metavar="HOW",
                   help="which images give 'data' and which 'label', by file name: 'both' (the default): every "
                        "image on both sides, degraded in 'data' and clean in 'label'. Training stays unpaired "
                        "(each degraded patch meets a clean patch drawn at random) and the sides differ by the "
                        "degradation alone, which is what makes unpaired data learnable. 'half' or a fraction "
                        "such as 0.3: the first half (30%%) of the files sorted by name give 'data', the rest "
                        "'label', so that no scene is on both sides: for large collections of one kind of "
                        "scene (hundreds of images), never for a few images or mixed kinds (see docs/DATA.md)")
    p.add_argument("--degraded-input", metavar="DIR", default=None,
                   help="a second folder whose images give 'data' (already degraded, or degraded here with "
                        "--degrade); --input gives 'label'")
    p.add_argument("--as", dest="as_name", choices=("data", "label"), default=None,
                   help="cut --input into this one dataset (default without --degrade or --degraded-input: "
                        "label); merge it with the other side's file by gdata/merge_h5.py")
    p.add_argument("--scale", type=positive_int, default=None,
                   help="degraded images are SCALE times smaller than clean ones (e.g. 4 for a folder of LR "
                        "images): 'data' patches are patch/SCALE (default: the degradation's, else 1)")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="stored type: uint8 [0, 255] (default, 4x smaller) or float32 [0, 1] (the reference's); "
                        "--convert keeps the source's by default")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the random degradations (default: %(default)s)")
    p.add_argument("--batch", type=positive_int, default=building.DEFAULT_BATCH,
                   help="patches held in memory and written at a time (default: %(default)s)")
    c = p.add_argument_group("conversion")
    c.add_argument("--convert", metavar="IN.h5", default=None,
                   help="rewrite IN.h5 in our layout (N x C x H x W) to --out instead of cutting images")
    add_script_flags(p, "IN.h5's layout: matlab (N x C x W x H), ours, or auto (its 'layout' attribute)", c)
    return p


def main(argv):
    args = parser().parse_args(argv)
    progress = not args.quiet
    if args.convert:
        if args.input or args.degraded_input or args.degrade:
            raise InputError("--convert rewrites an .h5 file; it does not go with --input, --degraded-input "
                             "or --degrade")
        counts = building.convert_layout(args.convert, args.out, layout=args.layout, dtype=args.dtype,
                                        batch=args.batch, progress=progress)
    else:
        if not args.input:
            raise InputError("give --input DIR (a folder of images) or --convert IN.h5")
        jobs, attrs = building.plan_make(args.input, args.patch, args.stride, degradation=args.degrade,
                                        degraded_dir=args.degraded_input, split=args.split,
                                        as_name=args.as_name, scale=args.scale)
        attrs["command"] = " ".join(["python", "gdata/make_h5.py", *argv])
        counts = building.make_h5(args.out, jobs, dtype=args.dtype or "uint8", seed=args.seed, batch=args.batch,
                                 attrs=attrs, progress=progress)
    summary = ", ".join(f"{name} {n} patches" for name, n in counts.items())
    print(f"wrote {printable(args.out)}: {summary}")
    missing = [n for n in ("data", "label") if n not in counts]
    if missing:
        note(f"{args.out} has no '{missing[0]}' yet: merge it with a file of the other side "
             "(python gdata/merge_h5.py --data DEGRADED.h5 --label CLEAN.h5 --out TRAIN.h5) before training")


if __name__ == "__main__":
    run_guarded(main, sys.argv[1:], writes_files=True)
