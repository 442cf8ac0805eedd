"""PNG plots of a run: the training curves and the test metrics against the baselines.

Drawn with matplotlib's Agg backend (no display), written to a temporary name and renamed, so a
half-written PNG is never logged. They go to MLflow with the run and into the Prefect artifacts
(embedded as data URIs, so the UI shows them without access to the files).
"""

from __future__ import annotations

import base64
from pathlib import Path

from gru4rec.io import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def training_plot(history: list[dict], path: str | Path, title: str = "Training") -> Path:
    """Loss per epoch, and each validation metric per epoch when the run was validated."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    valid = sorted(k for k in history[0] if k.startswith("valid_") and k.split("@")[0] in ("valid_recall", "valid_mrr"))
    fig, axes = plt.subplots(1, 2 if valid else 1, figsize=(9 if valid else 5, 3.4), squeeze=False)
    ax = axes[0][0]
    ax.plot(epochs, [h["loss"] for h in history], marker="o", color="tab:blue")
    ax.set(xlabel="epoch", ylabel="training loss", title=f"{title}: loss")
    ax.grid(alpha=0.3)
    if valid:
        ax = axes[0][1]
        for key in valid:
            ax.plot(epochs, [h[key] for h in history], marker="o", label=key.removeprefix("valid_"))
        ax.set(xlabel="epoch", ylabel="validation", title="validation metrics")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[0]:
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _save(fig, Path(path))


def comparison_plot(metrics: dict[str, dict], names: list[str], path: str | Path, title: str = "Test set") -> Path:
    """Grouped bars: each model's value of each metric in `names` (e.g. recall@20, mrr@20)."""
    plt = _pyplot()
    models = list(metrics)
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(models) + 2), 3.4))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        values = [metrics[m].get(name) or 0.0 for m in models]
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(models))]
        bars = ax.bar(xs, values, width, label=name)
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
    ax.set_xticks(range(len(models)), models, rotation=15)
    ax.set(title=title, ylabel="value")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, Path(path))


def markdown_image(path: str | Path, alt: str) -> str:
    """The PNG as a markdown image with a data URI (shown by the Prefect UI without file access)."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"![{alt}](data:image/png;base64,{data})"
