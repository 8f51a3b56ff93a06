import json

import pytest
import torch

from common.cli.train import parse_train_args
from common.networks import Critic, Generator
from common.sot import learning_rate, make_optimizers, set_learning_rate, train_step
from common.tasks import TASKS
from helpers import brightened_set, write_h5


def small_pair(seed=0):
    torch.manual_seed(seed)
    return Generator(width=16, increment=8), Critic(hidden=16, input_size=32, width=8)


@pytest.mark.parametrize("cost", ["sot-l0.5", "sot-l1", "ot"])
def test_one_iteration_changes_both_networks_and_stays_finite(cost):
    g, d = small_pair()
    opt_g, opt_d = make_optimizers(g, d, 1e-4)
    before_g = {k: v.clone() for k, v in g.state_dict().items()}
    before_d = {k: v.clone() for k, v in d.state_dict().items()}
    x, clean = torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)
    stats, fake = train_step(g, d, opt_g, opt_d, x, clean, sigma=10.0, cost=cost)
    assert fake.shape == x.shape and not fake.requires_grad
    assert not bool(stats.pop("skipped"))
    assert all(torch.isfinite(v).all() for v in stats.values())
    assert stats["w_distance"].item() == pytest.approx(-stats["loss_d"].item())
    after_g, after_d = g.state_dict(), d.state_dict()
    assert all(torch.isfinite(v).all() for v in [*after_g.values(), *after_d.values()])
    assert not torch.equal(before_g["sam12.conv2.weight"], after_g["sam12.conv2.weight"])
    assert not torch.equal(before_g["shallow_feat1.0.weight"], after_g["shallow_feat1.0.weight"])
    assert torch.equal(before_g["sam12.conv1.weight"], after_g["sam12.conv1.weight"])  # frozen, unused
    # every weight moves; fc2.bias shifts real and fake scores alike, so no WGAN loss moves it
    unchanged = [k for k in before_d if torch.equal(before_d[k], after_d[k])]
    assert "fc2.bias" in unchanged and all(k.endswith("bias") for k in unchanged)
    assert all(p.requires_grad for p in d.parameters())  # the critic is unfrozen again


def test_two_critic_updates_then_a_generator_step_that_leaves_critic_grads_alone():
    g, d = small_pair(1)
    opt_g, opt_d = make_optimizers(g, d, 1e-4)
    recorded = []
    critic_step = opt_d.step

    def spy(*args, **kwargs):
        recorded.append([p.grad.clone() for p in d.parameters()])
        return critic_step(*args, **kwargs)

    opt_d.step = spy
    train_step(g, d, opt_g, opt_d, torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32), 1.0, "sot-l1")
    assert len(recorded) == 2  # the critic step, then the gradient-penalty step
    # the critic is frozen in the generator step: its grads are still the penalty step's
    assert all(torch.equal(p.grad, r) for p, r in zip(d.parameters(), recorded[1]))
    assert g.sam12.conv2.weight.grad is not None


@pytest.mark.slow
def test_critic_warmup_trains_only_the_critic_for_its_steps(tmp_path):
    import numpy as np

    from common.cli.train import train_main

    g, d = small_pair(3)
    opt_g, opt_d = make_optimizers(g, d, 1e-4)
    before_g = {k: v.clone() for k, v in g.state_dict().items()}
    before_d = {k: v.clone() for k, v in d.state_dict().items()}
    stats, fake = train_step(g, d, opt_g, opt_d, torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32), 1.0, "sot-l1",
                             update_generator=False)
    assert not bool(stats["skipped"]) and "loss_g" not in stats and not fake.requires_grad
    assert all(torch.equal(before_g[k], v) for k, v in g.state_dict().items())
    assert not torch.equal(before_d["features.0.weight"], d.state_dict()["features.0.weight"])

    rng = np.random.default_rng(0)
    patches = (rng.random((4, 3, 128, 128)) * 255).astype(np.uint8)
    write_h5(tmp_path / "train" / "t.h5", patches, patches)
    train_main("deraining", ["--trainset", str(tmp_path / "train"), "--batchSize", "2", "--sigma", "1", "--seed", "1",
                             "--gen-width", "8", "--gen-increment", "8", "--critic-width", "8", "--critic-init",
                             "kaiming", "--critic-warmup", "2", "--log-every", "1", "--max-steps", "3", "--out",
                             str(tmp_path / "runs"), "--name", "w", "--device", "cpu", "--no-tensorboard"])
    run = tmp_path / "runs" / "deraining" / "w" / "sigma-1"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [("loss_g" in r) for r in records if r["kind"] == "train"] == [False, False, True]
    config = json.loads((run / "config.json").read_text())
    assert config["critic_warmup_steps"] == 2 and config["critic_init"] == "kaiming"
    assert config["null_space"] is False


