"""`googlenet bench`: our fastest exact path vs torchvision's googlenet, side by side."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="time this project's fast GoogLeNet against torchvision's, in one process",
        description="Time googlenet_tv through this project's fastest exact path and "
        "torchvision.models.googlenet in the same process: same batch, input size, precision and "
        "weights. torchvision's figure is its faster of eager NCHW and channels_last (and compiled, "
        "on CUDA). CPU: batch-1 latency and batch-32 img/s at 224, and googlenet_cifar training "
        "img/s at 28 px (against the plain model). CUDA: bf16 training step and inference at batch "
        "256, batch-1 latency. speedup = reference time / our time.",
        epilog="example: googlenet bench --device cpu --quick --json",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda (cuda:N) or auto (a GPU if there is one; default cpu)")
    p.add_argument("--quick", action="store_true", help="fewer repeats (CPU: about 3 minutes on 2 idle cores, 5-6 when they are shared)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for both contenders (default: torch's default, one per core)")
    # Hidden knobs for tests: tiny sizes so the command runs in seconds.
    for flag in ("--input-size", "--throughput-batch", "--train-batch", "--train-input-size", "--repeats"):
        p.add_argument(flag, type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=bench_cmd)


def bench_cmd(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    import sys

    from ..bench import Settings, format_table, run_bench
    import torch

    from ..device import resolve_device
    from ..errors import UserError

    device = resolve_device(args.device)
    if args.threads is not None:
        if args.threads < 1:
            raise UserError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    settings = Settings.for_device(device, args.quick)
    overrides = {name: getattr(args, name) for name in
                 ("input_size", "throughput_batch", "train_batch", "train_input_size") if getattr(args, name)}
    if args.repeats:
        overrides.update(repeats=args.repeats, batch_repeats=args.repeats)
    settings = dataclasses.replace(settings, **overrides)
    report = run_bench(str(device), args.quick, settings,
                       log=lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_table(report))
    return 0
