"""Counting XLA compilations, for the no-retrace tests of the eager public functions.

Every XLA compilation records ``jax.monitoring``'s backend-compile event (one per
executable, whether from ``jax.jit`` or from an eager operation, which JAX compiles op by
op); a listener counts them. The tests check that a repeated eager call of a public
function compiles nothing and that a new shape compiles exactly one executable: the
function's module-level ``jit``, with nothing eager around it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax

# jax.monitoring's event for one XLA compilation (jax/_src/dispatch.py,
# BACKEND_COMPILE_EVENT). If JAX renamed it, nothing would be counted:
# assert_compiles_once_per_shape then fails on its first call, it does not pass vacuously.
BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def count_compilations() -> Iterator[list[str]]:
    """Yields a list that collects the name of every function XLA compiles in the block."""
    compiled: list[str] = []

    def listener(event: str, duration_secs: float, **kwargs: Any) -> None:
        del duration_secs
        if event == BACKEND_COMPILE_EVENT:
            compiled.append(str(kwargs.get("fun_name", "?")))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiled
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def compilations(call: Callable[..., Any], *args: Any, **kwargs: Any) -> list[str]:
    """The functions compiled by ``call(*args, **kwargs)``, run to completion."""
    with count_compilations() as compiled:
        jax.block_until_ready(call(*args, **kwargs))
    return compiled


def assert_compiles_once_per_shape(
    call: Callable[..., Any],
    first: Sequence[Any],
    same_shapes: Sequence[Any],
    new_shapes: Sequence[Any],
) -> None:
    """``call(*first)`` compiles once, ``call(*same_shapes)`` not, ``call(*new_shapes)`` once.

    Clears JAX's caches first, so that no earlier test's compilation is reused. Give
    ``same_shapes`` other values than ``first``: values must never recompile.
    """
    jax.clear_caches()
    first_call = compilations(call, *first)
    assert len(first_call) == 1, f"first call compiled {first_call}, expected one executable"
    repeated = compilations(call, *same_shapes)
    assert repeated == [], f"a repeated call with the same shapes compiled {repeated}"
    again = compilations(call, *first)
    assert again == [], f"a third call compiled {again}"
    new = compilations(call, *new_shapes)
    assert len(new) == 1, f"a call with new shapes compiled {new}, expected one executable"
