"""The documentation stays true: the spec page is what the schema generates, every example
spec in README.md and docs/ validates, every command block marked `<!-- runnable -->` runs
on a CPU, and every link of the README (the front door) reaches a page and a heading that
exist. `mkdocs build --strict` (scripts/docs.sh, in .ci/run) checks the links inside docs/."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import cli_env
from typer.testing import CliRunner

from imgfit_batch.cli import app

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = "<!-- runnable -->"
NOT_A_SPEC = "<!-- not a spec -->"
# What the runnable blocks' training is shortened to: the commands run as written, each
# `run` with these overrides appended (the docs' jobs take minutes; the test, seconds).
QUICK = ["--set", "train.epochs=1"]


def _blocks(page: Path, language: str) -> list[tuple[str, str, str]]:
    """(id, the line before the fence, the block's text) of every ```language block of `page`,
    indented ones (inside a list item) included."""
    found = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        indent, lang, start = fence.group(1), fence.group(2), i
        body = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        before = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        if lang == language:
            found.append((f"{page.relative_to(ROOT)}:{start + 1}", before, "\n".join(body) + "\n"))
        i += 1
    return found


def _specs() -> list[tuple[str, str]]:
    return [(where, text) for page in PAGES for where, before, text in _blocks(page, "yaml") if before != NOT_A_SPEC]


def _runnable() -> list[tuple[str, str]]:
    return [(where, text) for page in PAGES for where, before, text in _blocks(page, "bash") if before == RUNNABLE]


def _generator():
    spec = importlib.util.spec_from_file_location("spec_reference", ROOT / "scripts" / "spec_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_spec_page_is_what_the_schema_generates():
    page = (ROOT / "docs" / "spec.md").read_text()
    assert page == _generator().render(), "docs/spec.md is stale: run python scripts/spec_reference.py"


def test_the_spec_page_lists_every_field_of_every_section_and_kind():
    from imgfit_batch.spec import JobSpec

    page = (ROOT / "docs" / "spec.md").read_text()
    schema = JobSpec.model_json_schema()
    documented = set(re.findall(r"^\| `([\w.]+)` \|", page, re.M))
    for name, prop in schema["properties"].items():
        ref = prop.get("$ref") or None
        if ref:
            section = schema["$defs"][ref.rsplit("/", 1)[1]]
            assert {f"{name}.{f}" for f in section["properties"]} <= documented, name
        elif name == "model":
            for kind in prop["oneOf"]:
                fields = schema["$defs"][kind["$ref"].rsplit("/", 1)[1]]["properties"]
                assert {f"model.{f}" for f in fields} <= documented
        else:
            assert name in documented


@pytest.mark.parametrize("where,text", _specs(), ids=[w for w, _ in _specs()])
def test_every_example_spec_in_the_docs_validates(where, text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.yaml").write_text(text)
    result = CliRunner().invoke(app, ["validate", "spec.yaml"])
    assert result.exit_code == 0, f"{where}: {result.output}"


def test_the_docs_hold_example_specs_and_runnable_blocks():
    """The two tests above parametrize over what they find: finding nothing would pass them."""
    assert len(_specs()) >= 5
    assert {where.split(":")[0] for where, _ in _runnable()} >= {"docs/getting-started.md", "docs/studies.md"}


@pytest.fixture
def quick_cli(tmp_path):
    """A folder holding the repository's examples/, and an `imgfit-batch` first on PATH that is
    the real CLI with QUICK appended to `run`."""
    work = tmp_path / "work"
    shutil.copytree(ROOT / "examples", work / "examples")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "imgfit-batch"
    quick = " ".join(QUICK)
    shim.write_text(
        f'#!/bin/sh\nif [ "$1" = run ]; then exec "{sys.executable}" -m imgfit_batch "$@" {quick}; fi\n'
        f'exec "{sys.executable}" -m imgfit_batch "$@"\n'
    )
    shim.chmod(0o755)
    env = cli_env()
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return work, env


@pytest.mark.slow
@pytest.mark.parametrize("where,text", _runnable(), ids=[w for w, _ in _runnable()])
def test_every_runnable_block_runs_on_a_cpu(where, text, quick_cli):
    work, env = quick_cli
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", text], cwd=work, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"{where} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"


def _slug(heading: str) -> str:
    """A heading's anchor, as both GitHub and MkDocs make it for the plain headings we use."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"\s+", "-", re.sub(r"[^\w\s-]", "", text))


def test_every_link_of_the_readme_reaches_a_page_and_heading_that_exist():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    local = [link for link in links if not re.match(r"\w+://", link)]
    assert len(local) >= 10
    for link in local:
        path, _, anchor = link.partition("#")
        target = ROOT / path
        assert target.is_file(), f"README links to {path}, which does not exist"
        if anchor:
            prose = re.sub(r"```.*?```", "", target.read_text(), flags=re.S)  # not a `# comment` in a block
            headings = re.findall(r"^#+ (.+)$", prose, re.M)
            assert anchor in {_slug(h) for h in headings}, f"README links to {link}: no such heading"


def test_the_readme_stays_a_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_the_readme_spec_is_the_quickstart_it_says_it_is():
    (_, _, text), *_ = _blocks(ROOT / "README.md", "yaml")
    assert yaml.safe_load(text) == yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
