"""Draw the scHyena architecture figure of the docs: ``python docs/_scripts/architecture_figure.py``.

Writes ``docs/_static/architecture.png``. Plain matplotlib boxes and arrows, so the figure can be
redrawn whenever the network changes.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

OUT = Path(__file__).resolve().parents[1] / "_static" / "architecture.png"

COLOURS = {
    "data": "#e8eef7",
    "token": "#fde9d9",
    "block": "#e3f1e3",
    "head": "#efe6f5",
    "note": "#f5f5f5",
}


def box(ax, x, y, w, h, text, colour, size=9, weight="normal"):
    ax.add_patch(
        FancyBboxPatch(
            (x, y),
            w,
            h,
            boxstyle="round,pad=0.02,rounding_size=0.08",
            facecolor=colour,
            edgecolor="0.35",
            lw=1,
        )
    )
    ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size, weight=weight, wrap=True)


def arrow(ax, start, end, text=None):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=12, color="0.3", lw=1.2))
    if text:
        ax.text(
            (start[0] + end[0]) / 2 + 0.08,
            (start[1] + end[1]) / 2,
            text,
            fontsize=7.5,
            color="0.3",
            va="center",
        )


def main() -> None:
    fig, ax = plt.subplots(figsize=(11, 7.2))
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 7.3)
    ax.axis("off")

    # input
    box(
        ax,
        0.3,
        6.25,
        3.6,
        0.7,
        "one cell: raw counts of every gene\n$c_1, c_2, \\dots, c_L$   (L ≈ 20,000)",
        COLOURS["data"],
    )
    box(
        ax,
        4.4,
        6.25,
        3.3,
        0.7,
        "library-size normalise, log1p\n$x_g = \\log(1 + 10^4\\, c_g / \\sum c)$",
        COLOURS["data"],
    )
    arrow(ax, (3.9, 6.6), (4.4, 6.6))

    # tokens
    box(
        ax,
        0.3,
        4.75,
        7.4,
        1.05,
        "one token per gene:   $t_g$ = adaptor$(x_g)$ + gene_embedding$[g]$\n"
        "linear adaptor 1 → d lifts the value; a learned gene embedding says which gene it is\n"
        "mask token: value hidden (pre-training)  ·  missing token: gene not measured",
        COLOURS["token"],
        size=8.5,
    )
    arrow(ax, (6.05, 6.25), (6.05, 5.8))

    # Hyena blocks
    ax.add_patch(
        FancyBboxPatch(
            (0.3, 1.95),
            7.4,
            2.45,
            boxstyle="round,pad=0.02,rounding_size=0.1",
            facecolor="white",
            edgecolor="0.35",
            lw=1,
            linestyle="--",
        )
    )
    ax.text(
        0.45,
        4.2,
        "× N bidirectional Hyena blocks (pre-norm, residual)",
        fontsize=9,
        weight="bold",
        va="center",
    )
    box(ax, 0.55, 3.05, 1.2, 0.75, "LayerNorm", COLOURS["block"], size=8.5)
    box(
        ax,
        2.0,
        2.6,
        3.55,
        1.45,
        "Hyena operator (order 2)\nin-projection, short depthwise conv →\ngates $x_1, x_2$ and value $v$\n"
        "$z \\leftarrow x_n \\cdot (h_n * z)$,  n = 1, 2\nlong convolutions by FFT, O(L log L)",
        COLOURS["block"],
        size=8,
    )
    box(ax, 5.8, 3.05, 1.7, 0.75, "LayerNorm → MLP", COLOURS["block"], size=8.5)
    arrow(ax, (1.75, 3.42), (2.0, 3.42))
    arrow(ax, (5.55, 3.42), (5.8, 3.42))
    ax.text(
        4.0, 2.2, "+ residual around the operator and around the MLP", fontsize=7.5, color="0.3", ha="center"
    )
    arrow(ax, (4.0, 4.75), (4.0, 4.4))

    # filter inset: a non-causal implicit filter, offsets -(L-1) .. (L-1)
    inset = ax.inset_axes([8.2, 2.05, 2.6, 1.3], transform=ax.transData)
    offsets = np.linspace(-1, 1, 801)
    rng = np.random.default_rng(3)
    wiggle = sum(
        a * np.cos(k * np.pi * offsets + p)
        for a, k, p in zip(rng.normal(0, 1, 6), range(2, 8), rng.uniform(0, 6, 6), strict=True)
    )
    filt = np.exp(-6 * np.abs(offsets)) * (1.5 + 0.35 * wiggle)
    inset.plot(offsets, filt, color="#2c7a2c", lw=1.2)
    inset.axvline(0, color="0.5", lw=0.8, ls=":")
    inset.set_xticks([-1, 0, 1], ["-(L-1)", "0", "L-1"], fontsize=7)
    inset.set_yticks([])
    inset.set_title("long filter $h_n$: implicit (an MLP of\nthe offset), both directions", fontsize=7.5)
    for side in ("top", "right", "left"):
        inset.spines[side].set_visible(False)
    ax.text(
        8.05,
        4.7,
        "Bidirectional: genes have no order that\nruns one way, so each filter covers\n"
        "offsets on both sides and every gene\nsees every other gene in one layer.",
        fontsize=8,
        va="top",
    )

    # heads
    arrow(ax, (4.0, 1.95), (4.0, 1.55))
    box(
        ax,
        0.3,
        0.85,
        3.3,
        0.7,
        "per-gene value head\n(every token → its expression)",
        COLOURS["head"],
        size=8.5,
    )
    box(
        ax,
        4.0,
        0.85,
        3.7,
        0.7,
        "mean over measured genes\n→ cell embedding  obsm['X_schyena']",
        COLOURS["head"],
        size=8.5,
    )
    box(
        ax,
        0.3,
        0.05,
        3.3,
        0.6,
        "masked expression modelling;\nimputation (layers['schyena_imputed'])",
        COLOURS["note"],
        size=7.5,
    )
    box(ax, 4.0, 0.05, 1.75, 0.6, "cell expression\nhead (pre-training)", COLOURS["note"], size=7.5)
    box(ax, 5.95, 0.05, 1.75, 0.6, "classifier head\n(cell type)", COLOURS["note"], size=7.5)
    arrow(ax, (1.95, 0.85), (1.95, 0.65))
    arrow(ax, (4.9, 0.85), (4.9, 0.65))
    arrow(ax, (6.8, 0.85), (6.8, 0.65))
    ax.text(
        8.05,
        1.6,
        "Pre-training: hide 15% of the non-zero\nvalues (and 1.5% of the zeros), predict\n"
        "them; no labels needed.\nFine-tuning: cell types (cross-entropy)\nor dropout recovery (imputation).",
        fontsize=8,
        va="top",
    )
    ax.text(0.3, 7.15, "scHyena: every gene of a cell is a token", fontsize=12, weight="bold", va="center")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=100, bbox_inches="tight")
    print(f"wrote {OUT} ({OUT.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
