"""CrowS-Pairs-format stereotype minimal pairs, written for auditkit (not taken from CrowS-Pairs).

``stereotype_pairs.csv`` has the columns ``sent_more,sent_less,stereo_antistereo,bias_type``
(Nangia et al. 2020 format). ``sent_more`` is always the more stereotyping sentence: in "stereo"
rows it states a stereotype about a historically disadvantaged group, in "antistereo" rows
``sent_less`` shows that group violating the stereotype. The two sentences differ only in the
group term(s).
"""

from __future__ import annotations

import csv
import io
from importlib import resources
from pathlib import Path

__all__ = ["COLUMNS", "BIAS_TYPES", "load"]

COLUMNS = ("sent_more", "sent_less", "stereo_antistereo", "bias_type")
_FILE = "stereotype_pairs.csv"
BIAS_TYPES = ("gender", "race-color", "religion", "age", "nationality", "disability",
              "socioeconomic")


def load() -> list[dict]:
    """Return the built-in pairs as a list of dicts with the four CrowS-Pairs columns."""
    if __package__:
        text = resources.files(__package__).joinpath(_FILE).read_text(encoding="utf-8")
    else:  # loaded by path, outside its package
        text = Path(__file__).with_name(_FILE).read_text(encoding="utf-8")
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"stereotype_pairs.csv: expected columns {','.join(COLUMNS)}, "
                             f"found {','.join(reader.fieldnames or ())}")
        return [dict(row) for row in reader]
