"""Figures as SVG text from matplotlib, deterministic (fixed hash salt, no date metadata).

Labels are plain text: math text is off (``text.parse_math``), so a group name such as ``$5 _x_ $``
is drawn as written instead of being parsed as TeX (which fails, or silently eats the ``$`` and ``_``).
Only the tick labels matplotlib's own numeric formatters write (``10^k`` on a log axis) keep math text.
Control characters and bidi controls in a label are drawn as visible escapes (``\\x1b``), so the SVG
stays well-formed XML and reads as written.
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


def _visible_labels(fig) -> None:
    """Every text of the figure shown literally: control characters (a group name with an ESC), the
    bidi controls and lone surrogates written out as ``\\x1b``/``\\u202e``
    (:func:`auditkit.report.common.visible`; line breaks kept), whichever plugin set the label.

    Tick labels are remade from their formatter at each draw, so each formatter's ``format_ticks`` is
    wrapped too; titles, axis labels, legend entries and annotations are rewritten in place."""
    from matplotlib.text import Text

    from auditkit.report.common import visible
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for formatter in {id(f): f for f in (axis.get_major_formatter(), axis.get_minor_formatter())}.values():
                if getattr(formatter, "_auditkit_visible", False):
                    continue
                inner = formatter.format_ticks
                formatter.format_ticks = lambda values, inner=inner: [visible(t, keep="\n") for t in inner(values)]
                formatter._auditkit_visible = True
    for text in fig.findobj(Text):
        raw = text.get_text()
        shown = visible(raw, keep="\n")
        if shown != raw:
            text.set_text(shown)


def to_svg(fig) -> str:
    import matplotlib.pyplot as plt

    from auditkit.report.common import visible
    buf = io.StringIO()
    _visible_labels(fig)
    _numbers_as_math(fig)
    fig.tight_layout()
    _numbers_as_math(fig)  # the layout may have added ticks (their formatters are wrapped already)
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    # nothing XML forbids reaches the file, whatever a text drawn outside the axes held
    return visible(buf.getvalue(), keep="\t\n\r")
