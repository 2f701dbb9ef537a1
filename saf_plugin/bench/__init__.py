"""The benchmark application behind ``saf bench`` and ``benchmarks/bench.py``.

Not part of the library: ``import saf_plugin`` does not import it, and nothing here runs at
import time. Its modules:

- :mod:`.methods`: the method names and their one-line descriptions (no torch import);
- :mod:`.factory`: ``MODULE:CALLABLE`` model factories (``--model``, ``saf check``);
- :mod:`.models`: the benchmark networks (OTTT's VGG, an MLP, snnTorch tutorial 6's CSNN);
- :mod:`.variants`: a model set up for each method, and one training iteration of it;
- :mod:`.measure`: timing, memory, inputs and the machine description;
- :mod:`.run`: the interleaved timing loop and the fresh-process memory worker;
- :mod:`.report`: ratios, the text table, JSON/CSV files and plots;
- :mod:`.main`: the command line (``python -m saf_plugin.bench``).
"""
