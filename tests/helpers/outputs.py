"""The experiments' output files read back as the tests compare them."""

from __future__ import annotations

import csv
import os


def read_csv(path: os.PathLike | str) -> list[dict[str, str]]:
    """The rows of a CSV file with a header line, as ``{column: text}``."""
    with open(path, newline="") as file:
        return list(csv.DictReader(file))
