"""Run an exported GoogLeNet .onnx file with onnxruntime (CPU): the deployment side of export.

A deployment needs only the .onnx file and onnxruntime: the preprocessing (input size,
resize, mean, std) and the class names travel inside the file as ONNX metadata_props,
each value JSON-encoded, written by `googlenet.export`.

    >>> clf = OnnxClassifier("model.onnx")
    >>> clf.meta["class_names"][:2], clf.meta["input_size"]
    >>> logits = clf(batch)  # float N x C x H x W, already normalised
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .errors import UserError, first_line

# Written into every export so a reader can tell our files from other ONNX models.
ONNX_META_FORMAT = "googlenet-onnx/1"
# Keys predict/eval need; the exporter always writes them.
REQUIRED_META = ("class_names", "input_size", "resize", "mean", "std", "in_chans", "model")


def encode_metadata(meta: dict) -> dict[str, str]:
    """The metadata_props form: every value JSON-encoded (as in our safetensors files)."""
    return {str(k): json.dumps(v) for k, v in meta.items()}


def decode_metadata(props: dict[str, str]) -> dict:
    decoded = {}
    for key, value in props.items():
        try:
            decoded[key] = json.loads(value)
        except (json.JSONDecodeError, TypeError):
            decoded[key] = value  # someone else's plain-string entry: keep it as is
    return decoded


class OnnxClassifier:
    """An exported GoogLeNet in an onnxruntime session on the CPU execution provider.

    `meta` holds class_names, input_size, resize, mean, std, dataset, in_chans, model (and
    num_classes, int8, opset). Calling it with a float N x C x H x W tensor that is already
    normalised returns the logits as a float tensor N x num_classes.
    """

    backend = "ONNX Runtime on the CPU"

    def __init__(self, path: str | os.PathLike, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"ONNX model not found: {self.path}; make one with "
                            "`googlenet export WEIGHTS --format onnx`")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only: keep the CLI output clean
        # Workers spin between the graph's ops (fast) but stop when run() returns, so the
        # PyTorch code around each call (decoding, preprocessing) gets the cores back.
        options.add_session_config_entry("session.force_spinning_stop", "1")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
            raise UserError(f"{self.path} is not a valid ONNX model ({first_line(e, 200)}); "
                            "make one with `googlenet export WEIGHTS --format onnx`") from None
        props = self.session.get_modelmeta().custom_metadata_map
        self.meta = decode_metadata(dict(props))
        if self.meta.get("format") != ONNX_META_FORMAT:
            raise UserError(f"{self.path}: an ONNX model, but not one exported by googlenet (no "
                            "preprocessing metadata); export it with `googlenet export WEIGHTS --format onnx`")
        missing = [k for k in REQUIRED_META if k not in self.meta]
        if missing:
            raise UserError(f"{self.path}: metadata lacks {', '.join(missing)}; re-export it with "
                            "`googlenet export WEIGHTS --format onnx`")
        (self._input,) = self.session.get_inputs()
        self._output = self.session.get_outputs()[0].name
        batch_dim = self._input.shape[0]
        # A file exported without --dynamic-batch takes exactly this many images per run.
        self.fixed_batch: int | None = batch_dim if isinstance(batch_dim, int) else None

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise UserError(f"expected a batch N x C x H x W, got shape {tuple(x.shape)}")
        expected = tuple(d if isinstance(d, int) else None for d in self._input.shape[1:])
        got = tuple(x.shape[1:])
        if any(e is not None and e != g for e, g in zip(expected, got)):
            raise UserError(f"{self.path} takes inputs N x {' x '.join(str(d) for d in expected)}, "
                            f"got {' x '.join(str(d) for d in x.shape)}")
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        if self.fixed_batch is None or len(array) == self.fixed_batch:
            return torch.from_numpy(self._run(array))
        step = self.fixed_batch
        if len(array) % step:
            raise UserError(f"{self.path} was exported for batches of {step}; "
                            "re-export with --dynamic-batch to run other batch sizes")
        outputs = [self._run(array[i:i + step]) for i in range(0, len(array), step)]
        return torch.from_numpy(__import__("numpy").concatenate(outputs))

    def _run(self, array):
        return self.session.run([self._output], {self._input.name: array})[0]

    def __repr__(self) -> str:
        return (f"OnnxClassifier({str(self.path)!r}, model={self.meta.get('model')!r}, "
                f"input={self.meta.get('in_chans')}x{self.meta.get('input_size')}px, "
                f"int8={self.meta.get('int8', False)})")
