"""Crashes, signals, non-finite steps and bad input: nothing is lost, every failure says what and where."""
import json
import os
import signal
import subprocess
import sys
import time

import cv2
import h5py
import numpy as np
import pytest
import torch

from common.cli.test import test_main as run_test_script
from common.cli.train import train_main
from common.data.images import read_image
from common.networks import Critic, Generator
from common.sot import make_optimizers, train_step
from common.training.checkpoint import load_generator, read_checkpoint, save_checkpoint
from helpers import ROOT, generator_checkpoint, run_script, small_nets, sr_trainset, write_h5

SMALL = small_nets(16)


@pytest.fixture(autouse=True)
def restore_global_torch_flags():
    yield
    torch.use_deterministic_algorithms(False)


def sr_data(folder, n=16):
    """A training folder of one small SR file (the runs here use several batches of it)."""
    return sr_trainset(folder / "train.h5", n=n).parent


def train_args(data, out, name, steps, *extra):
    return ["sr/train.py", "--trainset", str(data), "--out", str(out), "--name", name, "--sigma", "10",
            "--batchSize", "2", "--max-steps", str(steps), "--seed", "7", "--deterministic", "--save-every", "1",
            "--log-every", "1", "--device", "cpu", *SMALL, *extra]


def final_weights(out, name):
    ckpt = torch.load(out / "sr" / name / "sigma-10" / "last.pt", weights_only=True)
    return ckpt["generator"], ckpt["critic"], ckpt["step"]


def state_of(folder):
    path = folder / "state.json"
    return json.loads(path.read_text()) if path.is_file() else None


def state(out, name):
    return state_of(out / "sr" / name / "sigma-10")


def wait_for_step(out, name, step, proc, timeout=120):
    started = time.time()
    while time.time() - started < timeout:
        s = state(out, name)
        if s and s["step"] >= step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"training ended early: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("no step checkpoint in time")


@pytest.mark.slow
def test_sigkill_then_resume_continues_and_matches_an_uninterrupted_run(tmp_path):
    """Killed at any step, a resume continues to the end the uninterrupted run reaches, bit for bit:
    with 2 batches an epoch and the learning rate dropped every epoch (--step 1), the resumed steps
    run at a dropped rate, which the resume must restore. The metrics log may end in a line cut short
    by the kill (one is put there): the resume drops it, and every step is logged once."""
    data, out = sr_data(tmp_path / "data", n=4), tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, *train_args(data, out, "killed", 1000, "--step", "1")], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_step(out, "killed", 3, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    end = state(out, "killed")["step"] + 2  # wherever the kill landed, two more steps after it
    log = out / "sr" / "killed" / "sigma-10" / "metrics.jsonl"
    with log.open("a") as f:
        f.write('{"kind": "train", "step": 2, "epoch": 1, "lr": 0.0')  # the line a kill cuts short
    resumed = run_script("sr/train.py", "--resume", "auto", "--name", "killed", "--out", str(out),
                         "--max-steps", str(end))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout
    full = run_script(*train_args(data, out, "full", end, "--step", "1"))
    assert full.returncode == 0, full.stderr[-2000:]

    g_full, d_full, step_full = final_weights(out, "full")
    g_res, d_res, step_res = final_weights(out, "killed")
    assert step_full == step_res == end
    assert all(torch.equal(g_full[k], g_res[k]) for k in g_full)
    assert all(torch.equal(d_full[k], d_res[k]) for k in d_full)
    records = [json.loads(line) for line in log.read_text().splitlines()]  # every line whole again
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, end + 1))  # appended, continued, nothing repeated
    assert train[0]["lr"] == 1e-4 and train[-1]["lr"] == pytest.approx(1e-4 * 0.1 ** (train[-1]["epoch"] - 1))
    assert train[-1]["epoch"] >= 3  # the steps after the kill ran at a dropped rate
    assert state(out, "killed")["finished"] is True
    assert len(list((out / "sr" / "killed" / "sigma-10").glob("step-*.pt"))) <= 2


