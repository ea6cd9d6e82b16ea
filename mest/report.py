"""The end-of-run plot: accuracy and per-layer density over epochs (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from devices.files import atomic_write  # noqa: E402


def plot_history(history: list[dict], path: Path) -> Path:
    """Write a two-panel PNG of ``history`` (the trainer's per-epoch metrics) to ``path``."""
    epochs = [m["epoch"] + 1 for m in history]
    fig, (acc_ax, density_ax) = plt.subplots(1, 2, figsize=(11, 4))
    acc_ax.plot(epochs, [m["train_acc"] for m in history], label="train")
    acc_ax.plot(epochs, [m["test_acc"] for m in history], label="test")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    acc_ax.legend()
    for fqn in history[-1]["layer_density"]:
        density_ax.plot(epochs, [m["layer_density"][fqn] for m in history], linewidth=0.8)
    density_ax.set(xlabel="epoch", ylabel="density", title="Per-layer density (sparse convs)")
    fig.tight_layout()
    atomic_write(Path(path), lambda handle: fig.savefig(handle, format="png", dpi=100))
    plt.close(fig)
    return Path(path)
