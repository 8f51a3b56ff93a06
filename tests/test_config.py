"""The run configuration: one frozen, typed RunConfig, the command line built from it, what run.json
keeps (what was asked apart from what the machine resolved), and the resume check of every field
that defines a run."""
import dataclasses
import json

import pytest
import torch

import common
from common.cli import test as test_script
from common.cli.flags import add_script_flags, script_parser
from common.cli.train import parse_train_args, parse_train_command, train_main, train_parser
from common.tasks import TASKS
from common.training.config import RunConfig, flag_of
from helpers import small_nets, sr_trainset, write_photos

SMALL = [*small_nets(), "--device", "cpu"]


def test_the_configuration_is_frozen_and_its_parser_is_built_from_its_fields():
    config = RunConfig.for_task(TASKS["sr"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0
    help_text = train_parser(TASKS["sr"]).format_help()
    for f in dataclasses.fields(RunConfig):
        if f.metadata.get("flags"):
            assert f.metadata["flags"][0] in help_text, f.name
            assert flag_of(f.name) == f.metadata["flags"][0]
    # the reference's spellings and the named ones land in the same fields
    a = parse_train_args(TASKS["sr"], ["--nEpochs", "3", "--batchSize", "4", "--step", "7", "--threads", "0"])
    b = parse_train_args(TASKS["sr"], ["--epochs", "3", "--batch-size", "4", "--lr-step-epochs", "7", "--threads", "0"])
    assert a == b and (a.epochs, a.batch_size, a.lr_step_epochs, a.loader_workers) == (3, 4, 7, 0)
    assert "--null-space" not in train_parser(TASKS["deraining"]).format_help()  # SR only


def test_the_command_knows_which_flags_were_given():
    command = parse_train_command(TASKS["sr"], ["--max-steps", "5", "--sigma", "10", "--device", "cpu"])
    assert command.given == {"max_steps": 5, "sigma": (10.0,), "device": "cpu"}
    assert command.config.max_steps == 5 and command.config.batch_size == 32


def small_run(tmp_path, *extra):
    sr_trainset(tmp_path / "data" / "a.h5", n=4)
    train_main("sr", ["--trainset", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--name", "r", "--sigma",
                      "10", "--batchSize", "2", "--max-steps", "1", *SMALL, *extra])
    return tmp_path / "out" / "sr" / "r"


@pytest.mark.slow
def test_run_json_keeps_what_was_asked_apart_from_what_the_machine_made_of_it(tmp_path, capsys):
    """A run started with --precision auto on a GPU and resumed on a CPU runs fp32 there: run.json
    records 'auto' as asked and bf16 as resolved, and a resume resolves again."""
    run = small_run(tmp_path)
    record = json.loads((run / "run.json").read_text())
    assert record["code_version"] == common.__version__  # and in its checkpoints:
    assert torch.load(run / "sigma-10" / "last.pt", weights_only=True)["code_version"] == common.__version__
    assert record["config"]["precision"] == "auto" and record["config"]["seed"] is None
    assert record["resolved"]["precision"] == "fp32" and isinstance(record["resolved"]["seed"], int)
    record["resolved"].update(precision="bf16", device="cuda", loader_workers=4)  # as a GPU machine resolved it
    (run / "run.json").write_text(json.dumps(record))
    train_main("sr", ["--resume", "auto", "--name", "r", "--out", str(tmp_path / "out"), "--max-steps", "2"])
    resumed = json.loads((run / "run.json").read_text())
    assert resumed["resolved"]["precision"] == "fp32" and resumed["resolved"]["loader_workers"] == 0
    assert resumed["resolved"]["seed"] == record["resolved"]["seed"]  # the run's own seed comes back


def test_a_run_json_from_before_the_split_resumes(tmp_path):
    """Older run.json files were train.py's flat namespace with resolved values: converted, with the
    machine's values asked for again."""
    run = small_run(tmp_path)
    record = json.loads((run / "run.json").read_text())
    legacy = {"trainset": record["config"]["trainset"], "sigma": [10.0], "batchSize": 2, "nEpochs": 200,
              "loss": "sot-l0.5", "step": 50, "gen_width": 8, "gen_increment": 8, "critic_width": 8,
              "no_tensorboard": True, "precision": "bf16", "threads": 4, "device": "cuda",
              "seed": record["resolved"]["seed"], "trainset_files": record["resolved"]["trainset_files"]}
    (run / "run.json").write_text(json.dumps(legacy))
    train_main("sr", ["--resume", "auto", "--name", "r", "--out", str(tmp_path / "out"), "--max-steps", "2",
                      "--device", "cpu"])
    resumed = json.loads((run / "run.json").read_text())
    assert resumed["format"] == "sot-run" and resumed["config"]["tensorboard"] is False
    assert resumed["config"]["precision"] == "auto" and resumed["resolved"]["precision"] == "fp32"


CHANGED = {"trainset": None, "layout": "matlab", "align_corners": True, "cost": "ot", "sigma": ["11"],
           "supervised": True, "seed": "99", "batch_size": "4", "lr": "0.001", "lr_step_epochs": "3",
           "gen_width": "16", "gen_increment": "16", "critic_width": "16", "pretrained": None,
           "generator_init": "identity", "critic_init": "kaiming", "critic_warmup_steps": "3", "dc_weight": "1",
           "ema_decay": "0.9", "null_space": True}


def test_every_field_that_defines_a_run_is_listed_here():
    defining = {f.name for f in dataclasses.fields(RunConfig) if f.metadata.get("defines")}
    assert defining == set(CHANGED)


@pytest.fixture(scope="module")
def seeded_run(tmp_path_factory):
    """One run for every field's case: a refused resume writes nothing (asserted), so they can share it."""
    root = tmp_path_factory.mktemp("seeded")
    return root, small_run(root, "--seed", "1")


@pytest.mark.parametrize("name", sorted(CHANGED))
def test_a_resume_that_changes_a_defining_field_is_refused(seeded_run, capsys, name):
    tmp_path, run = seeded_run
    capsys.readouterr()
    value = CHANGED[name]
    if name == "trainset":
        (tmp_path / "other").mkdir(exist_ok=True)
        value = str(tmp_path / "other")
    if name == "pretrained":
        value = str(run / "sigma-10" / "last.pt")
    flag = flag_of(name)
    extra = [flag] if value is True else [flag, *value] if isinstance(value, list) else [flag, value]
    before = (run / "run.json").read_text()
    with pytest.raises(SystemExit) as exit_info:
        train_main("sr", ["--resume", "auto", "--name", "r", "--out", str(tmp_path / "out"), "--max-steps", "2",
                          *extra])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and f"{flag} " in err and "differs from the run being resumed" in err, err
    assert (run / "run.json").read_text() == before



def test_a_flag_is_taken_only_as_spelled_in_full(capsys):
    """argparse would take --dem for --demo, while train.py picks the demo's defaults by the flag's full
    spelling (a run on the demo's data with the paper's settings): no parser takes a flag cut short."""
    task = TASKS["sr"]
    gdata = script_parser("gdata/make_h5.py", "", "")
    add_script_flags(gdata, "layout")
    shortened = [(lambda argv: parse_train_command(task, argv), ["--dem"]),
                 (lambda argv: parse_train_command(task, argv), ["--max-step", "3"]),
                 (lambda argv: test_script.test_parser(task).parse_args(argv), ["--dem"]),
                 (gdata.parse_args, ["--qui"])]
    for parse, argv in shortened:
        with pytest.raises(SystemExit) as exit_info:
            parse(argv)
        assert exit_info.value.code == 2, argv
        assert f"unrecognized arguments: {argv[0]}" in capsys.readouterr().err, argv


def refused_commands(root, run):
    """(task, argv, what the one error line must hold) for commands that mix what cannot go together."""
    ckpt = run / "sigma-10" / "last.pt"
    write_photos(root / "val")
    return {
        "another task's checkpoint": ("deraining", ["--resume", str(ckpt)],
                                      "trained for x4 super-resolution, not deraining; resume it with python sr/train.py"),
        "--demo on a run that is not one": ("sr", ["--demo", "--resume", "auto", "--name", "r", "--out",
                                                   str(root / "out")], "--demo resumes only a demo run"),
        "--resume-new-data alone": ("sr", ["--resume-new-data", "--trainset", str(root / "data")],
                                    "--resume-new-data continues a run on changed training files: it needs --resume"),
        "--demo with your data": ("sr", ["--demo", "--trainset", str(root / "data"), "--out", str(root / "demo")],
                                  "--trainset: --demo trains and validates on its own built-in photographs"),
        "validation against itself": ("sr", ["--trainset", str(root / "data"), "--out", str(root / "new"),
                                             "--val-input", str(root / "val"), "--val-gt", str(root / "val"), "--batchSize", "2",
                                             *SMALL],
                                      "--val-gt " + str(root / "val") + " is the --val-input folder: every image "
                                      "would be scored against itself"),
    }


@pytest.mark.parametrize("case", ["another task's checkpoint", "--demo on a run that is not one",
                                  "--resume-new-data alone", "--demo with your data", "validation against itself"])
def test_commands_that_cannot_go_together_are_refused_before_anything_is_written(seeded_run, capsys, case):
    root, run = seeded_run
    task, argv, fragment = refused_commands(root, run)[case]
    before = sorted(str(p) for p in root.rglob("*"))
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        train_main(task, argv)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and fragment in err, err
    assert sorted(str(p) for p in root.rglob("*")) == before  # no demo data built, no run folder made


def test_resuming_from_an_older_checkpoint_says_that_later_ones_will_be_replaced(tmp_path, capsys):
    run = small_run(tmp_path, "--save-every", "1", "--max-steps", "2")
    capsys.readouterr()
    train_main("sr", ["--resume", str(run / "sigma-10" / "step-00000001.pt"), "--max-steps", "3"])
    err = capsys.readouterr().err
    assert ("sigma 10: step-00000001.pt is at step 1, behind this sigma's newest checkpoint (last.pt, step 2); "
            "training goes on from step 1") in err
    assert json.loads((run / "sigma-10" / "state.json").read_text())["step"] == 3


# ----------------------------------------------------------------------------- one set of rules
# (field, what the command line gets, the same value as run.json holds it)
SAME_RULES = [("gen_width", "3", 3), ("lr", "1e-320", 1e-320), ("lr", "-1", -1), ("batch_size", "0", 0),
              ("seed", str(2**32), 2**32), ("ema_decay", "1", 1), ("sigma", "nan", [float("nan")]),
              ("dc_weight", "1e-45", 1e-45), ("name", "../x", "../x"), ("cost", "sot-l7", "sot-l7"),
              ("layout", "nchw", "nchw"), ("device", "tpu", "tpu"), ("precision", "fp16", "fp16")]


@pytest.mark.parametrize("name,token,value", SAME_RULES, ids=[f"{n}={t}" for n, t, _ in SAME_RULES])
def test_the_command_line_and_run_json_are_held_to_one_set_of_rules(capsys, name, token, value):
    """What the command line refuses, run.json may not hold either, in the same words: both pass through
    the field's own rules (its flag's type, choices and nargs), not through a second list."""
    from common.training.config import FieldError, field_value

    with pytest.raises(SystemExit) as exit_info:
        parse_train_args(TASKS["sr"], [flag_of(name), token])
    command_line = capsys.readouterr().err
    assert exit_info.value.code == 2 and flag_of(name) in command_line
    with pytest.raises(FieldError) as refused:
        field_value(name, value)
    if "invalid choice" not in command_line:  # argparse words its own choices check
        assert refused.value.problem in command_line, (refused.value.problem, command_line)


def test_a_configuration_built_in_code_is_held_to_the_same_rules():
    from common.training.config import FieldError
    from common.demo import demo_settings

    with pytest.raises(FieldError, match='--gen-width "8": must be a whole number'):
        RunConfig.for_task(TASKS["sr"], gen_width="8")
    with pytest.raises(FieldError, match="--nEpochs 0: must be at least 1"):
        RunConfig.for_task(TASKS["sr"], epochs=0)
    for task in TASKS.values():  # every default, and the demo's settings, pass
        assert RunConfig.for_task(task).sigma == tuple(float(s) for s in task.sigmas)
        RunConfig.for_task(task, **demo_settings(task))


def test_the_generator_width_rule_is_the_networks_own():
    """--gen-width takes exactly the widths whose generator runs: below its channel attention's reduction
    (4), a generator builds and then fails in its first forward pass (the run folder was left behind)."""
    import argparse
    from common.training.config import generator_width
    from common.networks import Generator

    for width in range(1, 9):
        try:
            generator_width(str(width))
            accepted = True
        except argparse.ArgumentTypeError:
            accepted = False
        try:
            with torch.no_grad():
                Generator(width=width, increment=1)(torch.rand(1, 3, 8, 8))
            runs = True
        except (ValueError, RuntimeError):  # refused when built, or failing in the forward pass
            runs = False
        assert accepted == runs == (width >= 4), width
