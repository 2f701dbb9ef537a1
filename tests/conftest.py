import os

import pytest
import torch


def pytest_configure(config):
    """Under pytest-xdist (``-n 2``) each worker computes with one thread, and so do the
    processes its tests start: two workers of two threads each on two cores run the suite
    several times slower than one worker (OpenMP threads wait for each other's cores)."""
    if hasattr(config, "workerinput"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """An environment without torchvision (the CPU-only install of the README) cannot import
    SpikingJelly's model zoo: the tests built on it skip, saying so, instead of failing."""
    try:
        return (yield)
    except ModuleNotFoundError as e:
        if e.name != "torchvision":
            raise
        pytest.skip("needs torchvision: SpikingJelly's model zoo imports it (not installed in "
                    "the CPU-only environment)")


@pytest.fixture
def float64():
    """Equivalences are proven in float64 (SpikingJelly's CPU path supports it): in float32 a
    single rounding flip at the threshold cascades downstream."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(old)


@pytest.fixture
def restore_registry():
    """What the test registers (``register_neuron``, ``register_linear``, ``register_per_step``,
    ``registry.register``, a library adapter) is unregistered afterwards: the registry is
    global, and a test's classes must not reach the tests that run after it in the process.

    The adapters of the libraries imported so far are loaded first; entries an adapter adds
    during the test (its library imported by the test) are kept, since an adapter module is
    imported once."""
    from saf_plugin import registry

    registry.load_adapters()
    before = (dict(registry._REGISTRY), list(registry._LIKE), dict(registry._LIBRARIES))
    yield registry
    after = (dict(registry._REGISTRY), list(registry._LIKE), dict(registry._LIBRARIES))

    def adapters(obj) -> bool:  # registered by an adapter module loaded during the test
        return getattr(obj, "__module__", "").startswith("saf_plugin.adapters.")

    registry._REGISTRY.clear()
    registry._REGISTRY.update(before[0])
    registry._REGISTRY.update({cls: spec for cls, spec in after[0].items() if cls not in before[0]
                               and cls.__module__.split(".")[0] in ("spikingjelly", "snntorch")})
    registry._LIKE[:] = before[1] + [r for r in after[1] if r not in before[1] and adapters(r)]
    registry._LIBRARIES.clear()
    registry._LIBRARIES.update(before[2])
    registry._LIBRARIES.update({k: v for k, v in after[2].items()
                                if k not in before[2] and adapters(type(v))})


def _spikingjelly_is_legacy() -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("spikingjelly").startswith("0.0.0.0.")
    except PackageNotFoundError:
        return False


# SpikingJelly 0.0.0.0.14 environments run tests/legacy only (scripts/ci_legacy.sh).
collect_ignore = ([p.name for p in __import__("pathlib").Path(__file__).parent.iterdir()
                   if p.name not in ("legacy", "conftest.py")]
                  if _spikingjelly_is_legacy() else [])


def pytest_terminal_summary(terminalreporter):
    """Why tests were skipped, one line per reason with its count (``-rs`` lists each test)."""
    reasons: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        reason = reason.removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    if reasons:
        terminalreporter.section("why tests were skipped")
        for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
            terminalreporter.write_line(f"{n:5d}  {reason}")