def test_null_space_is_part_of_the_saved_model(tmp_path):
    """SR's --null-space is recorded in the checkpoint's architecture, so test.py's generator projects too;
    the other tasks have no such flag."""
    import numpy as np

    from common.training.checkpoint import load_generator
    from common.cli.train import train_main

    rng = np.random.default_rng(0)
    write_h5(tmp_path / "train" / "t.h5", (rng.random((4, 3, 32, 32)) * 255).astype(np.uint8),
             (rng.random((4, 3, 128, 128)) * 255).astype(np.uint8))
    train_main("sr", ["--trainset", str(tmp_path / "train"), "--batchSize", "2", "--sigma", "1", "--seed", "1",
                      "--gen-width", "8", "--gen-increment", "8", "--critic-width", "8", "--null-space",
                      "--max-steps", "2", "--out", str(tmp_path / "runs"), "--name", "n", "--device", "cpu",
                      "--no-tensorboard"])
    run = tmp_path / "runs" / "sr" / "n" / "sigma-1"
    g = load_generator(run / "last.pt")
    assert g.arch["null_space_scale"] == 4
    assert json.loads((run / "config.json").read_text())["null_space"] is True
    with pytest.raises(SystemExit):
        parse_train_args(TASKS["deraining"], ["--null-space"])


def test_learning_rate_schedule_and_half_rate_for_g():
    assert learning_rate(1e-4, 1, 50) == pytest.approx(1e-4)
    assert learning_rate(1e-4, 50, 50) == pytest.approx(1e-4)
    assert learning_rate(1e-4, 51, 50) == pytest.approx(1e-5)
    assert learning_rate(1e-4, 101, 50) == pytest.approx(1e-6)
    g, d = small_pair()
    opt_g, opt_d = make_optimizers(g, d, 1e-4)
    assert isinstance(opt_g, torch.optim.RMSprop) and isinstance(opt_d, torch.optim.RMSprop)
    set_learning_rate(opt_g, opt_d, 1e-5)
    assert opt_d.param_groups[0]["lr"] == pytest.approx(1e-5) and opt_g.param_groups[0]["lr"] == pytest.approx(5e-6)


@pytest.mark.parametrize("argv,expected", [
    ([], [100, 50, 30, 10]),
    (["--sigma", "100", "50"], [100, 50]),
    (["--sigma=[100,50,30,10]"], [100, 50, 30, 10]),
    (["--sigma", "0.1,1", "10"], [0.1, 1, 10]),
])
def test_sigma_spellings(argv, expected):
    assert parse_train_args(TASKS["sr"], argv).sigma == tuple(expected)


def test_reference_defaults_and_demo_defaults():
    config = parse_train_args(TASKS["sr"], [])
    assert (config.epochs, config.batch_size, config.lr, config.lr_step_epochs, config.cost) == (200, 32, 1e-4, 50,
                                                                                                "sot-l0.5")
    demo = parse_train_args(TASKS["sr"], ["--demo", "--max-steps", "2"])
    assert demo.max_steps == 2 and demo.batch_size < 32 and len(demo.sigma) == 1
    with pytest.raises(SystemExit):
        parse_train_args(TASKS["sr"], ["--sigma", "abc"])


