"""The bias checks' pre-load data checks (``Check.validate_data``): the lexicon they swap with, built as
the run builds it, where that can be done before the model loads."""
from __future__ import annotations


def swapper_for(params: dict, base_dir: str | None):
    """``swaps.make_swapper(params, base_dir)`` for a pre-load check, or None where that cannot be done
    faithfully: a relative ``lexicon`` path with the suite's folder unknown, or a lexicon that does not
    load (``validate_params`` at suite load and ``run`` report that, placed at the parameter)."""
    from pathlib import Path

    from auditkit.errors import AuditInputError

    from .swaps import make_swapper
    lexicon = params.get("lexicon") or ""
    if lexicon and base_dir is None and not Path(lexicon).expanduser().is_absolute():
        return None
    try:
        return make_swapper(params, base_dir)
    except AuditInputError:
        return None
