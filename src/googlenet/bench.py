"""`googlenet bench`: this project's fastest exact path vs torchvision's googlenet, one process.

Every row times two contenders on the same batch, input size, precision and weights
shape, interleaving their repeats so a busy machine slows both alike:
  ours         googlenet_tv (the network torchvision computes) through googlenet.fast, or
               on CPU in fp32 its ONNX export (`googlenet export`) in ONNX Runtime when
               that is faster: the faster of the two exact paths, named in `ours_path`
  torchvision  torchvision.models.googlenet, the faster of eager NCHW and channels_last
               (and, on CUDA, compiled channels_last; at batch 1 also replayed as a CUDA
               graph by the same runner as ours, so graphs alone earn no speedup; in bf16
               rows also with its weights cast to bf16 once, as ours are, eager and graphed)
A contender whose compilation or graph capture fails is left out with a note (ours is then
timed uncompiled), so one failure does not lose a row; a bf16 row whose outputs differ from
torchvision's by more than bf16 rounding explains carries a CHECK note.
The training row on CPU has no torchvision counterpart (torchvision has no 28-px
GoogLeNet): its reference column is the plain, unoptimised googlenet_cifar in eager mode.
Training rows step ours with torch's fused SGD kernel, as `googlenet train` does, and the
reference with torch's default SGD, as a script written for torchvision would.

Timing rules: warm-up (and compilation) excluded, CUDA synchronised, the median of the
repeats, random non-zero inputs. speedup = reference time / our time (higher is better).
"""
from __future__ import annotations

import copy
import datetime
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .device import resolve_device
from .errors import UserError, first_line
from .fast import optimize
from .fast.cuda_graph import CUDAGraphRunner
from .models import create_model, googlenet_loss

EXACT_RTOL = 1e-4  # fp32 rows: max |ours - torchvision| <= 1e-4 x max |torchvision logits|


@dataclass
class Settings:
    """What a bench run measures; `for_device` gives the defaults, tests shrink them."""

    input_size: int = 224  # inference and GPU training, pixels
    latency_batch: int = 1
    throughput_batch: int = 32  # 256 on CUDA
    train_batch: int = 128  # 256 on CUDA
    train_input_size: int = 28  # CPU training row (googlenet_cifar)
    warmup: int = 3  # untimed calls per contender (compilation happens here)
    repeats: int = 15  # timed calls per contender for latency rows
    batch_repeats: int = 5  # timed calls per contender for throughput/training rows
    bf16_cpu_row: bool = True  # an extra, non-exact bf16 CPU latency row
    compile_torchvision: bool = True  # CUDA: also time torchvision compiled

    @classmethod
    def for_device(cls, device: torch.device, quick: bool = False) -> "Settings":
        if device.type == "cuda":
            s = cls(throughput_batch=256, train_batch=256, warmup=5, repeats=50, batch_repeats=10)
            return replace(s, repeats=20, batch_repeats=5) if quick else s
        s = cls()
        return replace(s, warmup=2, repeats=10, batch_repeats=2, bf16_cpu_row=False) if quick else s


@dataclass
class Row:
    case: str
    device: str
    batch: int
    precision: str
    ours: float
    torchvision: float
    unit: str  # "ms" (lower is better) or "img/s" (higher is better)
    speedup: float  # reference time / our time
    ours_path: str = ""
    torchvision_path: str = ""  # which of torchvision's variants was fastest
    reference: str = "torchvision.models.googlenet"
    max_abs_diff: float | None = None  # ours vs reference logits on the bench input
    exact: bool | None = None
    counts: bool = True  # False: an extra row outside the targets (e.g. bf16 on CPU)
    notes: list[str] = field(default_factory=list)
    # Every contender's figure in this row's unit, ours and torchvision's, fastest path or not.
    timings: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# CPU: idle this long before each timed call. Thread pools keep their workers spinning
# for a while after a call (PyTorch's OpenMP, ONNX Runtime's pool); back to back, the
# previous contender's spinning workers steal the 2 cores from the next one (measured:
# ONNX Runtime 21.9 ms right after torchvision vs 15.2 ms after a 10 ms pause).
CPU_SETTLE_S = 0.01


