"""Figures for the MLflow UI: training curves and the held-out confusion matrix.

Built on ``matplotlib.figure.Figure`` directly (no pyplot global state, no display needed).
"""
from __future__ import annotations

import numpy as np


def training_curves(history: dict[str, list[float]]):
    """Loss and accuracy per epoch, training and validation; the epoch axis is ticked at whole
    epochs only (matplotlib's own ticks labelled a 3-epoch run "1.25", "1.50", ..., epochs that
    never were)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(9, 3.5), layout="constrained")
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy")):
        for key, style in ((metric, "-o"), (f"val_{metric}", "--s")):
            if key in history:
                epochs = range(1, len(history[key]) + 1)
                ax.plot(epochs, history[key], style, label=key.replace("_", " "), markersize=3)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    return fig


def confusion_matrix_figure(cm: np.ndarray, title: str):
    from matplotlib.figure import Figure

    k = cm.shape[0]
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(cm, cmap="Blues")
    fig.colorbar(im, ax=ax, shrink=0.8)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return fig
