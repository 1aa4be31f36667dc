"""The fast paths are exact: same outputs as the plain model, same state_dict."""
from __future__ import annotations

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


def assert_exact(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape
    scale = ref.abs().max().item()
    assert scale > 0.5  # the comparison has something to compare
    err = (out - ref).abs().max().item()
    assert err <= EVAL_RTOL * scale, f"max |out - ref| = {err:.3g} > {EVAL_RTOL} x {scale:.3g}"
SIZE = {"googlenet_cifar": 16}  # others run at 64 px to stay fast


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


@pytest.mark.parametrize("name,backend", [
    ("googlenet_tv", "mkldnn"), ("googlenet_cifar", "mkldnn"), ("googlenet", "mkldnn"), ("googlenet_tv", "eager"),
])
def test_inference_model_matches_plain_eval(name, backend):
    plain, source, size = _pair(name, aux_logits=False)
    if backend == "mkldnn" and not torch.backends.mkldnn.is_available():
        pytest.skip("no oneDNN in this torch build")
    fast = optimize(source, "cpu", mode="inference", backend=backend, example_shape=(2, plain.in_chans, size, size))
    assert fast.resolved_backend == backend
    x = _input(plain, size)
    with torch.no_grad():
        ref = plain(x)
    out = fast(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert_exact(out, ref)
    # Another batch size than the oneDNN layout was prepared for still gives the same answer.
    x3 = _input(plain, size, batch=3)
    with torch.no_grad():
        assert_exact(fast(x3), plain(x3))


def test_inference_model_at_224_matches_torchvision_weights_layout():
    """googlenet_tv at its native size, aux heads kept in the state_dict."""
    plain, source, _ = _pair("googlenet_tv")
    fast = optimize(source, "cpu", mode="inference")
    x = _input(plain, 224, batch=1)
    with torch.no_grad():
        assert_exact(fast(x), plain(x))


def test_inference_model_state_dict_round_trip(tmp_path):
    plain, source, size = _pair("googlenet_cifar")
    fast = optimize(source, "cpu", mode="inference", example_shape=(2, 3, size, size))
    _assert_same_state(plain, fast)  # same keys, same values (aux heads included)

    # Loading other weights refolds: the outputs follow the new weights.
    other, _, _ = _pair("googlenet_cifar")
    for p in other.parameters():
        p.data.mul_(1.1)
    fast.load_state_dict(other.state_dict())
    x = _input(plain, size)
    with torch.no_grad():
        assert_exact(fast(x), other.eval()(x))

    # save_weights writes the plain keys; the file loads into a plain model.
    path = googlenet.save_weights(fast, tmp_path / "fast.safetensors")
    reloaded = googlenet.load_weights(path).eval()
    with torch.no_grad():
        assert_exact(fast(x), reloaded(x))


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
    with pytest.raises(TypeError):
        optimize(nn.Linear(2, 2), "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_inference_matches_eager():
    plain, source, _ = _pair("googlenet_tv", aux_logits=False)
    plain = plain.cuda()
    fast = optimize(source, "cuda", mode="inference", cuda_graphs=True)
    x = _input(plain, 224, batch=1).cuda()
    with torch.no_grad():
        ref = plain(x)
    torch.testing.assert_close(fast(x), ref, rtol=1e-3, atol=1e-3)  # TF32/cuDNN algorithms
    torch.testing.assert_close(fast(x * 0.5), plain(x * 0.5), rtol=1e-3, atol=1e-3)  # replay sees new input
