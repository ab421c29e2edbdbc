"""The docs are true about what exists: every repository path named in README.md, docs/*.md,
bench/RESULTS.md and the requirements files exists; every documented command names a script or module
that exists, and every documented ``python federated_main.py`` command passes the command line's
checks (flags, names, config keys, config files) as written."""
from __future__ import annotations

import glob
import importlib.util
import os
import re
import shlex

import pytest

from federated.cli import check_args, parse_args
from tests.fedtv_testing import REPO

DOCS = sorted([os.path.join(REPO, "README.md"), os.path.join(REPO, "bench", "RESULTS.md"),
               *glob.glob(os.path.join(REPO, "docs", "*.md")), *glob.glob(os.path.join(REPO, "requirements*.txt"))])
TOP = sorted(n for n in os.listdir(REPO) if not n.startswith("."))
PLACEHOLDER = re.compile(r"[<>*{}$]|\.\.\.|\bPATH\b|SERVER_IP")


def _rel(doc: str) -> str:
    return os.path.relpath(doc, REPO)


def doc_paths(text: str) -> set[str]:
    """Repository paths named in code spans, code blocks and links (placeholders and run outputs excluded)."""
    spans = re.findall(r"`([^`\n]+)`", text) + re.findall(r"\]\(([^)\s]+)\)", text)
    spans += re.findall(r"^[ \t]*#.*$", text, flags=re.M)  # comments of requirements files / shell blocks
    out = set()
    for span in spans:
        for token in re.split(r"[\s,;=\"'()\[\]]+", span):
            token = token.strip(".:`")
            if not token or PLACEHOLDER.search(token) or "://" in token:
                continue
            head = token.split("/")[0]
            if head in TOP and (token == head or "/" in token):
                out.add(token)
    return out


def doc_commands(text: str) -> list[str]:
    """Shell commands of fenced blocks (continuations joined) and inline ``python ...`` / ``bash ...`` spans."""
    commands = []
    for block in re.findall(r"```(?:bash|sh|shell)?\n(.*?)```", text, flags=re.S):
        commands += [ln.strip() for ln in block.replace("\\\n", " ").splitlines()]
    commands += re.findall(r"`((?:python|bash) [^`]+)`", text)
    return [c for c in commands if re.match(r"(\S+=\S+ )*(python|bash) ", c)]


def _argv(command: str) -> list[str]:
    words = shlex.split(command, comments=True)
    while words and re.fullmatch(r"\w+=.*", words[0]):  # VAR=value prefixes
        words.pop(0)
    return words


CASES = [(doc, p) for doc in DOCS for p in sorted(doc_paths(open(doc).read()))]
COMMANDS = [(doc, c) for doc in DOCS for c in doc_commands(open(doc).read())]


def test_the_docs_name_paths_and_commands():
    assert len(CASES) > 30 and len(COMMANDS) > 15  # the extraction finds what the docs hold


@pytest.mark.parametrize("doc,path", CASES, ids=[f"{_rel(d)}:{p}" for d, p in CASES])
def test_every_named_path_exists(doc, path):
    module, _, attribute = path.rpartition(".")
    source = os.path.join(REPO, module + ".py")
    found = os.path.exists(os.path.join(REPO, path)) or (  # or ``federated/batched.batching_support``
        attribute.isidentifier() and os.path.isfile(source) and attribute in open(source).read())
    assert found, f"{_rel(doc)} names {path}, which does not exist"


@pytest.mark.parametrize("doc,command", COMMANDS, ids=[f"{_rel(d)}:{c[:60]}" for d, c in COMMANDS])
def test_every_documented_command_exists(doc, command):
    argv = _argv(command)
    if argv[0] == "bash" or (argv[0] == "python" and argv[1] != "-m"):
        script = argv[1]
        assert os.path.isfile(os.path.join(REPO, script)), f"{_rel(doc)}: {script} does not exist ({command})"
    elif argv[0] == "python" and argv[1] == "-m" and argv[2] not in ("pip", "pytest"):
        assert importlib.util.find_spec(argv[2]) is not None, f"{_rel(doc)}: no module {argv[2]} ({command})"
    if argv[:2] == ["python", "federated_main.py"] and not PLACEHOLDER.search(command) and "--help" not in argv:
        cwd = os.getcwd()
        os.chdir(REPO)  # the docs' relative config paths are relative to the repository
        try:
            check_args(parse_args(argv[2:]))  # raises ConfigError for a stale flag, name, key or file
        finally:
            os.chdir(cwd)


def test_no_tracked_file_names_a_path_users_cannot_open():
    """Code, docs and data name only what a clone has: nothing points at the developers' machine
    (``/work/...``) or at a folder beside the repository (``../shared``)."""
    import subprocess

    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    pattern = re.compile(r"/work/|\.\./shared\b|shared/seeds")
    offenders = []
    for name in files:
        if name == "tests/test_docs.py" or name.endswith((".safetensors", ".png", ".pt", ".gz")):
            continue
        try:
            text = open(os.path.join(REPO, name), encoding="utf-8").read()
        except (UnicodeDecodeError, IsADirectoryError):
            continue
        offenders += [f"{name}: {m.group(0)}" for m in pattern.finditer(text)]
    assert not offenders, offenders
