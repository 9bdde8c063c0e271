"""Drawing the bench's charts: matplotlib with no display, each figure laid out, written and
closed the same way."""
from __future__ import annotations


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str, dpi: float | None = None) -> str:
    """``fig`` laid out tight, written to ``path`` (at ``dpi``, else the figure's) and closed;
    ``path``."""
    plt = pyplot()
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
