"""Training: typed recipes (recipes), the loop (loop), checkpoints (checkpoint).

    >>> from googlenet.train import resolve_config, train
    >>> result = train(resolve_config(flags={"budget": "10m"}), out="runs/demo")
    >>> result.top1
"""
from .loop import Plan, Process, TrainResult, Trainer, train
from .recipes import TrainConfig, list_recipes, load_recipe, resolve_config

__all__ = ["Plan", "Process", "TrainConfig", "TrainResult", "Trainer", "list_recipes", "load_recipe",
           "resolve_config", "train"]
