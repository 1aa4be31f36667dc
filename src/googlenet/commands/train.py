"""`googlenet train`: train a GoogLeNet from scratch or fine-tune one (see googlenet.train)."""
from __future__ import annotations

import argparse
import time

# Command-line flags that map one-to-one onto TrainConfig fields.
CONFIG_FLAGS = ("model", "dataset", "data", "epochs", "budget", "batch_size", "lr", "device", "seed",
                "limit_train", "limit_test", "input_size", "weights", "freeze", "precision", "workers", "on_nan")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train on Fashion-MNIST, CIFAR or an image folder (from scratch or fine-tuning)",
        description="Train a GoogLeNet. With no arguments: googlenet_cifar on Fashion-MNIST with the fmnist "
                    "recipe on the best device. Settings come from the recipe, then --config FILE, then the "
                    "flags below, then --set key=value.",
        epilog="examples:\n"
               "  googlenet train --model googlenet_cifar_fast --budget 10m --batch-size 32 --lr 0.05 --out runs/demo\n"
               "                                                    # the whole schedule in 10 minutes (~91% on a CPU)\n"
               "  googlenet train --dataset cifar10 --data ~/data   # cifar-10-batches-py/ in ~/data\n"
               "  googlenet train --dataset imagefolder --data DIR --weights imagenet --freeze 4e\n"
               "  googlenet train --epochs 5 --set label_smoothing=0 --set erasing=0.5\n"
               "  googlenet train --resume runs/demo                # continue a stopped run\n"
               "\nCtrl-C, SIGTERM or a closed terminal (SIGHUP) stops after the current step and saves a "
               "checkpoint first (exit 130/143/129); --resume continues from it. Under nohup the run "
               "outlives its terminal.")
    p.add_argument("--recipe", help="paper | fmnist | cifar | finetune (default: chosen by the dataset)")
    p.add_argument("--config", metavar="FILE.yaml", help="a YAML file of config keys")
    p.add_argument("--model", help="a registered model (googlenet list-models)")
    p.add_argument("--dataset", help="fashion-mnist | cifar10 | cifar100 | imagefolder")
    p.add_argument("--data", metavar="DIR", help="folder holding the dataset")
    p.add_argument("--epochs", type=int, metavar="N", help="passes over the training data")
    p.add_argument("--budget", metavar="TIME", help="fit the whole schedule to a wall-clock budget instead of --epochs: 90s, "
                                                    "10m, 1.5h (a bare number is seconds)")
    p.add_argument("--batch-size", type=int, metavar="N", help="images per step (per process)")
    p.add_argument("--lr", type=float, metavar="X", help="peak learning rate")
    p.add_argument("--device", help="auto | cpu | cuda[:N]")
    p.add_argument("--precision", help="auto | bf16 | fp32")
    p.add_argument("--out", metavar="RUN_DIR", help="run folder (default runs/train-DATE-TIME)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("--seed", type=int, metavar="N", help="random seed (default 0): the same seed, the same run")
    p.add_argument("--limit-train", type=int, metavar="N", help="train on a fixed subset: the first N images (of an image folder, N spread over its classes)")
    p.add_argument("--limit-test", type=int, metavar="N", help="test on a fixed subset of N images, chosen as --limit-train does")
    p.add_argument("--input-size", type=int, metavar="PX", help="square input side fed to the network")
    p.add_argument("--weights", metavar="FILE|imagenet", help="start from saved or pretrained weights")
    p.add_argument("--freeze", metavar="UNTIL", help="freeze the network up to this module, e.g. 4e")
    p.add_argument("--workers", type=int, metavar="N", help="image-folder loading processes")
    p.add_argument("--on-nan", choices=("stop", "skip"),
                   help="a NaN/Inf loss: stop the run, keeping the last checkpoint (default), or skip that step")
    p.add_argument("--tensorboard", action="store_true", default=None, help="also write TensorBoard events")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set erasing=0 (repeatable; every key, with its "
                        "value, is in a run's config.yaml)")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train with N processes on this machine (DistributedDataParallel through torchrun; one "
                        "per GPU); --batch-size stays per process. Several machines: torchrun --nnodes ... "
                        "-m googlenet train ...")
    p.set_defaults(func=run)


def _train_args(args: argparse.Namespace) -> list[str]:
    """The command line of this `googlenet train`, without --nproc (what each process runs)."""
    argv: list[str] = []
    for key in CONFIG_FLAGS + ("recipe", "config", "out", "resume"):
        value = getattr(args, key, None)
        if value is not None:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    if args.tensorboard:
        argv.append("--tensorboard")
    for pair in args.set:
        argv += ["--set", pair]
    return argv


def _launch(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from ..train import distributed

    if distributed.launched_by_torchrun():
        raise UserError("--nproc launches torchrun itself; under torchrun leave it out (use --nproc_per_node)")
    if not args.resume:  # flag mistakes end here in one line, before any process starts
        from ..train import resolve_config

        resolve_config(args.recipe, args.config, {k: getattr(args, k) for k in CONFIG_FLAGS}, args.set)
    return distributed.launch_local(args.nproc, _train_args(args))


def _unscaled_lr_note(args: argparse.Namespace, config) -> str | None:
    """A new --batch-size keeps the recipe's lr (set for the recipe's batch): the note that says
    so, with the usual linear rescaling (the fmnist peak 0.2 at batch 32 diverges), or None.
    The run prints it under its header line, once the setup has passed its checks."""
    from ..train import resolve_config
    from ..train.distributed import env_world_size, global_batch
    from ..train.recipes import parse_overrides

    lr_given = args.lr is not None or args.config is not None or "lr" in parse_overrides(args.set)
    if args.batch_size is None or lr_given:
        return None
    recipe = resolve_config(config.recipe)
    # The lr goes with the global batch (per-process batch x processes x accumulation).
    ours, theirs = global_batch(config, env_world_size()), global_batch(recipe, 1)
    if ours == theirs:
        return None
    scaled = recipe.lr * ours / theirs
    per_process = f" ({config.batch_size}/process)" if ours != config.batch_size else ""
    return (f"note: a global batch of {ours}{per_process} keeps the {config.recipe} recipe's lr {recipe.lr:g}, "
            f"set for batch {theirs}; for SGD the usual rescaling is --lr {scaled:.3g}")


def _flags_besides_resume(args: argparse.Namespace) -> list[str]:
    """The configuration flags given with --resume, which it ignores (the run's saved config rules)."""
    return [f"--{k.replace('_', '-')}" for k in CONFIG_FLAGS + ("recipe", "config", "out")
            if getattr(args, k, None) is not None] + (["--set"] if args.set else [])


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    from ..train import checkpoint, distributed, guard, resolve_config, train
    from ..train.distributed import distributed_session, env_world_size

    # Before any process starts (--nproc), and in every torchrun process alike (each reads the
    # same files, so all stop here together): re-running a finished run's final test costs minutes.
    if args.resume and (weights := checkpoint.finished_weights(args.resume)) is not None:
        if distributed.env_rank() == 0:
            given = _flags_besides_resume(args)
            if given:
                print(f"note: ignoring {' '.join(given)}: a finished run is not changed")
            print(f"{weights.parent} has finished: its model is {weights}; nothing to resume "
                  f"(test it again with `googlenet eval {weights}`, or train on from it in a new run "
                  f"with `googlenet train --weights {weights} --out NEW_RUN`)")
        return 0
    if args.nproc is not None and args.nproc != 1:
        # Said once, before any process starts (train() checks the same, in its main process).
        if args.resume or args.out:
            guard.refuse_unusable_run(args.resume or args.out, resume=bool(args.resume))
        return _launch(args)
    from ..train.recipes import config_from_dict

    config, notes = None, []
    if not args.resume:
        flags = {k: getattr(args, k) for k in CONFIG_FLAGS}
        flags["tensorboard"] = args.tensorboard
        config = resolve_config(args.recipe, args.config, flags, args.set)
        notes = [n for n in [_unscaled_lr_note(args, config)] if n]
    elif env_world_size() > 1:  # the process group needs the run's device and timeout
        config = config_from_dict(checkpoint.load_checkpoint(args.resume)["config"])
    try:
        with distributed_session(config) as process:
            if args.resume:
                given = _flags_besides_resume(args)
                has_checkpoint = checkpoint.checkpoint_path(args.resume).is_file()
                if given and process.is_main and has_checkpoint:  # else: only the missing checkpoint's error
                    print(f"note: --resume continues with the run's saved config; ignoring {' '.join(given)}")
                result = train(None, resume=args.resume, started_at=started, process=process)
            else:
                result = train(config, out=args.out, started_at=started, process=process, notes=notes)
    except guard.StopRequested as stop:
        if distributed.report_stop(stop, distributed.env_rank()):  # `--nproc` says it once, with its exit code
            return 0
        raise
    return 0 if result.test_images > 0 else 1

