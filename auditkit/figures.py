"""Figures as SVG text from matplotlib, deterministic (fixed hash salt, no date metadata)."""
from __future__ import annotations

import io


def new_figure(width: float = 6.0, height: float = 3.2):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    matplotlib.rcParams["svg.hashsalt"] = "auditkit"
    matplotlib.rcParams["svg.fonttype"] = "path"
    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    return fig, ax


def to_svg(fig) -> str:
    import matplotlib.pyplot as plt
    buf = io.StringIO()
    fig.tight_layout()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return buf.getvalue()
