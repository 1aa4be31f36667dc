"""Every variant: shapes, gradients, aux heads (only in train mode, in the right order),
features_only and the paper's loss."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import googlenet
from googlenet.models import spec
from googlenet.models.googlenet import FeatureExtractor


def test_list_models_has_the_family():
    assert googlenet.list_models() == ["googlenet", "googlenet_bn", "googlenet_cifar", "googlenet_cifar_fast",
                                       "googlenet_tv"]


def test_spec_channel_chain_matches_table1():
    outs = [m.out_channels for m in spec.INCEPTION]
    assert outs == [256, 480, 512, 512, 512, 528, 832, 832, 1024]
    assert spec.INCEPTION_BY_NAME["5b"] == spec.InceptionSpec("5b", 384, 192, 384, 48, 128, 128)


def test_shapes_and_no_nan_at_native_size(model_name, native_input):
    model = googlenet.create_model(model_name, num_classes=7)
    x = native_input(model)
    model.train()
    out = model(x)
    assert isinstance(out, googlenet.GoogLeNetOutputs)
    for t in out:
        assert t.shape == (2, 7) and torch.isfinite(t).all()
    model.eval()
    with torch.no_grad():
        logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 7)
    assert torch.isfinite(logits).all()
    feats = model.forward_features(x)
    assert feats.shape[:2] == (2, 1024)
    assert model.forward_head(feats, pre_logits=True).shape == (2, 1024)


def test_gradient_reaches_every_parameter(model_name, small_input):
    model = googlenet.create_model(model_name, num_classes=5, dropout=0.0, dropout_aux=0.0)
    model.train()
    x = small_input(model)
    target = torch.tensor([1, 3])
    googlenet.googlenet_loss(model(x), target).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient reached {name}"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"zero gradient at {name}"


def test_aux_heads_only_in_train_mode_and_in_order(model_name, small_input):
    model = googlenet.create_model(model_name, num_classes=4, dropout_aux=0.0)
    seen: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(_m, inp, out):
            seen[name] = (inp[0] if name.endswith("_in") else out).detach().clone()
        return hook

    model.inception4a.register_forward_hook(keep("4a"))
    model.inception4d.register_forward_hook(keep("4d"))
    model.aux1.register_forward_hook(lambda m, i, o: seen.update(aux1=o.detach().clone(), aux1_in=i[0].detach().clone()))
    model.aux2.register_forward_hook(lambda m, i, o: seen.update(aux2=o.detach().clone(), aux2_in=i[0].detach().clone()))
    x = small_input(model)
    model.train()
    out = model(x)
    # aux1 reads 4a's output, aux2 reads 4d's, and the named tuple returns them as such.
    assert torch.equal(seen["aux1_in"], seen["4a"])
    assert torch.equal(seen["aux2_in"], seen["4d"])
    assert torch.equal(out.aux1, seen["aux1"]) and torch.equal(out.aux2, seen["aux2"])
    seen.clear()
    model.eval()
    with torch.no_grad():
        model(x)
    assert "aux1" not in seen and "aux2" not in seen


def test_aux_logits_false_has_no_heads(model_name, small_input):
    model = googlenet.create_model(model_name, aux_logits=False)
    assert model.aux1 is None and model.aux2 is None
    assert not any(k.startswith("aux") for k in model.state_dict())
    model.train()
    assert isinstance(model(small_input(model)), torch.Tensor)


def test_features_only_matches_feature_info(model_name, small_input):
    extractor = googlenet.create_model(model_name, features_only=True)
    assert isinstance(extractor, FeatureExtractor)
    model = extractor.model
    x = small_input(model)
    extractor.eval()
    with torch.no_grad():
        maps = extractor(x)
        last = model.forward_features(x)
    assert len(maps) == len(extractor.feature_info) == 5
    size = x.shape[-1]
    for fmap, info in zip(maps, extractor.feature_info):
        assert fmap.shape[1] == info["num_chs"]
        assert fmap.shape[-1] == -(-size // info["reduction"]), (info, fmap.shape)
    assert torch.equal(maps[-1], last)


def test_features_only_out_indices():
    extractor = googlenet.create_model("googlenet_cifar", features_only=True, out_indices=(2, 4))
    assert [i["num_chs"] for i in extractor.feature_info] == [480, 1024]
    maps = extractor.eval()(torch.rand(1, 3, 32, 32))
    assert [m.shape[1] for m in maps] == [480, 1024]


def test_paper_loss_weights_aux_by_0_3():
    logits, a1, a2 = torch.randn(3, 4, 5).unbind(0)
    target = torch.tensor([0, 1, 2, 3])
    out = googlenet.GoogLeNetOutputs(logits, a1, a2)
    ce = nn.functional.cross_entropy
    expected = ce(logits, target) + 0.3 * (ce(a1, target) + ce(a2, target))
    assert torch.allclose(googlenet.googlenet_loss(out, target), expected)
    assert torch.allclose(googlenet.googlenet_loss(logits, target), ce(logits, target))


def test_reset_classifier_replaces_head_and_aux():
    model = googlenet.create_model("googlenet_cifar", num_classes=10)
    model.reset_classifier(3)
    assert model.fc.out_features == 3 and model.aux1.fc2.out_features == 3 and model.aux2.fc2.out_features == 3
    model.eval()
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 3)


def test_no_classes_means_no_classifier_as_in_timm(tmp_path):
    """num_classes=0 (or reset_classifier(0)): the pooled 1024 features, train mode included,
    in the plain model and its folded fast form; it used to return an N x 0 tensor."""
    from googlenet.fast.folded import FoldedGoogLeNet

    x = torch.rand(2, 3, 32, 32)
    model = googlenet.create_model("googlenet_cifar", num_classes=0)
    assert model.aux1 is None and model.aux2 is None and isinstance(model.fc, nn.Identity)
    assert model.train()(x).shape == (2, 1024)
    model.eval()
    with torch.no_grad():
        features = model(x)
        assert torch.equal(features, model.forward_head(model.forward_features(x), pre_logits=True))
        torch.testing.assert_close(FoldedGoogLeNet(model).eval()(x), features, atol=1e-5, rtol=1e-5)
    googlenet.save_weights(model, tmp_path / "features.safetensors")
    assert googlenet.load_weights(tmp_path / "features.safetensors").eval()(x).shape == (2, 1024)

    classifier = googlenet.create_model("googlenet_cifar", num_classes=10)
    classifier.reset_classifier(0)
    assert classifier.eval()(x).shape == (2, 1024) and classifier.aux1 is None
    classifier.reset_classifier(4)  # and back
    assert classifier.fc.out_features == 4 and classifier.aux1.fc2.out_features == 4
    with pytest.raises(ValueError, match="num_classes must be >= 0"):
        googlenet.create_model("googlenet_cifar", num_classes=-1)


def _count(model, kind):
    return sum(isinstance(m, kind) for m in model.modules())


def test_variants_differ_as_designed():
    paper = googlenet.create_model("googlenet")
    assert _count(paper, nn.BatchNorm2d) == 0 and _count(paper, nn.LocalResponseNorm) == 2
    lrn = paper.lrn1
    assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 1e-4, 0.75, 1.0)
    assert paper.inception3a.branch3[1].conv.kernel_size == (5, 5)
    assert paper.conv1.conv.kernel_size == (7, 7) and paper.conv1.conv.stride == (2, 2)
    assert paper.dropout.p == 0.4 and paper.aux1.dropout.p == 0.7
    assert paper.aux1.fc1.in_features == 128 * 4 * 4 and paper.aux1.fc1.out_features == 1024

    bn = googlenet.create_model("googlenet_bn")
    convs = _count(bn, nn.Conv2d)
    assert _count(bn, nn.BatchNorm2d) == convs and _count(bn, nn.LocalResponseNorm) == 0
    assert bn.inception3a.branch3[1].conv.kernel_size == (5, 5)

    tv = googlenet.create_model("googlenet_tv")
    assert tv.inception3a.branch3[1].conv.kernel_size == (3, 3)
    assert tv.maxpool4.kernel_size == 2 and tv.conv1.bn.eps == 1e-3

    cifar = googlenet.create_model("googlenet_cifar", in_chans=1)
    assert cifar.conv1.conv.in_channels == 1 and cifar.conv1.conv.stride == (1, 1)
    assert len(cifar.inception3a.branch3) == 3  # 1x1 reduce, then two 3x3
    assert cifar(torch.rand(2, 1, 16, 16)).logits.shape == (2, 10)


def test_unknown_model_suggests_closest():
    with pytest.raises(googlenet.UserError, match="did you mean 'googlenet_bn'"):
        googlenet.create_model("googlenet_nb")


def test_cifar_fast_is_cifar_with_the_pool_before_stage3():
    """Same parameters (a checkpoint loads across), stages 3-5 at half size, ~1/3 the work."""
    plain = googlenet.create_model("googlenet_cifar", in_chans=1)
    fast = googlenet.create_model("googlenet_cifar_fast", in_chans=1)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {k: v.shape for k, v in fast.state_dict().items()}
    fast.load_state_dict(plain.state_dict())
    x = torch.rand(2, 1, 28, 28)
    assert plain.forward_stem(x).shape[-1] == 28 and fast.forward_stem(x).shape[-1] == 14
    maps = googlenet.create_model("googlenet_cifar_fast", in_chans=1, features_only=True).eval()(x)
    assert [m.shape[-1] for m in maps] == [28, 28, 14, 7, 3]
    from googlenet.summary import summarize
    ops = {name: summarize(googlenet.create_model(name, in_chans=1), 28)["total"]["ops"]
           for name in ("googlenet_cifar", "googlenet_cifar_fast")}
    ratio = ops["googlenet_cifar"] / ops["googlenet_cifar_fast"]
    assert 3.0 < ratio < 3.5
    with pytest.raises(ValueError, match="stem_pool"):
        from googlenet.models.googlenet import GoogLeNet, Variant
        GoogLeNet(Variant(stem="paper", stem_pool=True))
