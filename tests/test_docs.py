"""The docs stay true: their python blocks run, the compatibility page is current, mkdocs builds."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
PAGES = sorted(p for p in DOCS.glob("*.md") if BLOCK.search(p.read_text()))


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_code_blocks_run(page):
    pytest.importorskip("spikingjelly")
    if "snntorch" in page.read_text():
        pytest.importorskip("snntorch")
    for i, code in enumerate(BLOCK.findall(page.read_text())):
        exec(compile(code, f"{page.name}[block {i}]", "exec"), {"__name__": "__docs__"})


def test_compatibility_page_is_current():
    pytest.importorskip("spikingjelly")
    pytest.importorskip("snntorch")
    # a fresh interpreter: other tests (the examples) register classes of their own
    code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('g', sys.argv[1]); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
            "sys.stdout.write(m.render())")
    rendered = subprocess.run([sys.executable, "-c", code, str(ROOT / "scripts" / "gen_compatibility.py")],
                              check=True, capture_output=True, text=True).stdout
    assert (DOCS / "compatibility.md").read_text() == rendered, (
        "docs/compatibility.md is stale: run python scripts/gen_compatibility.py")


def test_spikingjelly_nir_refuses_soft_reset():
    """deployment.md says SpikingJelly's NIR exporter cannot carry a soft-reset (SAF) model."""
    pytest.importorskip("nir")
    torch = pytest.importorskip("torch")
    from spikingjelly.activation_based import layer, neuron
    from spikingjelly.activation_based.nir_exchange.to_nir import export_to_nir

    net = torch.nn.Sequential(layer.Linear(4, 3), neuron.LIFNode(tau=2.0, v_reset=None))
    with pytest.raises(NotImplementedError, match="soft reset"):
        export_to_nir(net, torch.rand(1, 4))


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    if shutil.which("mkdocs") is None and importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings")
    # as a user runs it: no -q (which hides the warnings that --strict turns into errors)
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                        "-d", str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "WARNING -" not in r.stdout + r.stderr, r.stdout + r.stderr
