"""The fast paths are exact: same outputs as the plain model, same state_dict."""
from __future__ import annotations

import contextlib
import copy
import functools

import pytest
import torch
from torch import nn

import googlenet
from googlenet.fast import FusedInception, InferenceModel, optimize

# fp32 eval tolerance, relative to the output's scale: |out - ref| <= 2e-5 * max|ref|.
# Reordered fp32 sums (merged convs, folded weights, channels_last) move GoogLeNet's
# logits by ~1e-5 of their scale; the plain model itself moves ~0.5e-5 between NCHW and
# channels_last. A wrong fold or split is off by O(1).
EVAL_RTOL = 2e-5
# ncnn computes 3x3 convolutions with Winograd transforms: exact algebra, more fp32 roundings.
# On these tests' adversarial weights (batch-norm statistics from one batch) its logits are
# within 3.2e-5 of the scale of the plain fp32 model's, and 2.8e-5 of a float64 reference,
# where the plain fp32 model is itself 1.3e-5 off float64; on trained Fashion-MNIST weights
# all of these are below 1e-6. A wrong conversion is off by O(1).
WINOGRAD_RTOL = 5e-5


def assert_exact(out: torch.Tensor, ref: torch.Tensor, rtol: float = EVAL_RTOL) -> None:
    assert out.shape == ref.shape
    scale = ref.abs().max().item()
    assert scale > 0.5  # the comparison has something to compare
    err = (out.float() - ref.float()).abs().max().item()
    assert err <= rtol * scale, f"max |out - ref| = {err:.3g} > {rtol} x {scale:.3g}"


SIZE = {"googlenet_cifar": 16, "googlenet_cifar_fast": 16}  # others run at 64 px to stay fast


def _realistic(model: nn.Module, size: int) -> nn.Module:
    """Non-trivial weights and batch-norm statistics, O(1) logits: so a wrong fold shows."""
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu", generator=gen)
            if m.bias is not None:
                nn.init.uniform_(m.bias, -0.1, 0.1, generator=gen)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5, generator=gen)
            nn.init.uniform_(m.bias, -0.2, 0.2, generator=gen)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=(1.0 / m.in_features) ** 0.5, generator=gen)
    # Running statistics from one batch (momentum 1), then perturbed so eval != train.
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(torch.rand(4, model.in_chans, size, size, generator=gen) + 0.1)
    for bn in bns:
        bn.momentum = 0.1
        bn.running_mean.add_(0.05 * torch.randn(bn.running_mean.shape, generator=gen))
        bn.running_var.mul_(torch.empty(bn.running_var.shape).uniform_(0.8, 1.25, generator=gen))
    return model.eval()


@functools.lru_cache(maxsize=None)
def _realistic_model(name: str, aux_logits: bool = True) -> nn.Module:
    size = SIZE.get(name, 64)
    model = googlenet.create_model(name, dropout=0.0, dropout_aux=0.0, aux_logits=aux_logits)
    return _realistic(model, size)


def _pair(name: str, aux_logits: bool = True) -> tuple[nn.Module, nn.Module, int]:
    """Two independent copies of one realistic model (built once per test session)."""
    plain = _realistic_model(name, aux_logits)
    return copy.deepcopy(plain), copy.deepcopy(plain), SIZE.get(name, 64)


def _input(model: nn.Module, size: int, batch: int = 2) -> torch.Tensor:
    return torch.rand(batch, model.in_chans, size, size) + 0.1


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=1e-6, msg=key)


