"""The OT/SOT/supervised study's pieces, and its --quick run end to end."""
import csv
import json

import h5py
import numpy as np
import pytest
import torch

from common.data.loader import UnpairedSampler
from common.networks import Generator
from common.recipe import mean_shift_cost
from common.sot import make_optimizers, supervised_step, transport_cost
from helpers import ROOT, generator_checkpoint, run_script, write_h5


def test_dc_weight_charges_a_colour_shift():
    shift = torch.zeros(2, 3, 16, 16)
    shift[:, 0] += 0.1  # the red channel of every image shifted by 0.1
    plain = transport_cost(shift, "sot-l1")
    charged = transport_cost(shift, "sot-l1") + mean_shift_cost(shift, lambda v: v, 1.0)
    assert charged.item() == pytest.approx(plain.item() + np.sqrt((0.1 ** 2) / 3), rel=1e-5)
    # Why the option exists: at equal pixel energy, a spectral cost charges a colour shift (one
    # coefficient) sqrt(H W) times less than a dense residual; the pixel cost charges both alike.
    noise = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    noise *= shift.square().mean().sqrt() / noise.square().mean().sqrt()
    assert plain < 0.2 * transport_cost(noise, "sot-l1")
    assert transport_cost(shift, "ot").item() == pytest.approx(transport_cost(noise, "ot").item(), rel=1e-5)


def test_paired_sampler_keeps_each_patch_with_its_own_clean_twin():
    sampler = UnpairedSampler(10, 10, 5, seed=1, paired=True)
    pairs = list(sampler)
    assert len(pairs) == 10 and all(i == j for i, j in pairs)
    assert sorted(i for i, _ in pairs) == list(range(10))


def test_supervised_step_lowers_l1():
    torch.manual_seed(0)
    g = Generator(width=16, increment=8)
    opt_g, _ = make_optimizers(g, None, 1e-3)
    x = torch.rand(2, 3, 32, 32)
    clean = (x + 0.1).clamp(0, 1)
    first, _ = supervised_step(g, opt_g, x, clean)
    for _ in range(5):
        last, _ = supervised_step(g, opt_g, x, clean)
    assert not last["skipped"] and last["l1"] < first["l1"]


@pytest.mark.slow
def test_quick_study_runs_end_to_end(tmp_path, monkeypatch, capsys):
    out = tmp_path / "study"
    result = run_script("experiments/compare_costs.py", "--task", "deraining", "--quick", "--out", str(out),
                        "--device", "cpu", "--seeds", "0", "1", "--sides", "same", "disjoint")
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("results.md", "results.csv", "results.json", "crops.png", "curves.png", "data/split.json"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("degraded input (rainy input)", ""), ("OT", "0"), ("OT", "1"), ("SOT-l1", "0"), ("SOT-l1", "1"),
        ("SOT-l0.5", "0"), ("SOT-l0.5", "1"), ("supervised", "0"), ("supervised", "1"),
        ("SOT-l1 disjoint", "0"), ("SOT-l1 disjoint", "1")]
    assert all(float(r["psnr"]) > 0 for r in rows)
    table = (out / "results.md").read_text()
    assert "| SOT-l1 | 10 |" in table and " ± " in table and "best − OT" in table
    split = json.loads((out / "data" / "split.json").read_text())
    assert not set(split["train"]) & (set(split["val"]) | set(split["test"]))
    with h5py.File(out / "data" / "same" / "train.h5") as f:  # both sides from the same photographs
        assert f.attrs["data_photos"] == f.attrs["label_photos"] == ",".join(split["train"])
    with h5py.File(out / "data" / "disjoint" / "train.h5") as f:
        assert not set(f.attrs["data_photos"].split(",")) & set(f.attrs["label_photos"].split(","))
    # A rerun of the same study reuses every finished run instead of training it again (in this
    # process: the script's own start from the shell was checked above).
    study = experiment("compare_costs", monkeypatch)
    first = json.loads((out / "results.json").read_text())
    capsys.readouterr()
    study.main(["--task", "deraining", "--quick", "--out", str(out), "--device", "cpu", "--seeds", "0", "1",
                "--sides", "same", "disjoint"])
    assert capsys.readouterr().out.count("finished earlier, reused") == 10
    second = json.loads((out / "results.json").read_text())
    assert [r["best_val"] for r in second["runs"]] == [r["best_val"] for r in first["runs"]]
    # One with more steps continues a run from its last checkpoint rather than starting it again;
    # --bound-seeds trains the supervised bound for fewer seeds than the methods compared.
    study.main(["--task", "deraining", "--quick", "--out", str(out), "--device", "cpu", "--seeds", "0", "1",
                "--bound-seeds", "1", "--methods", "ot", "supervised", "--steps", "6"])
    assert capsys.readouterr().out.count("resuming from") == 3
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["method"], r["seed"]) for r in rows[1:]] == [("OT", "0"), ("OT", "1"), ("supervised", "1")]
    curve = json.loads((out / "results.json").read_text())["runs"][0]["curve"]
    assert [step for step, _ in curve] == [1, 2, 3, 4, 5, 6]


