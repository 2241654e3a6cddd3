"""Export a fine-tuned classifier for use without this project: ONNX or TorchScript, plus the
preprocessing spec a consumer needs to feed it (no web imports).

ONNX comes from torch's default (``torch.export``-based) exporter, which needs onnxscript
and nothing from the network; the legacy TorchScript-based exporter (``dynamo=False``) is
deprecated in torch 2.9+ and is only the fallback when the default one fails. TorchScript
comes from ``torch.jit.trace``: the classifiers have no data-dependent control flow, and
tracing works for every architecture the service builds (torch 2.14 flags ``torch.jit`` as
deprecated with a FutureWarning that no call avoids; the format is still what
``torch.jit.load`` reads).
"""

import copy
import json
import logging
import threading
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from app.families import get_spec

logger = logging.getLogger("p2l.export")

ExportFormat = Literal["onnx", "torchscript"]
# The model file inside an export, by format.
MODEL_FILES: dict[str, str] = {"onnx": "model.onnx", "torchscript": "model.pt"}
PREPROCESSING_FILE = "preprocessing.json"
# Every op of the classifiers exists in opset 18, which onnxruntime 1.14+ runs.
ONNX_OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# One export at a time per process: torch.export and tracing keep global state, and an export
# takes seconds of every core, so concurrent ones would only queue for the CPU anyway.
_EXPORT_LOCK = threading.Lock()

RESIZE_WORDS = (
    "centre-square crop and resize: scale the image so that its shorter side is input_size "
    "pixels (the longer side rounded to the nearest pixel), then cut the centre "
    "input_size x input_size square (offsets floor((scaled - input_size) / 2)); bilinear "
    "(PIL Image.resize with BILINEAR and box = that square in source coordinates, as "
    "app.imaging.images.square_pixels does). Downscales by more than 2x first average whole "
    "pixel blocks aligned to the full image (Pillow Image.reduce), so a plain bilinear resize "
    "of a large image differs by a few grey levels. Transparency is composited on white; grey "
    "or palette images are converted to RGB first."
)


def preprocessing_spec(
    architecture: str, input_size: int, class_names: list[str]
) -> dict[str, Any]:
    """What a consumer does to an image before the exported model sees it, and what it gets."""
    spec = get_spec(architecture)
    return {
        "architecture": architecture,
        "input_size": input_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "class_names": list(class_names),
        "layout": "NCHW",
        "color": "RGB",
        "scale": "0..1 (pixel / 255)",
        "normalize": "(pixel / 255 - mean) / std, per channel",
        "resize": RESIZE_WORDS,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "dtype": "float32",
        "output": "logits; softmax gives probabilities",
    }


def export_model(
    model: nn.Module,
    format: ExportFormat,
    architecture: str,
    input_size: int,
    class_names: list[str],
    folder: Path,
) -> dict[str, Any]:
    """Write the model file and ``preprocessing.json`` into ``folder``; returns what was made.

    ``model`` is not touched: a copy is exported (the caller's may be serving predictions
    in another thread meanwhile).
    """
    if format not in MODEL_FILES:
        raise ValueError(f"unknown export format {format!r}; choose one of {list(MODEL_FILES)}")
    network = copy.deepcopy(model).cpu().float().eval()
    example = torch.zeros(2, 3, input_size, input_size)
    target = folder / MODEL_FILES[format]
    details: dict[str, Any] = {"format": format, "file": target.name}
    with _EXPORT_LOCK:
        if format == "onnx":
            details.update(export_onnx(network, example, target))
        else:
            export_torchscript(network, example, target)
    spec = preprocessing_spec(architecture, input_size, class_names)
    (folder / PREPROCESSING_FILE).write_text(json.dumps({**spec, "export": details}, indent=2))
    return details


def export_onnx(model: nn.Module, example: torch.Tensor, target: Path) -> dict[str, Any]:
    """ONNX with a dynamic batch axis, by the default exporter (legacy one as fallback)."""
    try:
        batch = torch.export.Dim("batch", min=1)
        torch.onnx.export(
            model, (example,), target,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            opset_version=ONNX_OPSET, dynamo=True, dynamic_shapes=({0: batch},),
            external_data=False, verbose=False,
        )  # fmt: skip
        return {"opset": ONNX_OPSET, "exporter": "torch.export"}
    except Exception:  # an op the new exporter cannot translate: the old one may
        logger.warning("torch.export-based ONNX export failed; trying dynamo=False", exc_info=True)
        target.unlink(missing_ok=True)
    torch.onnx.export(
        model, (example,), target,
        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
        opset_version=ONNX_OPSET, dynamo=False,
        dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
    )  # fmt: skip
    return {"opset": ONNX_OPSET, "exporter": "torchscript (legacy)"}


def export_torchscript(model: nn.Module, example: torch.Tensor, target: Path) -> None:
    """A traced TorchScript module (any batch size; ``torch.jit.load`` reads it)."""
    with torch.no_grad():
        # torch.jit.trace is unannotated; it returns a ScriptModule for a module.
        traced = torch.jit.trace(model, example)  # type: ignore[no-untyped-call]
    traced.save(str(target))