def _train_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> tuple:
    """One SGD step; returns (outputs, loss, gradients by name)."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    out = model(x)
    assert isinstance(out, googlenet.GoogLeNetOutputs)
    loss = googlenet.googlenet_loss(out, target)
    loss.backward()
    grads = {n: p.grad.detach().double() for n, p in model.named_parameters()}
    opt.step()
    return out, loss, grads


@pytest.mark.parametrize("name", ["googlenet_tv", "googlenet_cifar", "googlenet"])
def test_train_mode_fusion_matches_plain_model(name):
    """The fused 1x1 convs alone (NCHW): logits, aux logits and loss match the plain
    model, gradients are as close to a float64 run as the plain model's own, and the
    batch-norm running statistics are written back after the step."""
    plain, fused, size = _pair(name)
    truth = copy.deepcopy(plain).double()
    optimize(fused, "cpu", mode="train", channels_last=False)
    assert sum(isinstance(m, FusedInception) for m in fused.modules()) == 9
    _assert_same_state(plain, fused)  # same keys, same values

    x = _input(plain, size, batch=4)
    target = torch.randint(0, plain.num_classes, (4,))
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    out_p, loss_p, grads_p = _train_step(plain, x, target)
    out_f, loss_f, grads_f = _train_step(fused, x, target)
    _, _, grads_t = _train_step(truth, x.double(), target)
    for a, b in zip(out_p, out_f):  # logits, aux1, aux2
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5)
    torch.testing.assert_close(loss_f, loss_p, rtol=0, atol=1e-5)
    # Train-mode BN on 4 images makes fp32 gradients of early layers ~0.3% off a float64
    # run for the plain model too; the fused model must be no further off than that.
    assert list(grads_p) == list(grads_f)
    for key, g_true in grads_t.items():
        plain_err = (grads_p[key] - g_true).abs().max().item()
        fused_err = (grads_f[key] - g_true).abs().max().item()
        scale = g_true.abs().max().item()
        assert fused_err <= 2 * plain_err + 1e-6 * scale, f"grad of {key}: {fused_err:.3g} vs plain {plain_err:.3g}"
    # Running statistics (computed in the forward pass) written back to the plain keys.
    sp, sf = plain.state_dict(), fused.state_dict()
    assert list(sp) == list(sf)
    for key in sp:
        if "running_" in key or "num_batches" in key:
            assert not torch.equal(sp[key], before[key]) or "num_batches" in key
            torch.testing.assert_close(sf[key], sp[key], rtol=1e-5, atol=1e-6, msg=key)
    if name != "googlenet":  # the paper's model has no batch norm
        key = "inception3a.branch1.bn.num_batches_tracked"
        assert int(sf[key]) == int(before[key]) + 1


def test_train_mode_channels_last_matches_within_layout_rounding():
    """With channels_last on top, train-mode outputs differ only as much as the plain
    model's own NCHW vs channels_last outputs do (small-batch BN amplifies rounding)."""
    plain, fused, size = _pair("googlenet_tv")
    optimize(fused, "cpu", mode="train")
    plain_cl = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    x = _input(plain, size, batch=4)
    for m in (plain, fused, plain_cl):
        m.train()
    with torch.no_grad():
        ref, out, ref_cl = plain(x), fused(x), plain_cl(x)
    for a, b, c in zip(ref, out, ref_cl):
        layout_noise = (c - a).abs().max().item()
        assert (b - a).abs().max().item() <= max(2 * layout_noise, 1e-5)


@pytest.mark.parametrize("name", ["googlenet_tv", "googlenet"])  # with and without batch norm
def test_train_mode_fusion_is_exact_in_eval(name):
    plain, fused, size = _pair(name)
    optimize(fused, "cpu", mode="train").eval()
    x = _input(plain, size)
    with torch.no_grad():
        ref = plain(x)
        assert_exact(fused(x), ref)


def _skip_without(backend: str) -> None:
    """Skip a backend whose optional packages (the onnx / ncnn extras) are not installed."""
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    if backend == "ncnn":
        pytest.importorskip("ncnn")
        pytest.importorskip("pnnx")