def signals_during_step(monkeypatch, step: int, *signums: int) -> None:
    """Deliver ``signums`` to this process in the middle of training iteration ``step`` (counted over
    every sigma of the run), each one handled before the next is sent, as a person pressing Ctrl-C
    twice would."""
    import common.training.loop as loop

    real, calls = loop.train_step, [0]

    def step_with_signals(*args, **kwargs):
        calls[0] += 1
        if calls[0] == step:
            for signum in signums:
                os.kill(os.getpid(), signum)  # its handler runs before os.kill returns to this frame
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", step_with_signals)


def run_in_process(data, out, name, steps, *extra):
    return ["--trainset", str(data), "--out", str(out), "--name", name, "--sigma", "10", "--batchSize", "2",
            "--max-steps", str(steps), "--seed", "7", "--save-every", "0", "--device", "cpu", *SMALL, *extra]


@pytest.mark.slow
def test_ctrl_c_finishes_the_step_saves_and_exits_130(tmp_path, monkeypatch, capsys):
    data, out = sr_data(tmp_path / "data"), tmp_path / "runs"
    signals_during_step(monkeypatch, 2, signal.SIGINT)
    with pytest.raises(SystemExit) as exit_info:
        try:
            train_main("sr", run_in_process(data, out, "c", 5))
        except KeyboardInterrupt:  # without our handler Python's own stops the step (and would stop pytest)
            pytest.fail("SIGINT was not handled: it broke off the step instead of asking the loop to stop")
    captured = capsys.readouterr()
    err = captured.err
    assert exit_info.value.code == 130
    assert "SIGINT received: finishing this step and saving (Ctrl-C again to stop at once)" in captured.out
    assert "stopped by SIGINT at step 2 (sigma 10); saved" in err and "--resume auto --name c" in err
    saved = state(out, "c")
    assert saved["step"] == 2 and not saved["finished"]
    assert read_checkpoint(out / "sr" / "c" / "sigma-10" / saved["checkpoint"])["step"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # pytest's own handler is back


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_and_leaves_the_last_checkpoint_intact(tmp_path, monkeypatch, capsys):
    data, out = sr_data(tmp_path / "data"), tmp_path / "runs"
    signals_during_step(monkeypatch, 3, signal.SIGINT, signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train_main("sr", run_in_process(data, out, "cc", 5, "--save-every", "1"))
    captured = capsys.readouterr()
    assert "Ctrl-C again to stop at once" in captured.out
    assert "stopped by" not in captured.out + captured.err  # not the first one's save
    assert state(out, "cc")["step"] == 2  # step 3 was abandoned, not finished and saved
    monkeypatch.undo()
    train_main("sr", ["--resume", "auto", "--name", "cc", "--out", str(out)])  # the lock is free, the run intact
    assert state(out, "cc")["step"] == 5 and state(out, "cc")["finished"]


@pytest.mark.slow
def test_a_sweep_trains_one_model_per_sigma_and_a_resume_skips_the_finished_ones(tmp_path, monkeypatch, capsys):
    data, out = sr_data(tmp_path / "data"), tmp_path / "runs"
    signals_during_step(monkeypatch, 3, signal.SIGTERM)  # sigma 1's two steps, then sigma 10's first
    with pytest.raises(SystemExit) as exit_info:
        train_main("sr", [*run_in_process(data, out, "sweep", 2), "--sigma", "1", "10"])
    assert exit_info.value.code == 128 + signal.SIGTERM
    run = out / "sr" / "sweep"
    first = (run / "sigma-1" / "last.pt").read_bytes()
    assert read_checkpoint(run / "sigma-1" / "last.pt")["step"] == 2 and state_of(run / "sigma-1")["finished"]
    assert state_of(run / "sigma-10")["step"] == 1 and not state_of(run / "sigma-10")["finished"]
    monkeypatch.undo()
    capsys.readouterr()
    train_main("sr", ["--resume", "auto", "--name", "sweep", "--out", str(out)])
    printed = capsys.readouterr().out
    assert "sigma 1: finished earlier, skipped" in printed and "sigma 10: resuming from" in printed
    assert (run / "sigma-1" / "last.pt").read_bytes() == first  # not trained again
    for sigma in (1, 10):
        ckpt = read_checkpoint(run / f"sigma-{sigma}" / "last.pt")
        assert ckpt["sigma"] == sigma and ckpt["step"] == 2 and state_of(run / f"sigma-{sigma}")["finished"]
    g1, g10 = (read_checkpoint(run / f"sigma-{s}" / "last.pt")["generator"] for s in (1, 10))
    assert any(not torch.equal(g1[k], g10[k]) for k in g1)  # two models, not one saved twice


@pytest.mark.slow
def test_deterministic_runs_are_bit_identical(tmp_path):
    data, out = sr_data(tmp_path / "data"), tmp_path / "runs"
    for name in ("a", "b"):
        result = run_script(*train_args(data, out, name, 3))
        assert result.returncode == 0, result.stderr[-2000:]
    (ga, da, _), (gb, db, _) = final_weights(out, "a"), final_weights(out, "b")
    assert all(torch.equal(ga[k], gb[k]) for k in ga) and all(torch.equal(da[k], db[k]) for k in da)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_finishes_the_step_saves_and_says_how_to_resume(tmp_path, sig):
    """SIGHUP (an ssh connection dropped) ended training where it was, the step's work unsaved."""
    data, out = sr_data(tmp_path / "data"), tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, *train_args(data, out, "term", 1000, "--save-every", "0")], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "sr" / "term" / "sigma-10" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and '"train"' in metrics.read_text()):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert f"stopped by {signal.Signals(sig).name}" in err and "--resume auto --name term" in err
    saved = state(out, "term")
    assert saved["step"] >= 1 and not saved["finished"]
    assert read_checkpoint(out / "sr" / "term" / "sigma-10" / saved["checkpoint"])["step"] == saved["step"]


