"""The docs stay true: their python blocks run, the compatibility page is current, mkdocs builds."""

from __future__ import annotations

import importlib.util
import json
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
    script = str(ROOT / "scripts" / "gen_compatibility.py")
    rendered = subprocess.run([sys.executable, "-c", code, script],
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
    # the API page renders every public name; no build script is copied into the site
    import saf_plugin
    import saf_plugin.core
    import saf_plugin.kernels
    import saf_plugin.training

    api = (tmp_path / "site" / "api" / "index.html").read_text()
    anchors = set(re.findall(r'id="(saf_plugin[\w.]*)"', api))
    for module in (saf_plugin, saf_plugin.training, saf_plugin.core, saf_plugin.kernels):
        for name in module.__all__:
            if callable(getattr(module, name)):
                assert any(a.rsplit(".", 1)[-1] == name for a in anchors), (module.__name__, name)
    assert ":class:" not in api and ":func:" not in api  # roles render as code
    assert not list((tmp_path / "site").rglob("*.py"))


RESULTS = ROOT / "benchmarks" / "results"
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)]+\.png)\)")
HEADING = re.compile(r"^#+ ", re.M)


def _result_machines() -> dict[str, str]:
    """Result file name -> the machine it was measured on, as pages name it."""
    from saf_plugin.bench.report import machine_label

    out = {}
    for f in RESULTS.rglob("*.json"):
        data = json.loads(f.read_text())
        if isinstance(data, dict) and "machine" in data:
            out[f.name] = machine_label(data["machine"])
    return out


def _sections(text: str, level: str) -> list[tuple[str, str]]:
    """(heading line, body) for every heading of ``level`` ("#" for any), with the text
    before the first one as ("", ...)."""
    pattern = re.compile(r"^#+ .*$" if level == "#" else rf"^{level} .*$", re.M)
    starts = [m.start() for m in pattern.finditer(text)]
    bounds = [0, *starts, len(text)]
    return [(text[a:b].split("\n", 1)[0] if a in starts else "", text[a:b])
            for a, b in zip(bounds, bounds[1:]) if text[a:b]]


PAGES_WITH_FIGURES = [p for p in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
                      if IMAGE.search(p.read_text())]


@pytest.mark.parametrize("page", PAGES_WITH_FIGURES, ids=[p.name for p in PAGES_WITH_FIGURES])
def test_every_figure_names_its_one_machine(page):
    """A figure's PNG says which machine its numbers come from (saf_plugin.bench.report.figure
    writes it, and the result files it names agree); the text around the figure, from the
    heading before it to the next, names that machine and no other."""
    from PIL import Image

    machines = _result_machines()
    labels = set(machines.values())
    for _, section in _sections(page.read_text(), "#"):
        for ref in IMAGE.findall(section):
            meta = Image.open(page.parent / ref).text
            label = meta.get("Machine")
            assert label in labels, (page.name, ref, meta)
            for source in meta["Source"].split():
                assert machines[source] == label, (ref, source, machines[source])
            words = " ".join(section.split())
            assert label in words, f"{page.name}: {ref} is from the {label}; its section never says so"
            others = [m for m in labels if m != label and m in words]
            assert not others, f"{page.name}: the section of {ref} ({label}) also names {others}"


@pytest.mark.parametrize("name", ["benchmarks.md", "benchmark-log.md"])
def test_every_benchmark_table_and_figure_sits_under_one_machine(name):
    """On the benchmark pages every table and figure is under a '## ' heading that names one
    machine, and every result file named in that section was measured on it."""
    machines = _result_machines()
    labels = set(machines.values())
    for heading, body in _sections((DOCS / name).read_text(), "##"):
        has_result = IMAGE.search(body) or re.search(r"^\|", body, re.M)
        if not has_result:
            continue
        named = [m for m in labels if m in heading]
        assert len(named) == 1, f"{name}: {heading or 'the top'} holds results; it names {named}"
        for ref in re.findall(r"([\w./-]+)\.json", body):
            file = ref.rsplit("/", 1)[-1] + ".json"
            if file in machines:
                assert machines[file] == named[0], f"{name}: {heading} cites {file} ({machines[file]})"


def test_readme_commands_need_no_activated_environment():
    """The README's two commands name the environment's programs (a new shell runs command 2
    as written), and .ci/run runs exactly that block."""
    block = re.search(r"^```bash\n(.*?)^```", (ROOT / "README.md").read_text(), re.S | re.M)
    install, tests = block.group(1).strip().splitlines()
    assert "activate" not in install + tests and tests.startswith(".venv/bin/python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "README.md" in ci and 'bash -c "$command"' in ci