def test_copy_photos_without_opencv_doc_refuses_and_says_what_is_missing(tmp_path, monkeypatch, capsys):
    """--copy-photos copied 0 photographs without a word where opencv-doc is not installed."""
    study = experiment("compare_costs", monkeypatch)
    with pytest.raises(SystemExit) as refused:
        study.main(["--copy-photos", str(tmp_path / "copy"), "--opencv-doc", str(tmp_path / "no-opencv-doc")])
    assert str(refused.value) == (f"{tmp_path / 'no-opencv-doc'}: none of the 25 opencv-doc photographs the study "
                                  "uses is there (Debian's opencv-doc package puts them there; --opencv-doc DIR "
                                  "names another folder); nothing copied")
    assert not (tmp_path / "copy").exists()
    (tmp_path / "some").mkdir()
    for name in study.OPENCV_PHOTOS[:-1]:
        (tmp_path / "some" / name).write_bytes(b"")
    study.main(["--copy-photos", str(tmp_path / "copy"), "--opencv-doc", str(tmp_path / "some")])
    assert capsys.readouterr().out == (f"copied 24 of 25 photographs to {tmp_path / 'copy'} "
                                       f"(not in {tmp_path / 'some'}: HappyFish.jpg)\n")
    assert len(list((tmp_path / "copy").iterdir())) == 24


def experiment(name: str, monkeypatch):
    """An experiments/ script as a module; sys.path is put back afterwards (the script adds the
    repository root to it, as it must when run from the shell)."""
    import importlib.util
    import sys

    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location(f"experiments_{name}", ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_critic_probe_measures_rank_w_cosine_and_colour(tmp_path, monkeypatch):
    critic_probe = experiment("critic_probe", monkeypatch)

    class Linear(torch.nn.Module):  # D(x) = <w, x>: its input gradient is w everywhere
        def __init__(self, w):
            super().__init__()
            self.w = w

        def forward(self, x):
            return (x * self.w).sum(dim=(1, 2, 3))

    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[0] += 0.1 * torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(1))
    y[1, 2] += 0.05  # the second pair differs by a blue shift
    w = y[0] - x[0]
    r = critic_probe.probe(Linear(w), x, y)
    residual = (y[1] - x[1]).flatten()
    second = float(w.flatten() @ residual / (w.norm() * residual.norm()))
    assert r["cosine"] == pytest.approx((1.0 + second) / 2, abs=1e-5)
    assert r["W"] == pytest.approx(float(((y - x) * w).sum(dim=(1, 2, 3)).mean()), abs=1e-5)
    assert r["colour"] == pytest.approx(w.sum(dim=(1, 2)).tolist(), abs=1e-5)
    assert r["rank"] == pytest.approx(1.0 if float((w * (y[1] - x[1])).sum()) > 0 else 0.5)

    rng = np.random.default_rng(0)
    clean = (rng.random((6, 3, 128, 128)) * 255).astype(np.uint8)
    write_h5(tmp_path / "t.h5", clean, clean)
    reports = critic_probe.main(["--task", "deraining", "--trainset", str(tmp_path / "t.h5"), "--critic-width", "8",
                                 "--critic-init", "kaiming", "--steps", "2", "--every", "1", "--pairs", "3"])
    assert [r["step"] for r in reports] == [1, 2] and all(np.isfinite(r["W"]) for r in reports)


