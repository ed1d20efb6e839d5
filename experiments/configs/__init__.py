"""Training configurations: each module's ``get_config()`` returns a ``ConfigDict``.

Launch with ``python -m experiments.train --config experiments/configs/<name>.py
--workdir runs/<name>``; override any field from the command line, e.g.
``--config.batch_size=4 --config.model.feature_size=33``.
"""
