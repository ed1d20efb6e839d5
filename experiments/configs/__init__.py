"""Training configurations: each module's ``get_config()`` returns a ``ConfigDict``.

They set values on the library's schema (:func:`spectral_jax.training.config.get_config`,
which documents every field). Launch with ``python -m experiments.train --config <name>
--workdir runs/<name>`` (``--list_configs`` lists the names; a path to a config file
works as well); override any field from the command line, e.g.
``--config.batch_size=4 --config.model.feature_size=33``, and see the result with
``--print_config``.
"""
