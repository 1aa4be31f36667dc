"""Plots of a run: curves, confusion matrix, misclassified images."""
from __future__ import annotations

import torch
from PIL import Image

from googlenet import report


def test_confusion_matrix_counts():
    targets = torch.tensor([0, 0, 1, 2, 2, 2])
    predictions = torch.tensor([0, 1, 1, 2, 0, 2])
    matrix = report.confusion_matrix(targets, predictions, 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_plots_are_written(tmp_path):
    history = [{"epoch": 1, "train_loss": 2.0, "train_acc": 40.0, "test_loss": 1.5, "test_top1": 50.0, "test_top5": 90.0},
               {"epoch": 2, "train_loss": 1.0, "train_acc": 70.0, "test_loss": "", "test_top1": "", "test_top5": ""}]
    curves = report.plot_curves(history, tmp_path / "curves.png")
    matrix = report.confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 2)
    confusion = report.plot_confusion(matrix, ["cat", "dog"], tmp_path / "confusion.png")
    gray = [torch.randint(0, 255, (1, 28, 28), dtype=torch.uint8) for _ in range(3)]
    errors = report.plot_errors(gray, [0, 1, 1], [1, 0, 0], ["cat", "dog"], tmp_path / "errors.png", columns=2)
    rgb = report.plot_errors([torch.zeros(3, 8, 8, dtype=torch.uint8)], [0], [1], ["a", "b"], tmp_path / "rgb.png")
    empty = report.plot_errors([], [], [], ["a"], tmp_path / "none.png")
    for path in (curves, confusion, errors, rgb, empty):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 100
