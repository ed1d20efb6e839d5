"""The XLA settings the tests compile with, and the environment without them.

The tests compile hundreds of small programs and run each a few times: compilation is
most of their time. Two XLA settings make it cheaper, measured on `tests/test_pruning.py`
(2-core CPU; backend compile seconds of its 543 programs, from `jax.monitoring`):

- the LLVM back end at optimisation level 0 (the default run took 7.0 instead of 9.8
  minutes);
- XLA's older loop emitters instead of its fusion emitters
  (`--xla_cpu_use_fusion_emitters=false`): 10.8 instead of 20.0 s, 37 instead of 52 CPU-s.

The HLO is the same; the machine code differs, and float32 results can differ from the
default code's at the rounding level (reduction order). The root `conftest.py` sets them
(:func:`with_test_flags`) before JAX creates its backend; the processes the tests start
inherit them (tests that set XLA_FLAGS for a child append to it). A value given in
XLA_FLAGS wins: `XLA_FLAGS="--xla_backend_optimization_level=3
--xla_cpu_use_fusion_emitters=true" make test` tests the code that users' runs compile.
"""

from __future__ import annotations

TEST_XLA_FLAGS = {
    "--xla_backend_optimization_level": "0",
    "--xla_cpu_use_fusion_emitters": "false",
}


def with_test_flags(xla_flags: str) -> str:
    """``xla_flags`` with each of :data:`TEST_XLA_FLAGS` it does not set appended."""
    for flag, value in TEST_XLA_FLAGS.items():
        if flag not in xla_flags:
            xla_flags = f"{xla_flags} {flag}={value}".strip()
    return xla_flags


def without_test_flags(xla_flags: str) -> str:
    """``xla_flags`` without any of :data:`TEST_XLA_FLAGS`: XLA's defaults for those."""
    return " ".join(
        flag for flag in xla_flags.split() if not flag.startswith(tuple(TEST_XLA_FLAGS))
    )
