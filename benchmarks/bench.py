"""The SAF benchmark against BPTT, OTTT, SLTT and a ReLU bound: see saf_plugin/bench/.

    python benchmarks/bench.py --net vgg --width-div 1 --batch 16 --T 6,16 --repeats 2
    python benchmarks/bench.py --help

Results go to benchmarks/results/ and plots to docs/benchmarks/ of this repository.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from saf_plugin.bench.main import main as _main  # noqa: E402

DEFAULTS = {"results_dir": ROOT / "benchmarks" / "results", "plot_dir": ROOT / "docs" / "benchmarks"}


def main(argv=None):
    return _main(argv, defaults=DEFAULTS)


if __name__ == "__main__":
    main()