@pytest.mark.slow
def test_weight_average_follows_the_generator_and_is_what_validation_and_test_use(tmp_path):
    """--ema: avg <- d avg + (1 - d) G after each step; checkpoints hold it, load_generator returns it,
    and a resume continues it."""
    import numpy as np

    from common.training.checkpoint import load_generator, read_checkpoint
    from common.recipe import WeightAverage
    from common.cli.train import train_main

    g, _ = small_pair(2)
    average = WeightAverage(g, 0.9)
    before = [p.clone() for p in average.model.parameters()]
    with torch.no_grad():
        for p in g.parameters():
            p.add_(1.0)
    average.update(g)
    for a, b, p in zip(average.model.parameters(), before, g.parameters()):
        torch.testing.assert_close(a, 0.9 * b + 0.1 * p)

    rng = np.random.default_rng(0)
    patches = (rng.random((4, 3, 128, 128)) * 255).astype(np.uint8)
    write_h5(tmp_path / "train" / "t.h5", patches, patches)
    argv = ["--trainset", str(tmp_path / "train"), "--batchSize", "2", "--sigma", "1", "--seed", "1", "--ema", "0.5",
            "--gen-width", "8", "--gen-increment", "8", "--critic-width", "8", "--out", str(tmp_path / "runs"),
            "--name", "ema", "--device", "cpu", "--no-tensorboard", "--save-every", "0"]
    train_main("deraining", argv + ["--max-steps", "2"])
    last = tmp_path / "runs" / "deraining" / "ema" / "sigma-1" / "last.pt"
    ckpt = read_checkpoint(last)
    assert ckpt["generator_ema"] is not None and ckpt["config"]["ema_decay"] == 0.5
    head = "sam12.conv2.weight"
    assert not torch.equal(ckpt["generator_ema"][head], ckpt["generator"][head])
    assert torch.equal(load_generator(last).state_dict()[head], ckpt["generator_ema"][head])
    train_main("deraining", ["--resume", "auto", "--name", "ema", "--out", str(tmp_path / "runs"), "--max-steps", "3"])
    resumed = read_checkpoint(last)
    assert resumed["step"] == 3 and not torch.equal(resumed["generator_ema"][head], ckpt["generator_ema"][head])
    # A new run under the same name is refused: its checkpoints would mix with the earlier run's.
    with pytest.raises(SystemExit) as exc:
        train_main("deraining", argv + ["--max-steps", "1"])
    assert exc.value.code == 2 and read_checkpoint(last)["step"] == 3


def test_the_run_says_how_long_it_will_take_and_warns_of_days_on_a_cpu():
    from common.training.loop import time_estimate

    # deraining at the paper's sizes on two CPU cores: ~75 s a step, 6 sigmas x 200 epochs x 12 steps
    line = time_estimate(0.1, 75.0, 2400 - 10, 5, 2400, "cpu")
    assert "75.00 s a step on cpu" in line and "about 12.5 days in all" in line
    assert "That is days on a CPU: --demo" in line
    short = time_estimate(10.0, 0.5, 990, 0, 1000, "cpu")
    assert short.endswith("about 8 min in all") and "days" not in short


@pytest.mark.slow
def test_progress_is_counted_against_the_runs_real_end(tmp_path, capsys):
    """--max-steps before --nEpochs: the bar counts steps out of --max-steps, not batches of one epoch;
    after its first steps the run says how long the rest will take."""
    import numpy as np

    from common.cli.train import train_main

    rng = np.random.default_rng(0)
    patches = (rng.random((4, 3, 128, 128)) * 255).astype(np.uint8)
    write_h5(tmp_path / "train" / "t.h5", patches, patches)
    train_main("deraining", ["--trainset", str(tmp_path / "train"), "--batchSize", "2", "--sigma", "1", "--seed", "1",
                             "--gen-width", "8", "--gen-increment", "8", "--critic-width", "8", "--max-steps", "12",
                             "--out", str(tmp_path / "runs"), "--name", "p", "--device", "cpu", "--no-tensorboard"])
    captured = capsys.readouterr()
    # 12 steps, 2 batches an epoch: one bar, and the epochs counted to the one the run ends in (it said 6/200)
    assert "/12 [" in captured.err and "epoch 6/6" in captured.err and "/200" not in captured.err
    assert "s a step on cpu; this sigma's 2 remaining steps take about" in captured.out


BRIGHTENED_DB = 13.98  # the PSNR of an image brightened by 51 levels against itself: 20 log10(255 / 51)


def train_brightened(tmp_path, *flags, name="r", supervised=False):
    """SOT (or the supervised bound) on :func:`brightened_set`, G starting as the identity."""
    from common.cli.train import train_main

    method = ["--supervised"] if supervised else ["--loss", "sot-l0.5", "--sigma", "10", "--critic-init", "kaiming",
                                                  "--critic-warmup", "20", "--critic-width", "8"]
    train_main("deraining", ["--trainset", str(tmp_path / "train"), *method, "--init", "identity", "--batchSize", "8",
                             "--lr", "1e-4", "--seed", "0", "--gen-width", "8", "--gen-increment", "8",
                             "--nEpochs", "1000", "--val-input", str(tmp_path / "in"), "--val-gt", str(tmp_path / "gt"),
                             "--out", str(tmp_path / "runs"), "--name", name, "--device", "cpu", "--no-tensorboard",
                             *flags])
    return tmp_path / "runs" / "deraining" / name / ("sigma-0" if supervised else "sigma-10")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sot", "supervised"])
