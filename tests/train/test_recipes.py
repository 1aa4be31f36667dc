"""Recipes: shipped YAML files, override order, key and type checks, saved config."""
from __future__ import annotations

import pytest
import yaml

from googlenet.errors import UserError
from googlenet.train import recipes
from googlenet.train.recipes import TrainConfig, list_recipes, load_recipe, resolve_config


def test_shipped_recipes_load_and_use_known_models():
    import googlenet

    assert {"paper", "fmnist", "cifar", "finetune"} <= set(list_recipes())
    for name in list_recipes():
        config = load_recipe(name)
        assert config.recipe == name and config.model in googlenet.list_models()


def test_paper_recipe_is_the_paper():
    c = load_recipe("paper")
    assert (c.model, c.optimizer, c.momentum, c.schedule) == ("googlenet", "sgd", 0.9, "step")
    assert (c.step_every, c.step_gamma, c.aux_weight, c.dropout, c.dropout_aux) == (8, 0.96, 0.3, 0.4, 0.7)
    assert c.resized_crop_min_area == 0.08 and c.random_interpolation and c.photometric > 0 and c.ema


def test_default_is_fmnist_on_fashion_mnist():
    c = resolve_config()
    assert (c.recipe, c.dataset, c.model) == ("fmnist", "fashion-mnist", "googlenet_cifar")
    assert resolve_config(flags={"dataset": "cifar10"}).recipe == "cifar"
    assert resolve_config(flags={"dataset": "imagefolder", "weights": "imagenet"}).recipe == "finetune"


def test_override_order(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("lr: 0.05\nepochs: 3\nbatch_size: 32\n")
    c = resolve_config("fmnist", str(path), {"batch_size": 16, "lr": None}, ["batch_size=8", "budget=2m", "data=1e3"])
    assert (c.lr, c.epochs, c.batch_size, c.budget, c.data) == (0.05, 3, 8, "2m", "1e3")
    assert c.budget_seconds() == 120


def test_unknown_key_suggests_the_closest(tmp_path):
    with pytest.raises(UserError, match="'label_smoothing'"):
        resolve_config(overrides=["label_smothing=0.2"])
    path = tmp_path / "bad.yaml"
    path.write_text("learning_rate: 0.1\n")
    with pytest.raises(UserError, match=r"unknown config key 'learning_rate' in .*bad.yaml"):
        resolve_config(config_file=str(path))


@pytest.mark.parametrize("key, message", [
    ("learning_rate", "unknown config key 'learning_rate' in --set; did you mean 'lr'?"),
    ("amp", "unknown config key 'amp' in --set; did you mean 'precision'?"),
    ("image_size", "unknown config key 'image_size' in --set; did you mean 'input_size'?"),
    ("resume", "'resume' in --set is not a config key; use the flag --resume"),
    ("out", "'out' in --set is not a config key; use the flag --out"),
    ("num_classes", "num_classes in --set is not a config key: the classes come from the dataset (an image "
                    "folder's class folders)")])
def test_common_names_from_other_tools_get_the_right_suggestion(key, message):
    """By spelling alone learning_rate suggested 'erasing', amp 'warmup', resume 'resize' (a key
    that exists: a user who took the hint changed the image size), num_classes 'accum_steps'."""
    with pytest.raises(UserError) as info:
        resolve_config(overrides=[f"{key}=1"])
    assert str(info.value) == message


@pytest.mark.parametrize("override, message", [("epochs=two", "epochs must be int"),
                                               ("lr=-1", "lr must be positive"),
                                               ("schedule=linear", "schedule must be one of"),
                                               ("budget=soon", "duration"), ("lr", "key=value"),
                                               ("limit_train=0", "limit_train must be a positive"),
                                               ("input_size=-8", "input_size must be a positive"),
                                               ("workers=-1", "workers must be 0 or more"),
                                               ("erasing=1.5", "erasing is a fraction"),
                                               ("dropout=-0.1", "dropout is a fraction")])
def test_bad_values_are_user_errors(override, message):
    with pytest.raises(UserError, match=message):
        resolve_config(overrides=[override])


@pytest.mark.parametrize("override, message", [("lr=nan", "lr must be positive, got nan"),
                                               ("lr=.inf", "lr must be positive, got inf"),
                                               ("momentum=-1", "momentum is a fraction"),
                                               ("momentum=5", "momentum is a fraction"),
                                               ("weight_decay=-1", "weight_decay must be 0 or more"),
                                               ("weight_decay=nan", "weight_decay must be 0 or more"),
                                               ("ema_decay=2", "ema_decay is a fraction"),
                                               ("final_lr_scale=-1", "final_lr_scale is a fraction"),
                                               ("step_every=0", "step_every must be positive"),
                                               ("step_gamma=0", "step_gamma must be positive"),
                                               ("photometric=-1", "photometric must be 0 or more"),
                                               ("aux_weight=-1", "aux_weight must be 0 or more"),
                                               ("crop_padding=-3", "crop_padding must be 0 or more"),
                                               ("dist_timeout=nan", "dist_timeout must be positive")])
def test_out_of_range_numbers_are_user_errors_not_tracebacks_later(override, message):
    """momentum=-1 was a torch ValueError traceback, step_every=0 a ZeroDivisionError, lr=nan a
    run that failed at its second step: each is now one line before anything starts."""
    with pytest.raises(UserError, match=message):
        resolve_config(overrides=[override])


def test_unknown_recipe():
    with pytest.raises(UserError, match="did you mean 'paper'"):
        load_recipe("papr")


def test_saved_config_round_trips(tmp_path):
    c = resolve_config(overrides=["lr=0.3", "freeze=4e"])
    recipes.save_config(c, tmp_path / "config.yaml")
    values = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert recipes.config_from_dict(values) == c
    assert resolve_config(config_file=str(tmp_path / "config.yaml")) == c


def test_durations():
    assert [recipes.parse_duration(t) for t in ("90s", "10m", "1.5h", "45")] == [90, 600, 5400, 45]
    assert isinstance(TrainConfig().to_dict(), dict)


@pytest.mark.parametrize("make, says", [
    (lambda p: p.mkdir(), "is a folder; give a YAML file"),
    (lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe"), "is not a text file"),
    (lambda p: p.write_text("lr: [1, 2"), "is not valid YAML"),
    (lambda p: p.write_text("- just\n- a list\n"), "must hold a mapping"),
    (lambda p: None, "config file not found"),
])
def test_a_bad_config_file_is_one_line(tmp_path, make, says):
    from googlenet.train.recipes import read_yaml

    path = tmp_path / "config.yaml"
    make(path)
    with pytest.raises(UserError, match=says) as caught:
        read_yaml(path)
    assert "\n" not in str(caught.value)


def test_epochs_with_a_budget_is_refused_by_the_api_as_by_the_cli():
    """The budget picks the epochs; through the Python API the epochs asked for were dropped silently."""
    with pytest.raises(UserError, match="--epochs 5 and --budget 10m both set how long the run is"):
        resolve_config(flags={"epochs": 5, "budget": "10m"})
    with pytest.raises(UserError, match="--epochs 3 and --budget 1m"):
        resolve_config(flags={"budget": "1m"}, overrides=["epochs=3"])
    assert resolve_config(flags={"budget": "1m"}).budget == "1m"  # the recipe's own epochs are no conflict
    assert resolve_config(flags={"epochs": 2, "budget": "1m"}, overrides=["budget="]).epochs == 2