@pytest.mark.parametrize("name,backend", [
    ("googlenet_tv", "mkldnn"), ("googlenet_cifar", "mkldnn"), ("googlenet", "mkldnn"), ("googlenet_tv", "eager"),
    ("googlenet_tv", "onnxruntime"), ("googlenet_cifar_fast", "onnxruntime"),
    ("googlenet_tv", "ncnn"), ("googlenet", "ncnn"), ("googlenet_cifar", "ncnn"), ("googlenet_cifar_fast", "ncnn"),
])
def test_inference_model_matches_plain_eval(name, backend):
    plain, source, size = _pair(name, aux_logits=False)
    if backend == "mkldnn" and not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch build")
    _skip_without(backend)
    fast = optimize(source, "cpu", mode="inference", backend=backend, example_shape=(2, plain.in_chans, size, size))
    assert fast.resolved_backend == backend
    x = _input(plain, size)
    with torch.no_grad():
        ref = plain(x)
    out = fast(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    rtol = WINOGRAD_RTOL if backend == "ncnn" else EVAL_RTOL
    assert_exact(out, ref, rtol)
    # Other batch sizes than the oneDNN layout was prepared for (or, for ONNX Runtime, than
    # the exported graph: batch 1 has its own fixed-shape graph) give the same answer --
    # checked against the plain model in float64, as two fp32 paths' rounding can add up.
    plain64 = copy.deepcopy(plain).double()
    for batch in (3, 1):
        xb = _input(plain, size, batch=batch)
        with torch.no_grad():
            assert_exact(fast(xb), plain64(xb.double()).float(), rtol)


@pytest.mark.parametrize("backend", ["auto", "ncnn"])
def test_inference_model_at_224_matches_torchvision_weights_layout(backend):
    """googlenet_tv at its native size (where ncnn runs most 3x3 convs with Winograd), aux heads
    kept in the state_dict."""
    _skip_without(backend)
    plain, source, _ = _pair("googlenet_tv")
    fast = optimize(source, "cpu", mode="inference", backend=backend)
    x = _input(plain, 224, batch=1)
    with torch.no_grad():
        assert_exact(fast(x), plain(x), WINOGRAD_RTOL if backend == "ncnn" else EVAL_RTOL)


@pytest.mark.parametrize("backend", ["auto", "onnxruntime", "ncnn"])
def test_inference_model_state_dict_round_trip(tmp_path, backend):
    _skip_without(backend)
    rtol = WINOGRAD_RTOL if backend == "ncnn" else EVAL_RTOL
    plain, source, size = _pair("googlenet_cifar")
    fast = optimize(source, "cpu", mode="inference", example_shape=(2, 3, size, size), backend=backend)
    _assert_same_state(plain, fast)  # same keys, same values (aux heads included)

    # Loading other weights refolds: the outputs follow the new weights.
    other, _, _ = _pair("googlenet_cifar")
    for p in other.parameters():
        p.data.mul_(1.1)
    fast.load_state_dict(other.state_dict())
    x = _input(plain, size)
    with torch.no_grad():
        assert_exact(fast(x), other.eval()(x), rtol)

    # save_weights writes the plain keys; the file loads into a plain model.
    path = googlenet.save_weights(fast, tmp_path / "fast.safetensors")
    reloaded = googlenet.load_weights(path).eval()
    with torch.no_grad():
        assert_exact(fast(x), reloaded(x), rtol)


def test_trained_fused_model_saves_plain_weights(tmp_path):
    plain, fused, size = _pair("googlenet_cifar")
    optimize(fused, "cpu", mode="train")
    path = googlenet.save_weights(fused, tmp_path / "w.safetensors")
    reloaded = googlenet.load_weights(path).eval()
    assert not any(isinstance(m, FusedInception) for m in reloaded.modules())
    x = _input(plain, size)
    with torch.no_grad():
        assert_exact(reloaded(x), plain(x))


def test_inference_model_is_eval_only():
    plain, source, _ = _pair("googlenet_cifar", aux_logits=False)
    fast = optimize(source, "cpu", mode="inference", example_shape=(1, 3, 28, 28))
    assert isinstance(fast, InferenceModel)
    with pytest.raises(RuntimeError, match="eval-only"):
        fast.train()


def test_optimize_rejects_bad_arguments():
    model = googlenet.create_model("googlenet_cifar")
    with pytest.raises(ValueError, match="mode"):
        optimize(model, "cpu", mode="fast")
    with pytest.raises(ValueError, match="precision"):
        optimize(model, "cpu", precision="fp8")
    with pytest.raises(ValueError, match="backend"):
        optimize(model, "cpu", backend="tensorrt")
    with pytest.raises(ValueError, match="onnxruntime"):
        optimize(model, "cpu", precision="bf16", backend="onnxruntime")
    with pytest.raises(ValueError, match="ncnn"):
        optimize(model, "cpu", precision="bf16", backend="ncnn")
    with pytest.raises(TypeError):
        optimize(nn.Linear(2, 2), "cpu")


def test_ncnn_backend_without_its_packages_names_the_extra(monkeypatch):
    import googlenet.ncnn_backend as ncnn_backend

    monkeypatch.setattr(ncnn_backend, "ncnn_available", lambda: False)  # what require_ncnn asks
    with pytest.raises(ImportError, match=r"googlenet\[ncnn\]"):
        optimize(googlenet.create_model("googlenet_cifar"), "cpu", backend="ncnn")


def test_folded_bias_follows_the_weight_device_and_dtype():
    """A conv with neither bias nor batch norm folds to a zero bias beside its weight (it was
    made on the CPU in fp32: a device mismatch in torch.cat once the model is on a GPU)."""
    from googlenet.fast.folded import ConvReLU
    from googlenet.models.layers import ConvNormAct

    blocks = [ConvNormAct(4, n, 1, norm=False) for n in (2, 3)]
    for block in blocks:
        block.conv.register_parameter("bias", None)
        block.to(device="meta", dtype=torch.float64)
    merged = ConvReLU.merged(blocks)
    assert merged.bias.shape == (5,) and merged.bias.device.type == "meta"
    assert merged.bias.dtype == torch.float64


class _FakeGraph:
    """Stands in for torch.cuda.CUDAGraph on the CPU: ops recorded while capturing are
    replayed into the same output tensors, as a real graph writes into the same memory."""

    capturing: "_FakeGraph | None" = None
    captures = 0

    def __init__(self) -> None:
        self.ops: list = []

    def replay(self) -> None:
        with torch.inference_mode():  # a replay writes memory; autograd never sees it
            for op in self.ops:
                op()


class _FakeStream:
    def wait_stream(self, other: "_FakeStream") -> None:
        pass


class _FakeCapture:
    def __init__(self, graph: _FakeGraph) -> None:
        self.graph = graph

    def __enter__(self):
        _FakeGraph.capturing = self.graph
        _FakeGraph.captures += 1

    def __exit__(self, *exc):
        _FakeGraph.capturing = None


def test_cuda_graph_runner_copies_in_and_out(monkeypatch):
    """CUDAGraphRunner's bookkeeping, with a fake graph on the CPU: the input goes through the
    static buffer, replays see new inputs, a result is never overwritten by a later replay
    (callers keep fresh tensors), and each input shape gets its own capture after warm-up."""
    from googlenet.fast import cuda_graph

    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", _FakeCapture)
    monkeypatch.setattr(torch.cuda, "Stream", _FakeStream)
    monkeypatch.setattr(torch.cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "current_stream", _FakeStream)
    _FakeGraph.captures = 0
    calls = []

    def fn(x: torch.Tensor) -> torch.Tensor:
        calls.append(x)
        out = x * 2 + 1
        graph = _FakeGraph.capturing
        if graph is not None:  # the graph replays this op into `out`, reading `x`'s memory
            graph.ops.append(lambda: out.copy_(x * 2 + 1))
        return out

    runner = cuda_graph.CUDAGraphRunner(fn, warmup=2)
    x1 = torch.arange(6.0).view(2, 3)
    y1 = runner(x1)
    assert len(calls) == 3 and _FakeGraph.captures == 1  # 2 warm-up calls, 1 capture
    assert all(c is not x1 for c in calls)  # the static buffer, never the caller's tensor
    x1.fill_(100)  # the caller's tensor is not read again
    y2 = runner(torch.ones(2, 3))
    assert len(calls) == 3  # a replay, not a call
    assert torch.equal(y2, torch.full((2, 3), 3.0))
    assert torch.equal(y1, torch.arange(6.0).view(2, 3) * 2 + 1)  # not overwritten by the replay
    y3 = runner(torch.ones(4, 3))  # a new shape: warm-up and capture again
    assert _FakeGraph.captures == 2 and len(runner.graphs) == 2 and torch.equal(y3, torch.full((4, 3), 3.0))
    with torch.inference_mode():  # captured inside inference_mode, as InferenceModel.forward calls it
        runner(torch.ones(5, 3))
    assert torch.equal(runner(torch.zeros(5, 3)), torch.ones(5, 3))  # then replayed outside it


def test_fused_inception_traces_as_one_graph():
    """torch.compile(fullgraph=True) traces a train-mode FusedInception (batch norm running
    statistics written back) without a graph break; outputs and buffers match eager."""
    torch._dynamo.reset()
    block = googlenet.create_model("googlenet_tv").inception3a
    eager = FusedInception(copy.deepcopy(block)).train()
    traced = FusedInception(copy.deepcopy(block)).train()
    compiled = torch.compile(traced, backend="aot_eager", fullgraph=True)
    x = torch.rand(2, 192, 8, 8).contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(compiled(x), eager(x), rtol=0, atol=1e-6)
    for (key, a), b in zip(eager.state_dict().items(), traced.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=key)
    assert int(traced.branch1.bn.num_batches_tracked) == 1


@pytest.mark.slow
def test_train_mode_model_compiles_as_one_graph():
    """What the GPU bench compiles (fused 1x1 convs, channels_last, aux heads, train mode):
    one graph, no break, forward, backward and batch-norm statistics as in eager mode."""
    torch._dynamo.reset()
    plain = googlenet.create_model("googlenet_tv", dropout=0.0, dropout_aux=0.0)
    eager = optimize(copy.deepcopy(plain), "cpu", mode="train").train()
    compiled = optimize(copy.deepcopy(plain), "cpu", mode="train").train()
    compiled.compile(backend="aot_eager", fullgraph=True)
    x = torch.rand(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    target = torch.tensor([1, 2])
    results = []
    for model in (eager, compiled):
        out = model(x)
        assert isinstance(out, googlenet.GoogLeNetOutputs)
        googlenet.googlenet_loss(out, target).backward()
        results.append((out, {n: p.grad for n, p in model.named_parameters()}, model.state_dict()))
    (out_e, grad_e, state_e), (out_c, grad_c, state_c) = results
    for a, b in zip(out_e, out_c):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    for key in grad_e:
        torch.testing.assert_close(grad_c[key], grad_e[key], rtol=1e-4, atol=1e-4, msg=key)
    for key in state_e:
        torch.testing.assert_close(state_c[key], state_e[key], rtol=1e-5, atol=1e-6, msg=key)


def test_folded_engine_traces_as_one_graph():
    """The inference engine torch.compile sees on the GPU (bench's batch-256 row): one graph."""
    torch._dynamo.reset()
    _, source, _ = _pair("googlenet_tv", aux_logits=False)
    fast = optimize(source, "cpu", mode="inference", backend="eager")
    compiled = torch.compile(fast.engine, backend="aot_eager", fullgraph=True)
    x = fast._prepare(_input(source, 64))
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), fast.engine(x), rtol=0, atol=1e-5)


