"""What the project says it is: its version (one place, recorded in every checkpoint and run.json), its
licence, its citation entry and its changelog."""
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import common
from common.system.errors import InputError
from common.tasks import TASKS
from common.training.checkpoint import read_checkpoint
from common.training.config import Resolved, RunConfig, run_record
from helpers import ROOT, generator_checkpoint

PAPER = "Sparsity-Aware Optimal Transport for Unsupervised Restoration Learning"


def test_the_version_is_one_release_number():
    assert re.fullmatch(r"\d+\.\d+\.\d+", common.__version__)


def test_a_fresh_checkpoint_and_run_json_record_the_version(tmp_path):
    ckpt = read_checkpoint(generator_checkpoint(tmp_path / "g.pt", task="sr"))
    assert ckpt["code_version"] == common.__version__
    record = run_record(RunConfig.for_task(TASKS["sr"]), Resolved(seed=1, device="cpu", precision="fp32",
                                                                  loader_workers=0))
    assert record["code_version"] == common.__version__


def test_a_checkpoint_without_the_version_loads_and_one_with_a_wrong_kind_of_version_is_refused(tmp_path):
    """Files written before the version was recorded have none; where there is one, it is text."""
    path = generator_checkpoint(tmp_path / "g.pt")
    state = torch.load(path, weights_only=True)
    del state["code_version"]
    torch.save(state, tmp_path / "older.pt")
    assert "code_version" not in read_checkpoint(tmp_path / "older.pt")
    torch.save({**state, "code_version": 1.0}, tmp_path / "edited.pt")
    with pytest.raises(InputError, match=r"edited.pt: the checkpoint's 'code_version' is 1.0, not text"):
        read_checkpoint(tmp_path / "edited.pt")


def cff_field(text: str, key: str, indent: str = "") -> str:
    """The value of ``key`` at ``indent`` in a CITATION.cff, unquoted (the file's own subset of YAML)."""
    match = re.search(rf"^{indent}{key}: *(.+)$", text, re.M)
    assert match, f"CITATION.cff has no {key!r}"
    return match.group(1).strip().strip('"')


def test_the_citation_entry_names_the_paper_and_this_version():
    text = (ROOT / "CITATION.cff").read_text()
    assert cff_field(text, "cff-version") == "1.2.0"
    assert cff_field(text, "version") == common.__version__
    assert cff_field(text, "license") == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")
    cited = text.split("\npreferred-citation:\n", 1)[1]
    assert cff_field(cited, "title", "  ") == PAPER
    assert f'"{PAPER}"' in (ROOT / "README.md").read_text()  # the paper the README says this implements
    names = re.findall(r"- family-names: (\S+)\n +given-names: (\S+)", cited)
    assert names == [("Wen", "Fei"), ("Wang", "Wei"), ("Yu", "Wenxian")]  # as README.md names them
    assert "Fei Wen, Wei Wang, Wenxian Yu" in (ROOT / "README.md").read_text()


def test_the_citation_entry_is_yaml_of_the_citation_file_format():
    yaml = pytest.importorskip("yaml")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert {"cff-version", "message", "title", "authors", "version", "preferred-citation"} <= set(cff)
    assert cff["version"] == common.__version__ and cff["preferred-citation"]["title"] == PAPER
    assert all("family-names" in a and "given-names" in a for a in cff["preferred-citation"]["authors"])


def test_the_changelog_begins_with_this_version():
    releases = re.findall(r"^## \[([^\]]+)\]", (ROOT / "CHANGELOG.md").read_text(), re.M)
    assert releases[:2] == ["Unreleased", common.__version__]


SOURCES = ("pyproject.toml", "README.md", "LICENSE", "common")  # what a build of the package reads

OUTSIDE = """
import importlib.metadata, sys
from pathlib import Path
import numpy as np
import common
from common.evaluation.report import _templates

assert Path(common.__file__).parent == Path(sys.argv[1]) / "common", common.__file__  # the installed copy
assert importlib.metadata.version("sot-restoration") == common.__version__
_templates().get_template("results_report.html")  # the report's templates are installed with it
lr = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
restored = common.restore_image(sys.argv[2], lr, device="cpu")
again = common.Restorer(sys.argv[2], device="cpu", tile=32)(lr)
np.save("restored.npy", restored)
print(restored.shape, restored.dtype, int(np.abs(again.astype(int) - restored).max()))
"""


def requirement_lines(text: str) -> list[str]:
    return [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]


def test_pyproject_holds_the_requirements_lower_bounds_exactly():
    """requirements.txt stays for the README's command; pyproject.toml's dependencies and its onnx and test
    extras are the same lines, and the version is common.__version__'s."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    declared = project["dependencies"] + extras["onnx"] + extras["test"]
    assert sorted(declared) == sorted(requirement_lines((ROOT / "requirements.txt").read_text()))
    assert all(">=" in r and "<" not in r for r in declared)  # lower bounds only
    assert project["dynamic"] == ["version"]
    dynamic = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["dynamic"]
    assert dynamic["version"] == {"attr": "common.__version__"}


@pytest.mark.slow
def test_the_installed_package_restores_an_image_from_outside_the_repository(tmp_path):
    """pip installs the package (a copy of the sources, so that the build writes nothing into the
    repository) into a folder of its own; from another folder, with only that folder on the path, a
    script imports it and restores an LR image with an SR checkpoint: 4x larger, as in the repository."""
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                          "--no-compile", "--no-index", "--target", str(site), str(source)], capture_output=True,
                         text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-3000:]
    checkpoint = generator_checkpoint(tmp_path / "g.pt", task="sr")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"PYTHONPATH": str(site)}
    run = subprocess.run([sys.executable, "-c", OUTSIDE, str(site), str(checkpoint)], cwd=elsewhere, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["(40,", "48,", "3)", "uint8", "0"]  # 4x larger; the tiles agree
    lr = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    assert np.array_equal(np.load(elsewhere / "restored.npy"), common.restore_image(checkpoint, lr, device="cpu"))
