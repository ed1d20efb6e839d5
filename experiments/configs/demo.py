"""The demo's configuration: the tiny DeepLab v3+ of ``tiny.py``, trained for 1000 steps.

``python -m experiments.demo`` (``make demo``) trains three models with it (pixel-wise
labels and two block-wise band limits), each with 4 seeds (``--num_seeds``), and
analyses them; see ``experiments/demo.py``.

Launch::

  python -m experiments.demo --workdir runs/demo
  python -m experiments.demo --workdir /tmp/demo \\
      --config experiments/configs/demo.py:quick --nofull_size_flops   # the test's, ~1 min

The variant ``quick`` trains 10 steps and evaluates 8 validation scenes. Expected runtime
and result: see ``experiments/README.md`` (the demo's report states both for its run).
"""

from __future__ import annotations

import ml_collections

from experiments.configs import tiny


def get_config(variant: str = "") -> ml_collections.ConfigDict:
    """The demo's training configuration; ``variant`` ``"quick"`` for the smallest run."""
    if variant not in ("", "quick"):
        raise ValueError(f"variant must be '' or 'quick', got {variant!r}.")
    config = tiny.get_config()
    config.num_train_steps = 10 if variant == "quick" else 1000
    # The first scenes of the validation split.
    config.eval_split = "validation[:8]" if variant == "quick" else "validation[:50]"
    # The demo evaluates the trained models itself; the trainer only at the end.
    config.eval_every_steps = -1
    config.tensorboard = False
    return config
