"""The ``saf`` command line: check's table and exit codes, bench at a tiny size, one-line errors."""

import textwrap
import warnings

import pytest

warnings.filterwarnings("ignore", message="Triton not available")
pytest.importorskip("spikingjelly.activation_based")

from saf_plugin.cli import main  # noqa: E402

MODELS = textwrap.dedent('''
    from torch import nn
    from spikingjelly.activation_based import layer, neuron

    def good():
        return nn.Sequential(layer.Linear(4, 6), neuron.LIFNode(v_reset=None),
                             layer.Linear(6, 3))

    def hard_reset():
        return nn.Sequential(layer.Linear(4, 6), neuron.LIFNode(), layer.Linear(6, 3))

    def mixed_modes():
        return nn.Sequential(layer.Linear(4, 6), neuron.LIFNode(v_reset=None),
                             layer.Linear(6, 3), neuron.LIFNode(v_reset=None, step_mode="m"))

    def broken():
        raise RuntimeError("no weights file")

    not_a_model = 3
''')


@pytest.fixture
def models(tmp_path, monkeypatch):
    (tmp_path / "cli_models_mod.py").write_text(MODELS)
    (tmp_path / "cli_bad_import_mod.py").write_text("import no_such_package_xyz\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_check_exact_model(models, capsys):
    assert main(["check", "cli_models_mod:good"]) == 0
    out = capsys.readouterr().out
    assert "path" in out and "exact" in out and "1" in out


def test_check_not_exact_exits_nonzero(models, capsys):
    assert main(["check", "cli_models_mod:mixed_modes"]) == 1
    out = capsys.readouterr().out
    assert "unsupported" in out and "step modes" in out and "set_step_mode" in out


def test_check_hard_reset_is_exact_per_step_and_says_saf_f_refuses_it(models, capsys):
    assert main(["check", "cli_models_mod:hard_reset"]) == 0
    out = capsys.readouterr().out
    assert "per step: hard reset" in out and "SAF-F refuses 1" in out and "soft_reset" in out


@pytest.mark.parametrize("spec,msg", [
    ("cli_models_mod", "MODULE:CALLABLE"),
    ("cli_no_such_module_xyz:f", "cannot import"),
    ("cli_bad_import_mod:f", "no_such_package_xyz"),
    ("cli_models_mod:missing", "no attribute"),
    ("cli_models_mod:broken", "no weights file"),
    ("cli_models_mod:not_a_model", "not callable"),
])
def test_bad_models_give_one_line(models, capsys, spec, msg):
    assert main(["check", spec]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("saf: error:") and msg in err and "\n" not in err


@pytest.mark.parametrize("argv", [["--help"], ["check", "--help"], ["bench", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "usage: saf" in out and "exit status:" in out


@pytest.mark.parametrize("extra,msg", [
    (["--T", "4,x"], "--T"),
    (["--T", "0"], "positive"),
    (["--methods", "bptt,foo"], "unknown method"),
])
def test_bench_bad_arguments(models, capsys, extra, msg):
    assert main(["bench", "cli_models_mod:good", "--input-shape", "4", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and "\n" not in err


def test_check_with_an_input_prints_every_operations_route(models, capsys):
    assert main(["check", "cli_models_mod:good", "--input-shape", "4"]) == 0
    out = capsys.readouterr().out
    assert "linear" in out and "once per step on accumulations" in out
    assert "one call with input [2, 4]: 2 operations, 0 per step" in out


def test_check_with_an_input_of_a_multi_step_model_has_a_time_dimension(models, capsys):
    (models / "cli_multi_mod.py").write_text(textwrap.dedent('''
        from torch import nn
        from spikingjelly.activation_based import functional, layer, neuron

        def net():
            n = nn.Sequential(layer.Linear(4, 6), neuron.LIFNode(v_reset=None),
                              layer.MaxPool1d(2), layer.Linear(3, 2))
            functional.set_step_mode(n, "m")
            return n
    '''))
    assert main(["check", "cli_multi_mod:net", "--input-shape", "1,4", "--T", "3"]) == 0
    out = capsys.readouterr().out
    assert "input [3, 2, 1, 4]" in out and "1 per step on the real values" in out
    assert main(["check", "cli_multi_mod:net", "--input-shape", "4"]) == 2  # a wrong shape
    err = capsys.readouterr().err.strip()
    assert err.startswith("saf: error: the model failed on an input [4, 2, 4]") and "\n" not in err


def test_bench_tiny(models, capsys):
    out_dir = models / "res"
    code = main(["bench", "cli_models_mod:good", "--input-shape", "4", "--T", "2",
                 "--methods", "bptt,saf_e_online,relu", "--batch", "2",
                 "--repeats", "1", "--warmup", "0", "--no-memory", "--out", str(out_dir),
                 "--plot", str(models / "plots"), "--name", "tiny"])
    captured = capsys.readouterr()
    assert code == 0, captured.out
    assert "saf_e_online" in captured.out and "bptt" in captured.out
    assert (out_dir / "tiny.json").exists() and (out_dir / "tiny.csv").exists()
    assert (models / "plots" / "tiny.png").exists()
    # warm-up 0 and a single T make misleading numbers: said before the run
    assert "warning: --warmup 0" in captured.err and "warning: a single T (2)" in captured.err


def test_bench_skip_reasons_are_sentences(models, capsys):
    (models / "cli_if_mod.py").write_text(textwrap.dedent('''
        from torch import nn
        from spikingjelly.activation_based import layer, neuron

        def net():
            return nn.Sequential(layer.Linear(4, 6), neuron.IFNode(v_reset=None),
                                 layer.Linear(6, 3))
    '''))
    code = main(["bench", "cli_if_mod:net", "--input-shape", "4", "--T", "2,3",
                 "--methods", "ottt,sltt,saf_e_online", "--batch", "2", "--repeats", "1",
                 "--no-memory", "--out", str(models / "res")])
    out = capsys.readouterr().out
    assert code == 1
    assert "ottt: skipped: SpikingJelly's OTTTLIFNode replaces LIF neurons only (1: IFNode)" in out
    assert "sltt: skipped: SpikingJelly's SLTTLIFNode" in out and "Error" not in out


def test_bench_help_lists_every_method(capsys):
    from saf_plugin.bench.methods import METHODS

    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    out = capsys.readouterr().out
    for m in METHODS:
        assert f"\n  {m} " in out, m
    for words in ("OTTT", "SAF-E online", "SAF-E multi-step", "SAF-F", "--fix", "snnTorch"):
        assert words in out, words


FIXABLE = textwrap.dedent('''
    from torch import nn
    from spikingjelly.activation_based import layer, neuron

    def hard_reset():
        return nn.Sequential(layer.Linear(4, 6), neuron.LIFNode(), layer.Linear(6, 3))
''')


def test_bench_fix_makes_a_fixable_model_run(models, capsys):
    (models / "cli_fixable_mod.py").write_text(FIXABLE)
    argv = ["bench", "cli_fixable_mod:hard_reset", "--input-shape", "4", "--T", "2",
            "--methods", "bptt,saf_e_online,saf_f", "--batch", "2", "--repeats", "1",
            "--warmup", "0", "--no-memory", "--out", str(models / "res")]
    assert main(argv) == 1  # SAF-F refuses hard reset: the method is skipped, says how to fix
    assert "--fix" in capsys.readouterr().out
    assert main(argv + ["--fix"]) == 0
    captured = capsys.readouterr()
    assert "saf_f" in captured.out and "skipped" not in captured.out
    assert "fix: " in captured.err and "[1/3]" in captured.err  # what fix changed; progress


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
DOCUMENTED = sorted({line.strip() for page in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
                     for line in page.read_text().splitlines()
                     if line.strip().startswith(("saf check ", "saf bench "))})


@pytest.mark.parametrize("command", DOCUMENTED)
def test_documented_commands_run(command, tmp_path, monkeypatch, capsys):
    """The factories the docs name exist and the commands work as written (a bench shortened
    to T = 2 and 3, one repeat, without the memory processes)."""
    import shlex

    monkeypatch.chdir(tmp_path)
    argv = shlex.split(command)[1:]
    if argv[0] == "bench":
        argv += ["--T", "2,3", "--repeats", "1", "--warmup", "0", "--no-memory", "--quiet"]
    assert main(argv) == 0, capsys.readouterr()
