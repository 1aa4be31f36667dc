"""Exact fast paths for GoogLeNet: same network, same weights, same outputs, less time.

    >>> import googlenet, googlenet.fast
    >>> model = googlenet.create_model("googlenet_tv")
    >>> fast = googlenet.fast.optimize(model, "cpu", mode="inference")   # eval-only, logits out
    >>> train_model = googlenet.fast.optimize(model, "cuda", mode="train")  # in place, trainable

mode="train" changes how the model computes, not what: each Inception module's three
input 1x1 convs (+ batch norms) run as one (`FusedInception`), activations are
channels_last, and optionally the model is compiled in place. The module tree,
parameters and state_dict keys stay those of the plain model, so optimizers,
checkpoints and `save_weights` work unchanged.

mode="inference" returns an `InferenceModel`: batch norm folded into the convs, merged
1x1 convs, channels_last, oneDNN convs with fused ReLU on CPU (or, with backend=
"onnxruntime"/"ncnn", the verified export run outside PyTorch); on CUDA it stays fp32 and
eager unless asked: precision="bf16", compile=True and cuda_graphs=True (small fixed
batches). Its state_dict is the source model's; loading a state_dict refolds.
"""
from __future__ import annotations

from .fused_inception import FusedInception, fuse_inception_modules
from .inference import InferenceModel, optimize

__all__ = ["FusedInception", "InferenceModel", "fuse_inception_modules", "optimize"]