def _nets64(seed=0):
    torch.manual_seed(seed)
    g = Generator(width=8, increment=8).double()
    d = Critic(hidden=16, input_size=32, width=8).double()
    return g, d


def _states(*modules_and_optimisers) -> list:
    """Every tensor of modules and optimisers (weights, running averages, step counters), in order."""
    out = []
    for m in modules_and_optimisers:
        if isinstance(m, torch.nn.Module):
            out += [v.clone() for v in m.state_dict().values()]
        else:
            out += [v.clone() for st in m.state_dict()["state"].values() for v in st.values()]
    return out


def _reference_step(g, d, opt_g, opt_d, x, clean, sigma, cost, eps):
    """Yesterday's iteration: each update applied after a host-side check that it is finite, with
    plain torch.optim.RMSprop; the yardstick for the guarded step."""
    from common.sot import critic_loss, generator_loss, gradient_penalty

    n = clean.shape[0]
    fake = g(x)
    opt_d.zero_grad(set_to_none=False)
    scores = d(torch.cat([clean, fake.detach()]))
    loss_d = critic_loss(scores[:n], scores[n:])
    loss_d.backward()
    opt_d.step()
    opt_d.zero_grad(set_to_none=False)
    gradient_penalty(d, clean, fake.detach(), eps).backward()
    opt_d.step()
    d.requires_grad_(False)
    opt_g.zero_grad(set_to_none=True)
    loss_g, _ = generator_loss(d(fake), fake - x, sigma, cost)
    loss_g.backward()
    d.requires_grad_(True)
    opt_g.step()


