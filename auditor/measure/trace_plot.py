"""Causal-trace heatmaps as a PNG (matplotlib, Agg backend: no display, no Qt).

The layout follows the paper's figure 1 (Meng et al. 2022): one heatmap per kind, tokens down,
layers across, the subject's tokens starred, colour = P(answer) after the restoration, from the
corrupted probability (white) up. A marked layer (the one the edit will use) is drawn as a
vertical line on every map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from auditor.files import atomic_file, check_output
from auditor.measure.trace import Trace

COLOURS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}  # as the paper's figures
TITLES = {"hidden": "residual stream", "mlp": "MLP output", "attn": "attention output"}


def token_labels(trace: Trace) -> list[str]:
    """Tokens as shown on the y axis: the subject's starred, whitespace made visible."""
    s0, s1 = trace.subject_span
    return [(repr(t)[1:-1] or " ") + ("*" if s0 <= i < s1 else "") for i, t in enumerate(trace.tokens)]


def write_png(traces: Sequence[Trace], path: str | Path, *, layer: int | None = None, dpi: int = 110) -> Path:
    """Write the heatmaps of ``traces`` side by side to ``path``; returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # a bare Figure on an Agg canvas: pyplot's backends untouched

    n = len(traces)
    T = len(traces[0].tokens)
    fig = Figure(figsize=(4.2 * n + 0.8, 0.32 * T + 1.8), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, tr in zip(axes, traces):
        im = ax.pcolormesh(tr.effects, cmap=COLOURS.get(tr.kind, "viridis"), vmin=tr.corrupted_prob,
                           vmax=max(tr.clean_prob, float(tr.effects.max())))
        ax.invert_yaxis()
        ax.set_yticks([i + 0.5 for i in range(T)])
        ax.set_yticklabels(token_labels(tr), fontsize=8)
        ax.set_xlabel("layer" + (f" (window {tr.window})" if tr.window > 1 else ""))
        ax.set_title(f"{TITLES.get(tr.kind, tr.kind)}", fontsize=10)
        if layer is not None:
            ax.axvline(layer + 0.5, color="black", linestyle="--", linewidth=1)
        fig.colorbar(im, ax=ax, label=f"P({tr.answer.strip() or tr.answer!r})")
    first = traces[0]
    fig.suptitle(f"{first.prompt!r} -> {first.answer!r}   clean {first.clean_prob:.3f}, "
                 f"corrupted {first.corrupted_prob:.3f}, {first.samples} noise samples", fontsize=9)
    fig.tight_layout()
    target = check_output(path, what="--png")
    with atomic_file(target, "wb", what="--png") as f:
        fig.savefig(f, format="png")
    return target
