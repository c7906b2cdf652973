"""Figures as SVG text from matplotlib, deterministic (fixed hash salt, no date metadata).

Labels are plain text: math text is off (``text.parse_math``), so a group name such as ``$5 _x_ $``
is drawn as written instead of being parsed as TeX (which fails, or silently eats the ``$`` and ``_``).
Only the tick labels matplotlib's own numeric formatters write (``10^k`` on a log axis) keep math text.
"""
from __future__ import annotations

import io


def new_figure(width: float = 6.0, height: float = 3.2):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    matplotlib.rcParams["svg.hashsalt"] = "auditkit"
    matplotlib.rcParams["svg.fonttype"] = "path"
    matplotlib.rcParams["text.parse_math"] = False
    matplotlib.rcParams["text.usetex"] = False
    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    return fig, ax


def _numbers_as_math(fig) -> None:
    """Math text back on for the tick labels of matplotlib's numeric formatters (their ``$10^{k}$``)
    and nowhere else: category, fixed and function tick labels are the check's text, drawn as written.

    Ticks are made lazily, as plain text (``text.parse_math`` is off), when the axis updates them; so
    update them first (``Axis._update_ticks``, what a draw calls; a full draw where it is missing).
    """
    from matplotlib import ticker
    numeric = (ticker.ScalarFormatter, ticker.LogFormatter, ticker.LogitFormatter, ticker.EngFormatter,
               ticker.PercentFormatter)
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            update = getattr(axis, "_update_ticks", None)
            if update is None:  # pragma: no cover - another matplotlib
                fig.draw_without_rendering()
            else:
                update()
            for formatter, ticks in ((axis.get_major_formatter(), axis.majorTicks),
                                     (axis.get_minor_formatter(), axis.minorTicks)):
                if isinstance(formatter, numeric):
                    for tick in ticks:
                        tick.label1.set_parse_math(True)
                        tick.label2.set_parse_math(True)
            if isinstance(axis.get_major_formatter(), numeric):
                axis.offsetText.set_parse_math(True)


def to_svg(fig) -> str:
    import matplotlib.pyplot as plt
    buf = io.StringIO()
    _numbers_as_math(fig)
    fig.tight_layout()
    _numbers_as_math(fig)  # the layout may have added ticks
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return buf.getvalue()
