
import pytest
import torch

from common.networks import Critic, Generator
from common.system.errors import InputError
from common.system.files import atomic_write
from common.training.checkpoint import load_generator, read_checkpoint, save_checkpoint
from common.cli.test import test_main as run_test_script
from helpers import ShellPayload, run_script, write_h5, write_photos


@pytest.mark.slow
def test_round_trip_of_our_format(tmp_path):
    torch.manual_seed(0)
    g = Generator(width=16, increment=8)
    d = Critic(hidden=16, input_size=32, width=8)
    with torch.no_grad():
        g.sam12.conv2.weight.add_(0.1)
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(path, {"task": "sr", "arch": {"generator": g.arch, "critic": d.arch},
                           "generator": g.state_dict(), "critic": d.state_dict(), "epoch": 3, "step": 30,
                           "config": {"lr": 1e-4, "sigma": [10.0]}})
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary left behind
    # weights_only=True must accept it as written: plain containers and tensors only
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "sot-checkpoint" and raw["step"] == 30
    loaded = load_generator(path)
    assert not loaded.training and loaded.arch == g.arch
    x = torch.rand(1, 3, 20, 24)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), g.eval()(x))


@pytest.mark.slow
def test_authors_format_loads_without_their_code(authors_checkpoint):
    path, net_g, net_d = authors_checkpoint
    g = load_generator(path)
    x = torch.rand(2, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(g(x), net_g.eval()(x))  # a second implementation, the same function
    ckpt = read_checkpoint(path)
    assert ckpt["format"] == "authors" and ckpt["epoch"] == 200
    assert not any(k.startswith("shallow_feat2") for k in ckpt["generator"])
    from common.training.checkpoint import build_critic
    d = build_critic(ckpt, path)
    assert d.arch["hidden"] == 640
    patch = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(d(patch), net_d(patch).view(-1))


@pytest.mark.slow
def test_sr_test_script_accepts_authors_file(authors_checkpoint, tmp_path):
    from common.data.images import write_image
    import numpy as np

    path, _, _ = authors_checkpoint
    rng = np.random.default_rng(0)
    write_image(tmp_path / "lr" / "a.png", rng.random((12, 16, 3)))
    write_image(tmp_path / "hr" / "a.png", rng.random((48, 64, 3)))
    out = run_script("sr/test.py", "--checkpoint", str(path), "--input", str(tmp_path / "lr"), "--gt",
                     str(tmp_path / "hr"), "--save", str(tmp_path / "res"), "--no-lpips", "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert "(authors)" in out.stdout and "mean: PSNR" in out.stdout
    assert (tmp_path / "res" / "a.png").is_file() and (tmp_path / "res" / "metrics.csv").is_file()


def test_a_pickle_that_runs_code_is_refused(tmp_path, authors_module):
    """An authors'-format file (their module's classes are admitted) that also names os.system: the
    restricted unpickler refuses that one name, and the command never runs."""
    path, marker = tmp_path / "evil.pth", tmp_path / "payload-ran"
    torch.save({"epoch": 1, "model": authors_module._NetG(), "discr": ShellPayload(marker)}, path)
    with pytest.raises(InputError, match=r"evil\.pth: refused to load posix\.system: not part of an SOT checkpoint"):
        read_checkpoint(path)
    assert not marker.exists()


def test_not_a_checkpoint_and_other_architecture(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x89PNG not a checkpoint")
    with pytest.raises(InputError, match="junk.pt: not a checkpoint"):
        read_checkpoint(junk)
    with pytest.raises(InputError, match="not found"):
        read_checkpoint(tmp_path / "missing.pt")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(InputError, match="not an SOT checkpoint"):
        read_checkpoint(other)
    g = Generator(width=16, increment=8)
    wrong = tmp_path / "wrong.pt"
    save_checkpoint(wrong, {"arch": {"generator": Generator().arch},  # arch says 80 wide, weights are 16
                            "generator": g.state_dict()})
    with pytest.raises(InputError, match="another architecture: .*shape mismatch"):
        load_generator(wrong)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "ckpt.pt"
    atomic_write(path, lambda f: f.write(b"old"))

    def failing(f):
        f.write(b"partial")
        raise OSError("No space left on device")

    with pytest.raises(OSError):
        atomic_write(path, failing)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_atomic_write_without_replace_keeps_a_file_that_appeared_meanwhile(tmp_path):
    path = tmp_path / "g.onnx"

    def meanwhile(f):  # the user's own file appears while ours is written
        f.write(b"ours")
        path.write_bytes(b"the user's")

    with pytest.raises(FileExistsError):
        atomic_write(path, meanwhile, replace=False)
    assert path.read_bytes() == b"the user's" and [p.name for p in tmp_path.iterdir()] == ["g.onnx"]
    atomic_write(tmp_path / "new.onnx", lambda f: f.write(b"ours"), replace=False)
    assert (tmp_path / "new.onnx").read_bytes() == b"ours" and len(list(tmp_path.iterdir())) == 2


@pytest.mark.slow
def test_dehazing_continues_from_an_authors_checkpoint_with_its_critic(authors_checkpoint, tmp_path):
    """The authors' dehazing/ folder ships sr/'s network file: a critic 640 wide (18,922,305 weights).
    Their checkpoint, critic included, must start our dehazing training at the paper's sizes."""
    import json

    import numpy as np

    path, _, net_d = authors_checkpoint
    assert net_d.fc1.weight.shape == (640, 8192)
    rng = np.random.default_rng(0)
    patches = (rng.random((2, 3, 128, 128)) * 255).astype(np.uint8)
    write_h5(tmp_path / "train" / "t.h5", patches, patches)
    out = run_script("dehazing/train.py", "--pretrained", str(path), "--trainset", str(tmp_path / "train"),
                     "--max-steps", "1", "--batchSize", "2", "--sigma", "10", "--out", str(tmp_path / "runs"),
                     "--name", "from-authors", "--device", "cpu", "--no-tensorboard", "--seed", "1")
    assert out.returncode == 0, out.stderr
    ckpt = read_checkpoint(tmp_path / "runs" / "dehazing" / "from-authors" / "sigma-10" / "last.pt")
    assert ckpt["arch"]["critic"]["hidden"] == 640 and ckpt["step"] == 1
    assert not torch.equal(ckpt["critic"]["fc1.weight"], net_d.fc1.weight.detach())  # it trained from theirs
    config = json.loads((tmp_path / "runs" / "dehazing" / "from-authors" / "sigma-10" / "config.json").read_text())
    assert config["pretrained"] == str(path)


@pytest.mark.slow
def test_an_authors_file_through_another_tasks_test_py_gets_a_note(tmp_path, authors_module, capsys):
    """Their files record no task; their critic's hidden layer (64 in deraining, 640 in SR and
    dehazing) tells a deraining model from the others, and another task's test.py says so."""
    torch.manual_seed(0)
    path = tmp_path / "derain.pth"
    torch.save({"epoch": 100, "model": authors_module._NetG(n_feat=8, s=8), "discr": authors_module._NetD(hidden=64)},
               path)
    write_photos(tmp_path / "in", ["a.png"], side=8)
    argv = ["--checkpoint", str(path), "--input", str(tmp_path / "in"), "--device", "cpu", "--no-report",
            "--no-score"]
    run_test_script("deraining", [*argv, "--save", str(tmp_path / "derained")])
    assert "note: " not in capsys.readouterr().err
    run_test_script("sr", [*argv, "--save", str(tmp_path / "sr")])
    notes = [line for line in capsys.readouterr().err.splitlines() if line.startswith("note: ")]
    assert notes == [f"note: {path}: the authors' files record no task, but this one's critic (a 64-wide hidden "
                     "layer) is that of their deraining models, not of their x4 super-resolution ones (640): tested "
                     "as x4 super-resolution all the same; deraining/test.py would test it as trained"]
    assert (tmp_path / "sr" / "a.png").is_file()
