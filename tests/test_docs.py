"""The documentation stays true: every command line in README.md and docs/*.md names a script that
exists and flags that its parser accepts (parsed only, never run), and every page is linked."""
import argparse
import importlib.util
import re
import shlex
from unittest import mock

import pytest

from common.cli import test as test_script
from common.cli.train import parse_train_args
from common.tasks import TASKS
from helpers import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def command_lines(text: str) -> list[str]:
    """``python ...`` and ``torchrun ...`` commands in code blocks and inline code, continuation
    lines joined and chains (``&&``, ``|``) split."""
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    lines = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    lines += re.findall(r"`((?:python|torchrun) [^`]+)`", text)
    commands = []
    for line in lines:
        line = line.split("  #")[0].split(" # ")[0].strip()
        for part in re.split(r"&&|\|\||\|(?!\|)", line):
            part = part.strip()
            if part.startswith(".venv/bin/python "):  # the README's install-and-run lines
                part = part[len(".venv/bin/"):]
            if part.startswith(("python ", "torchrun ")):
                commands.append(part)
    return commands


class Parsed(Exception):
    pass


def parse_only(script: str, argv: list[str]) -> None:
    """Parse ``argv`` with the script's own parser; a refused flag raises SystemExit."""
    path = ROOT / script
    assert path.is_file(), f"{script} does not exist"
    task, name = path.parent.name, path.name
    if task in TASKS and name == "train.py":
        parse_train_args(TASKS[task], argv)
        return
    if task in TASKS and name == "test.py":
        test_script.test_parser(TASKS[task]).parse_args(argv)
        return
    spec = importlib.util.spec_from_file_location(f"doc_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise Parsed

    with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_then_stop):
        try:
            module.main(argv)
        except Parsed:
            return
    raise AssertionError(f"{script}: main() never parsed its arguments")


def script_and_args(command: str) -> tuple[str, list[str]]:
    words = shlex.split(command)
    if words[0] == "python":
        if words[1] == "-m":  # python -m pytest, python -m pip: not our scripts
            return "", []
        return words[1], words[2:]
    at = next(i for i, w in enumerate(words) if w.endswith(".py"))  # torchrun [options] SCRIPT args
    return words[at], words[at + 1:]


ALL = [(page.name, command) for page in PAGES for command in command_lines(page.read_text())]


def test_the_pages_have_commands():
    assert len(ALL) > 30 and {page for page, _ in ALL} >= {"README.md", "DATA.md", "TRAINING.md", "TESTING.md"}


@pytest.mark.parametrize("page, command", ALL, ids=[f"{p}:{c[:60]}" for p, c in ALL])
def test_every_documented_command_parses(page, command, capsys):
    script, argv = script_and_args(command)
    if not script:
        return
    try:
        parse_only(script, argv)
    except SystemExit as exc:
        if exc.code == 0:  # --help
            return
        pytest.fail(f"{page}: `{command}` is refused by {script}: {capsys.readouterr().err.strip()} ({exc})")


def test_every_doc_page_is_linked_from_the_readme_and_links_resolve():
    readme = (ROOT / "README.md").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        assert f"](docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), f"{page.name} links {target}, which does not exist"


def test_readme_is_a_front_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 150


def test_ci_runs_exactly_the_readmes_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    test_command = next(b.strip() for b in blocks if "pytest" in b)
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1] == test_command


def test_what_the_code_uses_where_installed_is_in_the_requirements():
    """Training writes TensorBoard logs only where the package is found (importlib's find_spec), and
    docs/TRAINING.md documents them: tensorboard was in no requirements, so the logs never appeared."""
    looked_for = {name for path in (ROOT / "common").rglob("*.py")
                  for name in re.findall(r"find_spec\(\"([\w.]+)\"\)", path.read_text())}
    required = {re.split(r"[<>=~!\s#\[]", line.strip(), maxsplit=1)[0].lower()
                for line in (ROOT / "requirements.txt").read_text().splitlines() if line.strip() and not line.startswith("#")}
    assert looked_for and looked_for <= required, looked_for - required

