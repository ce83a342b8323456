"""PNG of a scaling-law fit: the IsoFLOP curves with their parabolas and minima (left), the
minima against compute with the fitted L(C) = a * C^(-alpha) (right). matplotlib is imported
here only, so fitting works where it is not installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from megatron_mdm.scaling.errors import ScalingLawError
from megatron_mdm.scaling.fit import ScalingFit
from megatron_mdm.utils import atomic_path

__all__ = ["plot_fit"]

_COLOURS = {"mdm": "Blues", "arm": "Oranges"}
_NAMES = {"mdm": "MDM", "arm": "ARM"}


def plot_fit(fit: ScalingFit, path: str | Path, title: str | None = None) -> None:
    """Write the figure to `path` (PNG, atomically)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ScalingLawError(
            "--plot needs matplotlib (pip install matplotlib, or the project's dev extra)"
        ) from None

    fig, (ax_iso, ax_law) = plt.subplots(1, 2, figsize=(12, 4.8))
    for obj, f in fit.objectives.items():
        cmap = plt.get_cmap(_COLOURS[obj])
        n = len(f.curves)
        for i, c in enumerate(f.curves):
            colour = cmap(0.45 + 0.5 * i / max(1, n - 1))
            grid = np.geomspace(c.params.min(), c.params.max(), 100)
            ax_iso.plot(c.params, c.losses, "o", color=colour, ms=5)
            ax_iso.plot(
                grid,
                c.parabola(grid),
                "-",
                color=colour,
                lw=1.2,
                label=f"{_NAMES[obj]} C={c.flops:.2g}",
            )
            ax_iso.plot([c.n_opt], [c.loss_min], "*", color=colour, ms=13, mec="black", mew=0.6)
        flops = np.array([c.flops for c in f.curves])
        minima = np.array([c.loss_min for c in f.curves])
        colour = cmap(0.8)
        ax_law.plot(flops, minima, "o", color=colour, ms=6)
        lo, hi = flops.min(), flops.max()
        if fit.reference_flops is not None and obj == "mdm" and fit.compute_multiple:
            c_mdm = fit.reference_flops * fit.compute_multiple  # draw the law out to it
            lo, hi = min(lo, c_mdm), max(hi, c_mdm)
        grid = np.geomspace(lo / 1.5, hi * 1.5, 100)
        ax_law.plot(
            grid,
            f.law(grid),
            "-",
            color=colour,
            label=f"{_NAMES[obj]}: {f.law.a:.3g} C^-{f.law.alpha:.3f}",
        )
    if fit.compute_multiple and fit.reference_flops is not None:
        c_ref, c_mdm = fit.reference_flops, fit.reference_flops * fit.compute_multiple
        ax_law.annotate(
            "",
            xy=(c_mdm, fit.reference_loss),
            xytext=(c_ref, fit.reference_loss),
            arrowprops={"arrowstyle": "->", "color": "grey"},
        )
        ax_law.text(
            np.sqrt(c_ref * c_mdm),
            fit.reference_loss,
            f"{fit.compute_multiple:.3g}x",
            ha="center",
            va="bottom",
            color="dimgrey",
        )
    ax_iso.set(
        xscale="log",
        xlabel="non-embedding parameters",
        ylabel="final validation loss",
        title="IsoFLOP curves (star: fitted minimum)",
    )
    ax_law.set(
        xscale="log",
        yscale="log",
        xlabel="compute C = 6ND (FLOPs)",
        ylabel="IsoFLOP minimum loss",
        title="L(C) = a C^-alpha",
    )
    for ax in (ax_iso, ax_law):
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