def time_interleaved(
    contenders: dict[str, Callable[[], object]], device: torch.device, warmup: int, repeats: int
) -> dict[str, float]:
    """Median seconds per call of each contender; repeats alternate between contenders.

    On CPU every timed call starts after a short idle pause (CPU_SETTLE_S), the same for
    every contender, so each is timed as if it ran alone.
    """
    settle = CPU_SETTLE_S if device.type == "cpu" else 0.0
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
        _sync(device)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            _sync(device)
            if settle:
                time.sleep(settle)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# ---------------------------------------------------------------- models
def _he_init(model: nn.Module, seed: int = 0) -> None:
    """Weights that keep activations O(1) (no denormals, meaningful diffs); same for both."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=gen)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=m.in_features**-0.5, generator=gen)


def torchvision_pair(aux_logits: bool) -> tuple[nn.Module, nn.Module]:
    """torchvision's googlenet and our googlenet_tv holding the very same weights."""
    import torchvision

    tv = torchvision.models.googlenet(weights=None, aux_logits=aux_logits, init_weights=False)
    _he_init(tv)
    ours = create_model("googlenet_tv", aux_logits=aux_logits)
    ours.load_state_dict(tv.state_dict())  # strict: same keys, same shapes
    return tv, ours


def _channels_last(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).to(memory_format=torch.channels_last)


def _random_input(batch: int, chans: int, size: int, device: torch.device) -> Tensor:
    gen = torch.Generator().manual_seed(batch * 1000 + size)
    return (torch.randn(batch, chans, size, size, generator=gen)).to(device)


def _autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def _infer_fn(model: Callable[[Tensor], Tensor], x: Tensor, device: torch.device, precision: str,
              channels_last: bool) -> Callable[[], Tensor]:
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)

    def run() -> Tensor:
        with torch.inference_mode(), _autocast(device, precision):
            return model(x)

    return run


def _train_fn(model: nn.Module, x: Tensor, target: Tensor, device: torch.device, precision: str,
              channels_last: bool, fused_sgd: bool = False) -> Callable[[], None]:
    """One training step: forward, main + 0.3 x aux losses, backward, SGD step. fused_sgd: torch's
    fused SGD kernel, as `googlenet train` steps (build_optimizer); else torch's default, as a
    torchvision user's script would."""
    model.train()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    # small lr: stays finite
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, fused=fused_sgd or None)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            loss = googlenet_loss(model(x), target)
        loss.backward()
        opt.step()

    return step


def _best(times: dict[str, float], names: list[str]) -> tuple[str, float]:
    name = min(names, key=lambda n: times[n])
    return name, times[name]


def _in_unit(seconds: float, unit: str, batch: int) -> float:
    return round(seconds * 1e3 if unit == "ms" else batch / seconds, 3)  # else images per second


def _row(case: str, device: torch.device, batch: int, precision: str, unit: str, ours: tuple[str, float],
         ref: tuple[str, float], times: dict[str, float] | None = None, **extra) -> Row:
    """A result row from the fastest of ours and of torchvision's (seconds per call); `times`
    (every contender's seconds) is kept in the row too, in its unit."""
    ours_name, ours_s = ours
    ref_name, ref_s = ref
    timings = {name: _in_unit(t, unit, batch) for name, t in (times or {}).items()}
    return Row(case, device.type, batch, precision, _in_unit(ours_s, unit, batch), _in_unit(ref_s, unit, batch),
               unit, round(ref_s / ours_s, 3), ours_name, ref_name, timings=timings, **extra)


# bf16 rows cannot be exact; ours vs torchvision (both bf16) beyond this share of the largest
# logit means a path computes something else, and the row says so. (Not the top-1 class: with
# random weights the two best logits of one image can be closer than bf16 rounding.)
BF16_CHECK_RTOL = 0.1


