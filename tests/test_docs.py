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
PAGES = ["getting-started", "rules", "presets", "ir"]


def _blocks(page: str) -> str:
    text = (DOCS / f"{page}.md").read_text()
    return "\n\n".join(re.findall(r"```python\n(.*?)```", text, re.S))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("docs")


@pytest.mark.parametrize("page", PAGES)
def test_the_examples_of_a_page_run(workdir, page):
    code = _blocks(page)
    assert code.strip(), f"docs/{page}.md has no Python examples"
    script = workdir / f"{page}.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], cwd=workdir, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, f"docs/{page}.md:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
