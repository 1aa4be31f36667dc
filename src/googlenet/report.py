"""Plots of a run, written next to its metrics (matplotlib, headless Agg backend).

curves.png     training loss and train/test accuracy per epoch
confusion.png  the confusion matrix with class names (rows: true, columns: predicted)
errors.png     a grid of misclassified test images with true and predicted labels
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _value(row: dict, key: str) -> float | None:
    value = row.get(key)
    if value in (None, ""):
        return None
    return float(value)


def plot_curves(history: Sequence[dict], path: str | Path) -> Path:
    """Loss (left) and accuracy in % (right) per epoch from metrics rows."""
    plt = _pyplot()
    epochs = [int(r["epoch"]) for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [_value(r, "train_loss") for r in history], "o-",
                 label="train: objective (incl. aux heads, label smoothing)")
    test_loss = [(e, _value(r, "test_loss")) for e, r in zip(epochs, history) if _value(r, "test_loss") is not None]
    if test_loss:
        ax_loss.plot(*zip(*test_loss), "s-", label="test: cross-entropy (main head)")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    ax_acc.plot(epochs, [_value(r, "train_acc") for r in history], "o-", label="train top-1")
    for key, label in (("test_top1", "test top-1"), ("test_top5", "test top-5")):
        points = [(e, _value(r, key)) for e, r in zip(epochs, history) if _value(r, key) is not None]
        if points:
            ax_acc.plot(*zip(*points), "s-", label=label)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if len(epochs) < 12:
            ax.set_xticks(epochs)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def confusion_matrix(targets: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """counts[true, predicted]."""
    flat = targets.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def plot_confusion(matrix: torch.Tensor, class_names: Sequence[str], path: str | Path) -> Path:
    plt = _pyplot()
    n = len(class_names)
    size = max(5.0, min(20.0, 0.5 * n + 2))
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix.numpy(), cmap="Blues")
    if n <= 30:
        ax.set_xticks(range(n), class_names, rotation=60, ha="right")
        ax.set_yticks(range(n), class_names)
        peak = float(matrix.max()) if matrix.numel() else 0.0
        for i in range(n):
            for j in range(n):
                count = int(matrix[i, j])
                if count:
                    ax.text(j, i, str(count), ha="center", va="center", fontsize=7,
                            color="white" if count > peak / 2 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = int(matrix.sum())
    ax.set_title(f"confusion matrix ({total} test images, {int(matrix.trace())} correct)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_errors(images: Sequence[torch.Tensor], true: Sequence[int], predicted: Sequence[int],
                class_names: Sequence[str], path: str | Path, columns: int = 8) -> Path:
    """Misclassified images (uint8 C x H x W) titled 'true -> predicted'."""
    plt = _pyplot()
    count = len(images)
    rows = max(1, -(-count // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(columns * 1.6, rows * 1.9), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= count:
            continue
        image = images[k]
        if image.shape[0] == 1:
            ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(image[:3].permute(1, 2, 0).numpy())
        ax.set_title(f"{class_names[true[k]]}\n-> {class_names[predicted[k]]}", fontsize=7)
    if count == 0:
        axes.flat[0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    fig.suptitle("misclassified test images (true -> predicted)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