def test_error_anatomy_splits_the_added_error_by_band_region_and_colour(tmp_path, monkeypatch, capsys):
    anatomy = experiment("error_anatomy", monkeypatch)
    rng = np.random.default_rng(0)
    gt = np.repeat(np.linspace(40, 200, 64)[None, :, None], 64, axis=0).repeat(3, axis=2)  # a smooth ramp
    shift = np.array([6.0, 0.0, -6.0])  # a colour shift: all of it at frequency 0
    checker = 5.0 * (-1.0) ** np.add.outer(np.arange(64), np.arange(64))  # all of it at 1/2 cycle per pixel
    parts = anatomy.anatomy(gt + checker[..., None], gt + shift, gt)
    shift_mse, checker_mse = float((shift ** 2).mean()) / 255 ** 2, 25.0 / 255 ** 2
    assert parts["input_mse"] == pytest.approx(shift_mse)
    assert parts["high"] == pytest.approx(checker_mse) and parts["low"] == pytest.approx(-shift_mse)
    assert abs(parts["mid"]) < 1e-12
    assert parts["colour"] == pytest.approx(-shift_mse)  # the input's error was a colour shift, the output's is not
    assert parts["low"] + parts["mid"] + parts["high"] == pytest.approx(checker_mse - shift_mse)  # Parseval
    assert parts["flat"] + parts["between"] + parts["edges"] == pytest.approx(checker_mse - shift_mse)
    # noise added to the flat half of a half-flat, half-textured image: the added error is the flat areas'
    # (all but the column beside the texture, whose gradient sees it)
    gt2 = np.full((64, 64, 3), 100.0)
    gt2[:, 32:] = 128 + 40 * rng.standard_normal((64, 32, 3))
    noisy = gt2.copy()
    noisy[:, :32] += 4 * rng.standard_normal((64, 32, 3))
    parts = anatomy.anatomy(noisy, gt2, gt2)
    added = parts["flat"] + parts["between"] + parts["edges"]
    assert added == pytest.approx(parts["low"] + parts["mid"] + parts["high"]) and added > 0
    assert parts["flat"] > 0.9 * added and parts["edges"] < 0.1 * added

    # the script end to end: G the identity restores nothing, so every change is zero and the gain 0 dB
    from common.data.images import write_image
    from common.recipe import start_as_identity

    generator_checkpoint(tmp_path / "g.pt", start_as_identity(Generator(width=8, increment=8)), task="dehazing")
    for side, offset in (("in", 30), ("gt", 0)):
        (tmp_path / side).mkdir()
        for name in ("a", "b"):
            write_image(tmp_path / side / f"{name}.png", np.clip(gt2 + offset, 0, 255).astype(np.uint8))
    result = anatomy.main(["--task", "dehazing", "--input", str(tmp_path / "in"), "--gt", str(tmp_path / "gt"),
                           "--checkpoint", str(tmp_path / "g.pt"), "--json", str(tmp_path / "a.json")])
    rows = result[str(tmp_path / "g.pt")]
    assert [r["name"] for r in rows] == ["a", "b"] and all(abs(r["gain_db"]) < 1e-6 for r in rows)
    assert all(abs(r[k]) < 1e-9 for r in rows for k in ("low", "mid", "high", "flat", "colour"))
    assert "better than the input on 0 of 2" in capsys.readouterr().out
    assert json.loads((tmp_path / "a.json").read_text()) == json.loads(json.dumps(result))


def test_the_no_reference_study_measures_regret_and_rank_as_defined(monkeypatch):
    """A sweep whose numbers are known: two sigmas of one seed, three checkpoints each. The score that
    ranks as PSNR does has regret 0 and rank correlation 1; the one that ranks the other way picks the
    worst checkpoint of each run (regret = best - worst PSNR) and has rank correlation -1."""
    study = experiment("no_reference_study", monkeypatch)
    psnr = {(10, 100): 20.0, (10, 200): 22.0, (10, 300): 21.0, (1, 100): 23.0, (1, 200): 19.0, (1, 300): 18.0}
    points = []
    for (sigma, step), value in psnr.items():
        sets = {}
        for name, shift in (("val", 0.0), ("wider", 0.5)):
            scores = {c: s for c in study.CANDIDATES[:4]
                      for s in [(-value if c == "swd-heldout" else value) / 100]}  # heldout ranks backwards
            image = {"psnr": value + shift, "input_psnr": 15.0, **scores, **{"input_" + c: 0.5 for c in scores}}
            sets[name] = {"psnr": value + shift, "input_psnr": 15.0, "transport": 1.0 / sigma, "images": [image],
                          **{c: -s for c, s in scores.items()}, **{"input_" + c: 0.5 for c in scores}}
        points.append({"seed": "seed-0", "sigma": sigma, "step": step, **sets})
    table = study.analyse(points)
    assert table["psnr | val"]["within_val"] == (0.0, 0.0)
    good, bad = table["swd-train | val"], table["swd-heldout | val"]
    assert good["rho"] == pytest.approx(1.0) and good["within_wider"] == (0.0, 0.0)
    assert good["across_wider"]["seed-0"] == (0.0, 1, 100)  # the best checkpoint of the sweep: sigma 1, step 100
    assert bad["rho"] == pytest.approx(-1.0)
    assert bad["within_val"] == (pytest.approx((2.0 + 5.0) / 2), 5.0)  # 22 - 20 at sigma 10, 23 - 18 at sigma 1
    assert bad["across_val"]["seed-0"] == (5.0, 1, 300)
    # behind validation PSNR's own choice, on the wider photographs: the yardstick
    assert good["behind_within"] == (0.0, 0.0) and good["behind_across"] == {"seed-0": 0.0}
    assert bad["behind_within"] == (pytest.approx(3.5), 5.0) and bad["behind_across"] == {"seed-0": 5.0}
    assert good["agreement"] == (1.0, 6)  # every image's score fell where its PSNR rose