def _bf16_check(ours: Tensor, ref: Tensor) -> list[str]:
    scale = max(1.0, ref.float().abs().max().item())
    diff = (ours.float() - ref.float()).abs().max().item()
    if diff > BF16_CHECK_RTOL * scale:
        return [f"CHECK: ours differs from torchvision by {diff:.3g} (largest logit {scale:.3g}): more than "
                "bf16 rounding explains"]
    return []


def _max_diff(ours: Tensor, ref: Tensor) -> tuple[float, bool]:
    diff = (ours.float() - ref.float()).abs().max().item()
    return diff, diff <= EXACT_RTOL * max(1.0, ref.float().abs().max().item())


# ---------------------------------------------------------------- cases
def _first_call_works(fn: Callable[[], object], what: str, notes: list[str]) -> bool:
    """Call `fn` once (a compilation or a graph capture happens there); on failure say so in
    the row's notes, so that one contender that cannot run costs that contender, not the row."""
    try:
        fn()
        return True
    except Exception as e:  # noqa: BLE001 - reported in the row's notes
        notes.append(f"{what} failed ({first_line(e)}); not compared")
        return False


def bench_inference(device: torch.device, batch: int, s: Settings, precision: str = "fp32",
                    case: str | None = None, cuda_graphs: bool = False, compile_ours: bool = False,
                    compile_tv: bool = False, counts: bool = True) -> Row:
    tv, ours_src = torchvision_pair(aux_logits=False)
    tv = tv.eval().to(device)
    x = _random_input(batch, 3, s.input_size, device)
    notes: list[str] = []
    if device.type == "cpu" and precision == "bf16":
        # CPU bf16: autocast around the folded fp32 engine (not exact; an extra row).
        ours = optimize(ours_src, device, mode="inference", backend="eager", example_shape=tuple(x.shape))
        ours_fn = _infer_fn(ours.engine, x, device, "bf16", channels_last=True)
    else:  # bf16 on CUDA: the folded weights are stored in bf16
        def build(compile: bool):
            model = optimize(copy.deepcopy(ours_src), device, mode="inference", precision=precision,
                             compile=compile, cuda_graphs=cuda_graphs, example_shape=tuple(x.shape))
            return model, _infer_fn(model, x, device, "fp32", channels_last=False)

        ours, ours_fn = build(compile_ours)
        if compile_ours and not _first_call_works(ours_fn, "compiling ours", notes):
            ours, ours_fn = build(False)  # timed without compilation instead
    ours_precision = precision
    ours_paths: dict[str, Callable[[], object]] = {_describe_inference(ours, ours_precision): ours_fn}
    if device.type == "cpu" and precision == "fp32":
        ort_fn = _onnxruntime_fn(ours_src, x)
        if ort_fn is not None:
            ours_paths["ONNX export in ONNX Runtime (BN folded)"] = ort_fn
        ncnn_fn = _ncnn_fn(ours_src, x, notes)
        if ncnn_fn is not None:
            ours_paths["folded BN, merged 1x1, in ncnn (Winograd 3x3)"] = ncnn_fn
    contenders: dict[str, Callable[[], object]] = {
        **ours_paths,
        "eager NCHW": _infer_fn(tv, x, device, precision, channels_last=False),
        "eager channels_last": _infer_fn(_channels_last(tv), x, device, precision, channels_last=True),
    }
    if precision == "bf16":
        # Autocast recasts torchvision's fp32 weights at every call; a user who wants bf16
        # inference can cast the model once instead (model.bfloat16()): that counts as its own too.
        tv_bf16 = _channels_last(tv).to(torch.bfloat16)
        x_bf16 = x.to(torch.bfloat16)
        contenders["bf16 weights, channels_last"] = _infer_fn(tv_bf16, x_bf16, device, "fp32", channels_last=True)
    if compile_tv:
        compiled = _infer_fn(torch.compile(_channels_last(tv)), x, device, precision, channels_last=True)
        if _first_call_works(compiled, "compiling torchvision", notes):
            contenders["compiled channels_last"] = compiled
    if cuda_graphs and device.type == "cuda":
        graphed = _graphed_fn(_channels_last(tv), x, precision)
        if _first_call_works(graphed, "torchvision as a CUDA graph", notes):
            contenders["CUDA graph channels_last"] = graphed
        if precision == "bf16":
            graphed = _infer_fn(CUDAGraphRunner(tv_bf16), x_bf16, device, "fp32", channels_last=True)
            if _first_call_works(graphed, "torchvision in bf16 weights as a CUDA graph", notes):
                contenders["CUDA graph, bf16 weights, channels_last"] = graphed
    times = time_interleaved(contenders, device, s.warmup, s.repeats if batch == 1 else s.batch_repeats)
    path, ours_s = _best(times, list(ours_paths))
    ours_out, ref_out = ours_paths[path](), contenders["eager NCHW"]()
    diff, exact = _max_diff(ours_out, ref_out)
    if precision == "bf16":
        notes += _bf16_check(ours_out, ref_out)
    unit = "ms" if batch == 1 else "img/s"
    name = case or (f"inference latency {s.input_size}px" if batch == 1 else f"inference {s.input_size}px")
    return _row(name, device, batch, ours_precision, unit, (path, ours_s),
                _best(times, [n for n in contenders if n not in ours_paths]), times,
                max_abs_diff=diff, exact=exact if precision == "fp32" else None, counts=counts, notes=notes)