# ---------------------------------------------------------------- CUDA (skipped without a GPU)
gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
GPU_RTOL = 1e-4  # fp32 on the GPU, TF32 off: cuDNN's algorithms reorder sums differently than the CPU


@pytest.fixture
def no_tf32():
    """fp32 convolutions in fp32: cuDNN defaults to TF32 (10-bit mantissa), whose rounding
    through 57 layers is larger than the difference a wrong fold would make."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.gpu
@gpu
def test_cuda_graph_inference_matches_eager(no_tf32):
    plain, source, _ = _pair("googlenet_tv", aux_logits=False)
    plain = plain.cuda()
    fast = optimize(source, "cuda", mode="inference", cuda_graphs=True)
    x = _input(plain, 224, batch=1).cuda()
    with torch.no_grad():
        ref, ref_half = plain(x), plain(x * 0.5)
    out = fast(x)
    assert_exact(out, ref, GPU_RTOL)
    assert_exact(fast(x * 0.5), ref_half, GPU_RTOL)  # the replay sees the new input
    assert_exact(out, ref, GPU_RTOL)  # and did not overwrite the first result
    assert len(fast._run.graphs) == 1
    x2 = _input(plain, 224, batch=2).cuda()
    with torch.no_grad():
        assert_exact(fast(x2), plain(x2), GPU_RTOL)
    assert len(fast._run.graphs) == 2  # one graph per input shape


@pytest.mark.gpu
@gpu
def test_bf16_cuda_graph_replays_the_eager_engine():
    _, source, _ = _pair("googlenet_tv", aux_logits=False)
    eager = optimize(copy.deepcopy(source), "cuda", mode="inference", precision="bf16")
    graphed = optimize(source, "cuda", mode="inference", precision="bf16", cuda_graphs=True)
    x = _input(source, 224, batch=1).cuda()
    ref = eager(x)
    assert ref.dtype == torch.float32 and eager.engine.fc_weight.dtype == torch.bfloat16
    for _ in range(3):  # capture, then replays
        assert_exact(graphed(x), ref, 1e-2)


@pytest.mark.gpu
@gpu
def test_fused_train_step_on_cuda_in_bf16_matches_plain():
    """The training row's model on the GPU: fused, channels_last, bf16 autocast; loss and
    batch-norm statistics as the plain model's within bf16 rounding."""
    plain, fused, size = _pair("googlenet_tv")
    plain = plain.cuda().to(memory_format=torch.channels_last)
    optimize(fused, "cuda", mode="train")
    x = _input(plain, size, batch=8).cuda().contiguous(memory_format=torch.channels_last)
    target = torch.randint(0, plain.num_classes, (8,), device="cuda")
    losses = []
    for model in (plain, fused):
        model.train()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = googlenet.googlenet_loss(model(x), target)
        loss.backward()
        losses.append(loss.float())
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    torch.testing.assert_close(losses[1], losses[0], rtol=2e-2, atol=0)
    key = "inception4e.branch3.0.bn.running_mean"
    torch.testing.assert_close(fused.state_dict()[key], plain.state_dict()[key], rtol=5e-2, atol=5e-2)
