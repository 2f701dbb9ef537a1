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