def _graphed_fn(model: nn.Module, x: Tensor, precision: str) -> Callable[[], Tensor]:
    """`model` (channels_last) replayed as one CUDA graph per call, autocast inside the graph.

    Autocast's weight-cast cache must be off under capture: a cast cached before the
    capture would be left out of the graph, and replays would read a freed buffer."""

    def forward(inp: Tensor) -> Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16", cache_enabled=False):
            return model(inp)

    return _infer_fn(CUDAGraphRunner(forward), x, x.device, "fp32", channels_last=True)


def _onnxruntime_fn(model: nn.Module, x: Tensor) -> Callable[[], Tensor] | None:
    """`model` through optimize(backend="onnxruntime"): its export as `googlenet export`
    writes it (verified against PyTorch there), run by ONNX Runtime on the CPU; None
    without onnx/onnxruntime."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    fast = optimize(model, "cpu", mode="inference", backend="onnxruntime", example_shape=tuple(x.shape))
    return lambda: fast(x)


def _ncnn_fn(model: nn.Module, x: Tensor, notes: list[str]) -> Callable[[], Tensor] | None:
    """`model` through optimize(backend="ncnn"): folded, converted by pnnx, run by ncnn on the
    CPU; None without the ncnn extra, or (with a note) if the conversion fails."""
    from .ncnn_backend import ncnn_available

    if not ncnn_available():
        return None
    try:
        fast = optimize(model, "cpu", mode="inference", backend="ncnn", example_shape=tuple(x.shape))
    except Exception as e:  # noqa: BLE001 - pnnx or ncnn refused the model: the other paths still count
        notes.append(f"ncnn failed ({first_line(e)}); not compared")
        return None
    return lambda: fast(x)


def _describe_inference(model: nn.Module, precision: str) -> str:
    parts = ["folded BN", "merged 1x1", "channels_last" if model.channels_last else "NCHW"]
    if model.resolved_backend == "mkldnn":
        parts.append("oneDNN conv+ReLU")
    if precision == "bf16":
        parts.append("bf16")
    if model.compile:
        parts.append("compiled")
    if model.cuda_graphs:
        parts.append("CUDA graph")
    return ", ".join(parts)


def bench_train_cifar_cpu(s: Settings) -> Row:
    """CPU training img/s of googlenet_cifar (28 px, 1 channel): ours is the faster of the fused
    model and the plain one as `googlenet train` runs it on a CPU (channels_last, fused SGD);
    the reference the plain model with torch's default SGD, each the faster of NCHW and
    channels_last."""
    device = torch.device("cpu")
    plain = create_model("googlenet_cifar", in_chans=1, num_classes=10)
    fused_nchw = optimize(copy.deepcopy(plain), device, mode="train", channels_last=False)
    fused_cl = optimize(copy.deepcopy(plain), device, mode="train", channels_last=True)
    x = _random_input(s.train_batch, 1, s.train_input_size, device)
    target = torch.randint(0, 10, (s.train_batch,), generator=torch.Generator().manual_seed(0))
    ours_paths = {
        "fused 1x1, NCHW, fused SGD": _train_fn(fused_nchw, x, target, device, "fp32", channels_last=False,
                                                fused_sgd=True),
        "fused 1x1, channels_last, fused SGD": _train_fn(fused_cl, x, target, device, "fp32", channels_last=True,
                                                         fused_sgd=True),
        "plain, channels_last, fused SGD (googlenet train)": _train_fn(
            _channels_last(plain), x, target, device, "fp32", channels_last=True, fused_sgd=True),
    }
    contenders = {
        **ours_paths,
        "plain eager NCHW": _train_fn(plain, x, target, device, "fp32", channels_last=False),
        "plain eager channels_last": _train_fn(_channels_last(plain), x, target, device, "fp32",
                                               channels_last=True),
    }
    times = time_interleaved(contenders, device, warmup=1, repeats=s.batch_repeats)
    ours = _best(times, list(ours_paths))
    reference = _best(times, ["plain eager NCHW", "plain eager channels_last"])
    return _row(f"train googlenet_cifar {s.train_input_size}px", device, s.train_batch, "fp32", "img/s",
                ours, reference, times,
                reference="plain googlenet_cifar, eager, torch's default SGD (torchvision has no 28-px GoogLeNet)")


def bench_train_224(device: torch.device, s: Settings, precision: str = "bf16", compile_ours: bool = True) -> Row:
    """Training step img/s at 224 (the GPU case): ours (fused 1x1, channels_last, compiled)
    vs torchvision's googlenet with its aux heads, same loss and SGD step."""
    tv, ours_src = torchvision_pair(aux_logits=True)
    tv = tv.to(device)
    x = _random_input(s.train_batch, 3, s.input_size, device)
    target = torch.randint(0, 1000, (s.train_batch,), device=device)
    notes: list[str] = []
    ours_path = "fused 1x1, channels_last, fused SGD"
    ours_fn = _train_fn(optimize(copy.deepcopy(ours_src), device, mode="train", compile=compile_ours), x, target,
                        device, precision, channels_last=True, fused_sgd=True)
    if compile_ours:
        if _first_call_works(ours_fn, "compiling ours", notes):
            ours_path += ", compiled"
        else:  # timed without compilation instead
            ours_fn = _train_fn(optimize(ours_src, device, mode="train"), x, target, device, precision,
                                channels_last=True, fused_sgd=True)
    contenders = {
        ours_path: ours_fn,
        "eager NCHW": _train_fn(copy.deepcopy(tv), x, target, device, precision, channels_last=False),
        "eager channels_last": _train_fn(_channels_last(tv), x, target, device, precision, channels_last=True),
    }
    if s.compile_torchvision:
        compiled = _channels_last(tv)
        compiled.compile()
        compiled_fn = _train_fn(compiled, x, target, device, precision, channels_last=True)
        if _first_call_works(compiled_fn, "compiling torchvision", notes):
            contenders["compiled channels_last"] = compiled_fn
    times = time_interleaved(contenders, device, s.warmup, s.batch_repeats)
    return _row(f"train {s.input_size}px", device, s.train_batch, precision, "img/s", (ours_path, times[ours_path]),
                _best(times, [n for n in contenders if n != ours_path]), times, notes=notes)