@pytest.mark.parametrize("cost", ["sot-l0.5", "ot"])
def test_a_finite_guarded_step_equals_the_plain_one_bit_for_bit(cost):
    """float64: the device-side guard changes nothing when every update is finite."""
    g, d = _nets64()
    ref_g, ref_d = _nets64()
    opt_g, opt_d = make_optimizers(g, d, 1e-3)
    ref_opt_g = torch.optim.RMSprop([p for p in ref_g.parameters() if p.requires_grad], lr=5e-4)
    ref_opt_d = torch.optim.RMSprop(ref_d.parameters(), lr=1e-3)
    rng = torch.Generator().manual_seed(1)
    for _ in range(2):
        x, clean = torch.rand(2, 3, 32, 32, generator=rng, dtype=torch.float64), torch.rand(2, 3, 32, 32, generator=rng, dtype=torch.float64)
        state = torch.get_rng_state()
        stats, _ = train_step(g, d, opt_g, opt_d, x, clean, 3.0, cost)
        torch.set_rng_state(state)
        eps = torch.rand(2, 1, 1, 1, dtype=torch.float64)
        _reference_step(ref_g, ref_d, ref_opt_g, ref_opt_d, x, clean, 3.0, cost, eps)
        assert not bool(stats["skipped"])
    for a, b in zip(_states(g, d, opt_g, opt_d), _states(ref_g, ref_d, ref_opt_g, ref_opt_d), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("where", ["input", "generator loss"])
def test_a_non_finite_step_leaves_weights_and_optimisers_bit_identical(where):
    """float64, a NaN injected: in the input every update is skipped; in the generator's loss alone
    (an infinite sigma) the critic's two updates apply and G's does not. What is skipped is left
    exactly as it was: weights, RMSprop's running averages and its step counters."""
    g, d = _nets64()
    opt_g, opt_d = make_optimizers(g, d, 1e-3)
    rng = torch.Generator().manual_seed(2)
    x, clean = torch.rand(2, 3, 32, 32, generator=rng, dtype=torch.float64), torch.rand(2, 3, 32, 32, generator=rng, dtype=torch.float64)
    train_step(g, d, opt_g, opt_d, x, clean, 3.0, "sot-l1")  # optimiser state to keep, not just zeros
    before_g, before_d = _states(g, opt_g), _states(d, opt_d)
    sigma = 3.0
    if where == "input":
        x = x.clone()
        x[0, 0, 0, 0] = float("nan")
    else:
        sigma = float("inf")
    stats, _ = train_step(g, d, opt_g, opt_d, x, clean, sigma, "sot-l1")
    assert bool(stats["skipped"])
    assert all(torch.equal(a, b) for a, b in zip(before_g, _states(g, opt_g), strict=True))
    kept_d = all(torch.equal(a, b) for a, b in zip(before_d, _states(d, opt_d), strict=True))
    assert kept_d == (where == "input")
    assert all(torch.isfinite(v).all() for v in _states(g, d, opt_g, opt_d) if v.is_floating_point())


def test_the_guarded_step_reads_nothing_back_from_the_device(monkeypatch):
    """No host synchronisation inside the step: turning a tensor into a Python bool or number there
    would raise."""
    g, d = _nets64()
    opt_g, opt_d = make_optimizers(g, d, 1e-3)
    x, clean = torch.rand(2, 3, 32, 32, dtype=torch.float64), torch.rand(2, 3, 32, 32, dtype=torch.float64)

    def refuse(*args, **kwargs):
        raise AssertionError("the step read a value back from the device")
    for name in ("__bool__", "__float__", "__int__", "__index__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, refuse)
    stats, _ = train_step(g, d, opt_g, opt_d, x, clean, 3.0, "sot-l1")
    monkeypatch.undo()
    assert not bool(stats["skipped"])


@pytest.mark.slow
def test_a_diverging_run_stops_and_saves_no_nan(tmp_path):
    data, out = sr_data(tmp_path / "data"), tmp_path / "runs"
    result = run_script(*train_args(data, out, "nan", 50, "--lr", "1e30", "--max-nonfinite", "3",
                                    "--save-every", "0"))
    assert result.returncode == 3, result.stderr[-2000:]
    assert "non-finite steps in a row" in result.stderr and "Last good checkpoint" in result.stderr
    for path in (out / "sr" / "nan" / "sigma-10").glob("*.pt"):
        ckpt = torch.load(path, weights_only=True)
        assert all(torch.isfinite(v).all() for v in ckpt["generator"].values())


def test_full_disk_at_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    g = Generator(width=16, increment=8)
    save_checkpoint(path, {"arch": {"generator": g.arch}, "generator": g.state_dict()})

    def disk_full(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", disk_full)
    with pytest.raises(OSError):
        save_checkpoint(path, {"arch": {"generator": g.arch}, "generator": g.state_dict(), "step": 2})
    monkeypatch.undo()
    assert load_generator(path) is not None and [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_full_disk_during_training_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import common.training.checkpoint as checkpoint

    data, out = sr_data(tmp_path / "data"), tmp_path / "runs"
    real_replace = os.replace
    calls = {"n": 0}

    def fail_on_checkpoints(src, dst):
        if str(dst).endswith(".pt"):
            calls["n"] += 1
            if calls["n"] > 1:  # the first checkpoint is written, the second finds the disk full
                raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "replace", fail_on_checkpoints)
    with pytest.raises(SystemExit) as exit_info:
        train_main("sr", train_args(data, out, "full-disk", 4)[1:])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "step-00000001.pt is intact" in err
    assert read_checkpoint(out / "sr" / "full-disk" / "sigma-10" / "step-00000001.pt")["step"] == 1


# ----------------------------------------------------------------------------- bad input, one line each
def u8(*shape):
    return np.zeros(shape, np.uint8)


def make_case(tmp_path, case):
    """Returns (script, argv, expected message fragment) for one bad input."""
    d = tmp_path / case
    d.mkdir()
    train = lambda *a: ("train", ["--trainset", str(d), "--out", str(tmp_path / "o"), "--max-steps", "1",
                                  "--device", "cpu", *SMALL, *a], )
    if case == "missing folder":
        return "train", ["--trainset", str(d / "nope"), "--device", "cpu"], "training folder not found"
    if case == "empty folder":
        return "train", ["--trainset", str(d), "--device", "cpu"], "no .h5 files"
    if case == "no label":
        write_h5(d / "a.h5", u8(4, 3, 32, 32), None)
        return (*train(), "no 'label' dataset")
    if case == "truncated h5":
        write_h5(d / "a.h5", u8(64, 3, 32, 32), u8(64, 3, 128, 128))
        raw = (d / "a.h5").read_bytes()
        (d / "a.h5").write_bytes(raw[: len(raw) // 3])
        return (*train(), "a.h5")
    if case == "channel mismatch":
        write_h5(d / "a.h5", u8(4, 3, 32, 32), u8(4, 1, 128, 128))
        return (*train(), "channels")
    if case == "patch the critic cannot take":
        write_h5(d / "a.h5", u8(4, 3, 16, 16), u8(4, 3, 64, 64))
        return (*train(), "critic takes 128x128")
    if case == "NaN in data":
        write_h5(d / "a.h5", np.full((4, 3, 32, 32), np.nan, np.float32), np.zeros((4, 3, 128, 128), np.float32))
        return (*train(), "NaN")
    if case == "values out of range":
        write_h5(d / "a.h5", np.full((4, 3, 32, 32), 255.0, np.float32), np.zeros((4, 3, 128, 128), np.float32))
        return (*train(), "values in [255, 255]")
    if case == "not a checkpoint":
        (d / "model.pth").write_bytes(b"hello")
        return "test", ["--checkpoint", str(d / "model.pth"), "--input", str(d), "--device", "cpu"], "not a checkpoint (neither a PyTorch file nor a pickle)"
    if case == "other architecture":
        c = Critic(hidden=16, input_size=32, width=8)
        save_checkpoint(d / "c.pt", {"arch": {"generator": Generator(width=16, increment=8).arch},
                                     "generator": c.state_dict()})
        return "test", ["--checkpoint", str(d / "c.pt"), "--input", str(d), "--device", "cpu"], "missing"
    ckpt = tmp_path / "g.pt"
    if not ckpt.exists():
        generator_checkpoint(ckpt, Generator(width=16, increment=8))
    test = lambda *a: ("test", ["--checkpoint", str(ckpt), "--device", "cpu", "--no-lpips", "--save",
                                str(tmp_path / "res"), *a])
    if case == "unreadable image":
        (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
        return (*test("--input", str(d)), "broken.png: not a readable image")
    if case == "names do not match":
        (d / "in").mkdir(), (d / "gt").mkdir()
        for name in ("a.png", "b.png"):
            cv2.imwrite(str(d / "in" / name), u8(8, 8, 3))
        cv2.imwrite(str(d / "gt" / "a.png"), u8(32, 32, 3))
        cv2.imwrite(str(d / "gt" / "zzz.png"), u8(32, 32, 3))
        return (*test("--input", str(d / "in"), "--gt", str(d / "gt")), "b.png")
    if case == "sizes do not match":
        (d / "in").mkdir(), (d / "gt").mkdir()
        cv2.imwrite(str(d / "in" / "a.png"), u8(8, 8, 3))
        cv2.imwrite(str(d / "gt" / "a.png"), u8(40, 40, 3))
        return (*test("--input", str(d / "in"), "--gt", str(d / "gt")), "ground truth is 40x40 but the restored")
    if case == "output folder not writable":
        sr_data(d)
        (tmp_path / "a-file").write_text("")
        return "train", ["--trainset", str(d), "--out", str(tmp_path / "a-file" / "runs"), "--max-steps", "1",
                         "--device", "cpu", *SMALL], "cannot write the output folder"
    if case == "CUDA asked for and absent":
        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        sr_data(d)
        return "train", ["--trainset", str(d), "--device", "cuda", *SMALL], "CUDA is not available"
    raise ValueError(case)


BAD_INPUTS = ["missing folder", "empty folder", "no label", "truncated h5", "channel mismatch",
              "patch the critic cannot take", "NaN in data", "values out of range", "not a checkpoint",
              "other architecture", "unreadable image", "names do not match", "sizes do not match",
              "output folder not writable", "CUDA asked for and absent"]


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_is_one_line_with_exit_status_2(tmp_path, capsys, case):
    script, argv, fragment = make_case(tmp_path, case)
    main = train_main if script == "train" else run_test_script
    with pytest.raises(SystemExit) as exit_info:
        main("sr", argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and fragment in err[-1], err
    assert not any("Traceback" in line for line in err)


@pytest.mark.slow
def test_bad_input_through_a_real_process_and_debug_traceback(tmp_path):
    result = run_script("sr/train.py", "--trainset", str(tmp_path / "none"), "--device", "cpu")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    result = run_script("sr/train.py", "--trainset", str(tmp_path / "none"), "--device", "cpu", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr


@pytest.mark.parametrize("kind", ["gray", "rgba", "16bit"])
def test_unusual_images_are_converted_with_a_note(tmp_path, capsys, kind):
    img = {"gray": np.full((6, 7), 128, np.uint8), "rgba": np.full((6, 7, 4), 128, np.uint8),
           "16bit": np.full((6, 7, 3), 32768, np.uint16)}[kind]
    cv2.imwrite(str(tmp_path / "x.png"), img)
    out = read_image(tmp_path / "x.png")
    assert out.shape == (6, 7, 3) and abs(float(out.mean()) - 0.5) < 0.01
    assert "x.png" in capsys.readouterr().err


def test_a_nan_patch_found_during_training_names_the_file(tmp_path, capsys):
    data = tmp_path / "d"
    values = np.zeros((8, 3, 32, 32), np.float32)
    values[5, 0, 0, 0] = np.nan  # past the first block that is checked when the data set is built
    with h5py.File(data.mkdir() or data / "a.h5", "w") as f:
        f.create_dataset("data", data=np.concatenate([np.zeros((64, 3, 32, 32), np.float32), values]))
        f.create_dataset("label", data=np.zeros((72, 3, 128, 128), np.float32))
    with pytest.raises(SystemExit) as exit_info:
        train_main("sr", ["--trainset", str(data), "--out", str(tmp_path / "o"), "--batchSize", "72",
                          "--max-steps", "1", "--device", "cpu", *SMALL])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "a.h5" in err and "patch 'data'[69] holds NaN" in err
