"""What the project says it is: its version (one place, recorded in every checkpoint and run.json), its
licence, its citation entry and its changelog."""
import re

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