# ---------------------------------------------------------------- the run
def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {platform.machine()}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


CASES_ENV = "GOOGLENET_BENCH_CASES"  # e.g. "latency,train": run only those cases (bench/gpu.sh)


def run_bench(device: str = "cpu", quick: bool = False, settings: Settings | None = None,
              log: Callable[[str], None] | None = None, cases: Sequence[str] | None = None) -> dict:
    """Run every case for `device` (or only `cases`, by key: see `case_keys`); returns the
    JSON-able report. Without `cases`, the env variable GOOGLENET_BENCH_CASES (comma-separated
    keys) selects them, so a script can run each case in its own process under its own timeout."""
    import torchvision

    dev = resolve_device(device)
    s = settings or Settings.for_device(dev, quick)
    torch.manual_seed(0)
    say = log or (lambda msg: None)
    table = _cases(dev, s)
    if cases is None and os.environ.get(CASES_ENV, "").strip():
        cases = [c.strip() for c in os.environ[CASES_ENV].split(",") if c.strip()]
    if cases is not None:
        unknown = [c for c in cases if c not in table]
        if unknown:
            raise UserError(f"unknown bench case {', '.join(map(repr, unknown))} on {dev.type}; "
                            f"choose from {', '.join(table)}")
        table = {key: table[key] for key in cases}
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    load_before = _load_average()
    rows: list[Row] = []
    for label, case in table.values():
        say(f"bench: {label} ...")
        start = time.perf_counter()
        row = case()
        say(f"bench: {label}: ours {row.ours:g} {row.unit}, reference {row.torchvision:g} {row.unit}, "
            f"speedup {row.speedup:.2f}x ({time.perf_counter() - start:.0f} s)")
        rows.append(row)
    return {
        "machine": machine_description(dev),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "load_average": {"before": load_before, "after": _load_average()},
        "rows": [asdict(r) for r in rows],
    }


