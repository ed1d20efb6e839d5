"""The demo's configuration: the tiny DeepLab v3+ of ``tiny.py``, trained for 400 steps.

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
    # 400 steps keep `make demo` within 5 minutes on 2 cores. The training has not
    # converged there (validation mIoU of seeds 0-3: 0.64, 0.69, 0.67, 0.49 after 400
    # steps; 0.85, 0.85, 0.86, 0.79 after 1000, where the training loss still falls): the
    # analyses' trends are those of a less trained model. --config.num_train_steps=1000
    # trains the longer run.
    config.num_train_steps = 10 if variant == "quick" else 400
    # The first scenes of the validation split.
    config.eval_split = "validation[:8]" if variant == "quick" else "validation[:50]"
    # The demo evaluates the trained models itself; the trainer only at the end.
    config.eval_every_steps = -1
    config.tensorboard = False
    return config
