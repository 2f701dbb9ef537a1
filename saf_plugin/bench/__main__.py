"""``python -m saf_plugin.bench``: the benchmark command line (also the memory worker)."""

from .main import main

main()