def case_keys(device: str | torch.device) -> list[str]:
    """The cases a run on `device` can do, in order (keys for `cases` / GOOGLENET_BENCH_CASES)."""
    dev = torch.device(device)
    return list(_cases(dev, Settings.for_device(dev)))


def _cases(dev: torch.device, s: Settings) -> dict[str, tuple[str, Callable[[], Row]]]:
    if dev.type == "cuda":
        return {
            "latency": ("batch-1 latency", lambda: bench_inference(dev, s.latency_batch, s, "bf16", cuda_graphs=True)),
            "throughput": ("inference", lambda: bench_inference(dev, s.throughput_batch, s, "bf16", compile_ours=True,
                                                                 compile_tv=s.compile_torchvision)),
            "train": ("training step", lambda: bench_train_224(dev, s)),
        }
    cases = {
        "latency": ("batch-1 latency", lambda: bench_inference(dev, s.latency_batch, s)),
        "throughput": ("batch throughput", lambda: bench_inference(dev, s.throughput_batch, s)),
        "train": ("training", lambda: bench_train_cifar_cpu(s)),
    }
    if s.bf16_cpu_row:
        cases["bf16-latency"] = ("bf16 latency (not exact)", lambda: bench_inference(
            dev, s.latency_batch, s, "bf16", case=f"inference latency {s.input_size}px bf16 (not exact)",
            counts=False))
    return cases


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def format_table(report: dict) -> str:
    header = ("case", "batch", "precision", "ours", "torchvision", "unit", "speedup", "ours path", "reference path")
    lines = [header]
    for r in report["rows"]:
        lines.append((r["case"], str(r["batch"]), r["precision"], f"{r['ours']:.4g}", f"{r['torchvision']:.4g}",
                      r["unit"], f"{r['speedup']:.2f}x", r["ours_path"], r["torchvision_path"]))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"machine: {report['machine']}; torch {report['torch']}, torchvision {report['torchvision']}; "
             f"load average {report['load_average']['before']} -> {report['load_average']['after']}"]
    for r in report["rows"]:
        if r["reference"] != "torchvision.models.googlenet":
            notes.append(f"{r['case']}: reference is {r['reference']}")
        if r["max_abs_diff"] is not None:
            verdict = "exact" if r["exact"] else ("not exact" if r["exact"] is False else "n/a")
            notes.append(f"{r['case']}: max |ours - torchvision| = {r['max_abs_diff']:.2e} ({verdict})")
        notes += [f"{r['case']}: {note}" for note in r.get("notes") or []]
    return "\n".join(out + [""] + notes)
