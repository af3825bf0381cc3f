"""Every Python block of README.md and docs/*.md runs as written (Sybil), so the documentation cannot drift.

How a document's blocks run:

- The ```` ```python ```` blocks of one document run in order, in one namespace, in a fresh temporary directory:
  a block may use what an earlier block of the same page defined.
- The small files a page's snippets read are made by ``<!-- invisible-code-block: python ... -->`` blocks in the
  page itself (Sybil runs them; the rendered page does not show them), next to the snippets that need them.
- A block that cannot run here (a cluster, a dependency we do not install) is preceded by
  ``<!-- skip: next "why, and which test runs the same code" -->``. A skip without a reason is an error, and every
  skip is counted and printed: nothing is skipped silently or in bulk.
- ``s3://`` snippets of docs/object-storage.md read a moto server on 127.0.0.1 that this test starts, with
  objects ``bucket/train/x_0.npy``, ``x_1.npy`` and ``y.npy``, through the standard ``AWS_*`` environment.
- Shell blocks (```` ```bash ````) and program output (```` ```text ````) are not run; every fenced block must
  name its language, so a Python block cannot hide as an unlabeled one.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import SkipTest

import numpy as np
import pytest
from sybil import Sybil
from sybil.evaluators.skip import Skipper
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser

from servers import MotoS3, environment

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
LANGUAGES = {"python", "bash", "text"}
SYBIL = Sybil(parsers=[PythonCodeBlockParser(), SkipParser()])


@pytest.fixture
def s3_bucket(moto_server: MotoS3) -> Iterator[None]:
    """The session's moto server (see conftest.py), the environment pointing at it, and the objects
    docs/object-storage.md reads (its bucket is named "bucket": no other module uses that name)."""
    with environment(moto_server.env):
        client = moto_server.client()
        client.create_bucket(Bucket="bucket")
        rows = np.arange(3000)
        parts = {"train/x_0.npy": rows[:2000, None] * np.ones(8), "train/x_1.npy": rows[2000:, None] * np.ones(8)}
        parts["train/y.npy"] = rows % 10
        for key, array in parts.items():
            buffer = io.BytesIO()
            np.save(buffer, array.astype(np.float32 if key.startswith("train/x") else np.int64))
            client.put_object(Bucket="bucket", Key=key, Body=buffer.getvalue())
        yield


@contextlib.contextmanager
def undone_at_exit() -> Iterator[None]:
    """Undo what a page's snippets change for the whole process: the environment, a torch process group."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if "torch" in sys.modules:
            import torch.distributed

            if torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.destroy_process_group()


def run_blocks(path: Path, name: str) -> tuple[int, list[str]]:
    """Run the Python blocks of one page in order: the number that ran, and each skip with its reason."""
    ran, skipped = 0, []
    with undone_at_exit():
        for example in SYBIL.parse(path).examples():
            where = f"{name}, line {example.line}"
            if isinstance(example.region.evaluator, Skipper):
                action, reason = example.parsed
                assert action != "next" or reason, f'{where}: a skip needs a reason: <!-- skip: next "why" -->'
            try:
                example.evaluate()
            except SkipTest as skip:
                skipped.append(f"{where}: {skip}")
                continue
            except BaseException as err:
                err.add_note(f"in the Python block at {where}")
                raise
            ran += not isinstance(example.region.evaluator, Skipper)
    return ran, skipped


# A page's snippets run in a child process of their own: they change process-wide state (a JAX backend that then
# warns on every later fork, TensorFlow's and torch's runtimes, the environment) that other tests must not inherit.
CHILD = """
import json, sys, tomllib, warnings
from pathlib import Path
root = Path(sys.argv[1])
sys.path[:0] = [str(root / "tests"), str(root)]
config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
for spec in config["filterwarnings"]:  # pytest's own filters, later ones first, as pytest applies them
    action, message, category, module = (spec.split(":") + ["", "", ""])[:4]
    warnings.filterwarnings(action, message, __builtins__.__dict__[category] if category else Warning, module)
from test_docs import run_blocks
ran, skipped = run_blocks(root / sys.argv[2], sys.argv[2])
print(json.dumps({"ran": ran, "skipped": skipped}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", DOCUMENTS)
def test_python_blocks_run(name: str, tmp_path: Path, request: Any) -> None:
    if name == "docs/object-storage.md":
        request.getfixturevalue("s3_bucket")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-c", CHILD, str(ROOT), name]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{name}: a Python block failed:\n{done.stderr[-6000:]}"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    ran, skipped = result["ran"], result["skipped"]
    print(f"{name}: {ran} blocks ran, {len(skipped)} skipped", *skipped, sep="\n  ")
    assert (ran + len(skipped) == 0) == (name in NO_PYTHON), f"{name}: {ran + len(skipped)} Python blocks; NO_PYTHON"


# Pages with no Python block of their own (checked, so a page that gains one is noticed): shell commands only, or
# the docs site's pages that include the README and CHANGELOG or are generated from docstrings (mkdocs.yml).
NO_PYTHON = {"docs/memory.md", "docs/index.md", "docs/api.md", "docs/changelog.md"}


@pytest.mark.parametrize("name", DOCUMENTS)
def test_every_fenced_block_names_its_language(name: str) -> None:
    text = (ROOT / name).read_text()
    fences = re.findall(r"^```(.*)$", text, flags=re.MULTILINE)
    assert len(fences) % 2 == 0, f"{name}: an unclosed code fence"
    openings = fences[::2]
    unknown = [lang for lang in openings if lang.strip() not in LANGUAGES]
    assert not unknown, f"{name}: code blocks must be one of {sorted(LANGUAGES)}, found {unknown}"


# -- the runner itself ---------------------------------------------------------------------------------------------
def page(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "page.md"
    path.write_text(text)
    return path


def test_blocks_share_a_namespace_and_skips_are_counted(tmp_path: Path) -> None:
    text = (
        "```python\nx = 1\n```\n\n"
        "<!-- invisible-code-block: python\ny = x + 1\n-->\n\n"
        '<!-- skip: next "needs a cluster" -->\n```python\nraise AssertionError("skipped blocks do not run")\n```\n\n'
        "```python\nassert (x, y) == (1, 2)\n```\n"
    )
    ran, skipped = run_blocks(page(tmp_path, text), "page.md")
    assert ran == 3
    assert skipped == ["page.md, line 10: needs a cluster"]


def test_a_failing_block_fails_naming_its_line(tmp_path: Path) -> None:
    text = '```python\nx = 1\n```\n\n```python\nraise ValueError("boom")\n```\n'
    with pytest.raises(ValueError, match="boom") as info:
        run_blocks(page(tmp_path, text), "page.md")
    assert "in the Python block at page.md, line 5" in info.value.__notes__


def test_a_skip_needs_a_reason(tmp_path: Path) -> None:
    text = "<!-- skip: next -->\n```python\nx = 1\n```\n"
    with pytest.raises(AssertionError, match="a skip needs a reason"):
        run_blocks(page(tmp_path, text), "page.md")
