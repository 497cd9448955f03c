"""The documentation site builds (``mkdocs build --strict``) and its runnable examples run.

A fenced ```bash block right after a ``<!-- runnable -->`` comment is executed: all runnable
blocks of one page run in order in one temporary directory (a page is a tutorial: later blocks
use what earlier ones made), with ``bash -euo pipefail`` and the venv's commands first on PATH.
``<!-- runnable expect="TEXT" -->`` also requires TEXT in the block's output. Only offline
commands belong there (no services, no network).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
MARKER = re.compile(r'^<!-- runnable(?: expect="(?P<expect>[^"]*)")? -->\s*$')
BLOCK_TIMEOUT_S = 300  # one block, on a loaded 2-core machine (it takes seconds on a quiet one)


@dataclass
class Block:
    page: str
    line: int
    code: str
    expect: str | None


def runnable_blocks(path: Path) -> list[Block]:
    """Every ```bash block right after a runnable marker, in page order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    for i, line in enumerate(lines):
        m = MARKER.match(line)
        if not m:
            continue
        fence = lines[i + 1] if i + 1 < len(lines) else ""
        assert fence.strip() == "```bash", (
            f"{path.name}:{i + 1}: a runnable marker must be followed by a ```bash fence"
        )
        end = lines.index("```", i + 2)
        blocks.append(Block(path.name, i + 2, "\n".join(lines[i + 2 : end]), m.group("expect")))
    return blocks


def pages_with_examples() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if runnable_blocks(p))


def test_docs_have_runnable_examples():
    blocks = [b for p in pages_with_examples() for b in runnable_blocks(p)]
    # the tour alone has five; fewer means the markers were lost, not that the docs got better
    assert len(blocks) >= 5, [f"{b.page}:{b.line}" for b in blocks]
    assert any("edge-convert export" in b.code for b in blocks)


@pytest.mark.slow
@pytest.mark.parametrize("page", pages_with_examples(), ids=lambda p: p.name)
def test_runnable_examples(page: Path, tmp_path: Path):
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("EDGE_CONVERT_KEY", None)
    env["HOME"] = str(tmp_path)  # nothing lands in the real home directory
    for block in runnable_blocks(page):
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.code],
            check=False,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=BLOCK_TIMEOUT_S,
        )
        out = proc.stdout + proc.stderr
        where = f"{block.page}:{block.line}"
        assert proc.returncode == 0, f"{where} exited {proc.returncode}:\n{out[-3000:]}"
        if block.expect is not None:
            assert block.expect in out, (
                f"{where}: {block.expect!r} not in the output:\n{out[-3000:]}"
            )


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path: Path):
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        check=False,
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    # the generated pages are there and hold what they are generated from
    from edge_runtime.errors import CODES

    errors = (site / "reference" / "errors" / "index.html").read_text(encoding="utf-8")
    assert all(f"<code>{code}</code>" in errors for code in CODES)
    cli = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    assert "edge-convert export" in cli and "cloud-hub rollout start" in cli
    api = (site / "reference" / "http-api" / "index.html").read_text(encoding="utf-8")
    assert "/v1/models/{ref}/predict" in api
    assert (site / "assets" / "architecture.svg").is_file()


def test_readme_setup_commands_are_what_ci_runs():
    """CI runs the README's test command: the two must stay the same line."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    test_cmd = 'python3 -m venv .venv && .venv/bin/pip install -q -e ".[dev]" && .venv/bin/python -m pytest -q'
    assert f"    {test_cmd}\n" in readme
    assert test_cmd in (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    demo_cmd = (
        'python3 -m venv .venv && .venv/bin/pip install -e ".[all]" && .venv/bin/cloud-hub demo'
    )
    assert f"    {demo_cmd}\n" in readme


def test_readme_is_a_front_page():
    """The README stays short; its tour blocks are the tested ones of docs/tour.md."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(readme) <= 200, f"README.md has {len(readme)} lines: move detail into docs/"
    tested = {b.code for b in runnable_blocks(DOCS / "tour.md")}
    copies = []
    for i, line in enumerate(readme):
        if line.strip() == "<!-- runnable: docs/tour.md -->":
            assert readme[i + 1] == "```bash", f"README.md:{i + 1}: marker without a ```bash block"
            end = readme.index("```", i + 2)
            copies.append("\n".join(readme[i + 2 : end]))
    assert copies, "the README's tour blocks lost their markers"
    for code in copies:
        assert code in tested, f"README block not in docs/tour.md's runnable blocks:\n{code}"
    assert "docs/assets/architecture.svg" in "\n".join(readme)