def test_training_restores_an_easy_degradation(tmp_path, monkeypatch, method):
    """Training must restore something: 150 steps on :func:`brightened_set` (13.98 dB) must take G,
    which starts as the identity (so the input's PSNR is an untrained G's), 3 dB past the input on
    held-out images. Measured: SOT 23.8 dB (seeds 1-4 of the same settings: 19.1, 24.0, 22.4, 23.6),
    the supervised bound 26.1 dB."""
    import numpy as np

    from common.training.checkpoint import load_generator

    held_out = brightened_set(tmp_path, monkeypatch, paired=method == "supervised")
    folder = train_brightened(tmp_path, "--max-steps", "150", supervised=method == "supervised")
    g = load_generator(folder / "last.pt")
    with torch.no_grad():
        restored = g(torch.from_numpy(held_out + 51).float() / 255).clamp(0, 1).numpy()
    scores = -10 * np.log10(((restored - held_out / 255.0) ** 2).mean(axis=(1, 2, 3)))
    assert np.mean(scores) > BRIGHTENED_DB + 3, scores


@pytest.mark.slow
def test_best_pt_holds_the_best_validation_and_keeps_it_across_a_resume(tmp_path, monkeypatch):
    """Validated every 5 steps, a run's PSNR swings (measured: 20.5 dB at step 40, 22.1 at the run's end
    at 42, then 10.0 at 45 and 12.8 at 55 after a resume); best.pt must hold the best of them, weights
    and figure, not the latest, and a resume whose validations are all worse must leave it alone."""
    import json

    import numpy as np

    from common.training.checkpoint import load_generator, read_checkpoint
    from common.cli.train import train_main

    held_out = brightened_set(tmp_path, monkeypatch, paired=False)
    folder = train_brightened(tmp_path, "--max-steps", "42", "--val-steps", "5")
    before = read_checkpoint(folder / "best.pt")
    train_main("deraining", ["--resume", "auto", "--name", "r", "--out", str(tmp_path / "runs"), "--max-steps", "55"])
    validations = [r for r in map(json.loads, (folder / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "val"]
    psnr = {r["step"]: r["psnr"] for r in validations}
    best_step = max(psnr, key=psnr.get)
    # what makes this run a test: the best is neither the last validation nor after the resume
    assert best_step <= 42 and max(v for s, v in psnr.items() if s > 42) < psnr[best_step] - 1
    best = read_checkpoint(folder / "best.pt")
    assert best["step"] == before["step"] == best_step and best["best_psnr"] == psnr[best_step]
    assert [r["best_psnr"] for r in validations][-1] == psnr[best_step]
    with torch.no_grad():
        restored = load_generator(folder / "best.pt")(torch.from_numpy(held_out + 51).float() / 255)
    restored = (restored.clamp(0, 1) * 255).round().numpy() / 255  # as validation reads the PNGs it would write
    mse = ((restored - held_out / 255.0) ** 2).mean(axis=(1, 2, 3))
    assert np.mean(-10 * np.log10(mse)) == pytest.approx(psnr[best_step], abs=1e-3)  # its weights, not only its figure


def test_the_weight_average_updates_without_reading_the_device():
    """With the skip flag on the device, the average's update must not read it on the host (a read is
    a wait for the GPU at every step): no ``.item()`` among its operators, and the flag is honoured."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from common.recipe import WeightAverage

    class Operators(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    g = Generator(width=8, increment=8)
    average = WeightAverage(g, 0.9)
    with torch.no_grad():
        for p in g.parameters():
            p.add_(1.0)
    before = [p.clone() for p in average.model.parameters()]
    with Operators() as seen:
        average.update(g, applied=torch.tensor(False))
    assert not [n for n in seen.names if "_local_scalar_dense" in n], seen.names
    assert all(torch.equal(a, b) for a, b in zip(average.model.parameters(), before))  # skipped: unchanged
    average.update(g, applied=torch.tensor(True))
    expected = [b + 0.1 * (p - b) for b, p in zip(before, g.parameters())]
    assert all(torch.allclose(a, e) for a, e in zip(average.model.parameters(), expected))
