"""Code the test modules share: references, tiny models and runs, compilation counting.

* :mod:`tests.helpers.references`: the float64 NumPy references of the numeric kernels;
* :mod:`tests.helpers.models`: tiny model settings and variables drawn from shapes alone;
* :mod:`tests.helpers.training`: tiny training configs, generated input pipelines, and
  Python run in a fresh process;
* :mod:`tests.helpers.compile_counting`: XLA compilations counted around a call;
* :mod:`tests.helpers.compiler`: the XLA settings the tests compile with;
* :mod:`tests.helpers.notebooks`: the notebooks and how the tests execute them;
* :mod:`tests.helpers.fake_trees`: directory trees shaped like the real data sets;
* :mod:`tests.helpers.outputs`: the experiments' output files read back.

Fixtures shared by several test modules live in ``tests/conftest.py``.
"""
