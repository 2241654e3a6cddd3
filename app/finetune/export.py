"""Export a fine-tuned classifier for use without this project: ONNX or TorchScript, plus the
preprocessing spec a consumer needs to feed it (no web imports), bundled in a zip with
``labels.txt``, a model card (``README.md``) and ``predict.py``, the standalone script that
classifies images with it (``export_assets/``).

ONNX comes from torch's default (``torch.export``-based) exporter, which needs onnxscript
and nothing from the network; the legacy TorchScript-based exporter (``dynamo=False``) is
deprecated in torch 2.9+ and is only the fallback when the default one fails. TorchScript
comes from ``torch.jit.trace``: the classifiers have no data-dependent control flow, and
tracing works for every architecture the service builds (torch 2.14 flags ``torch.jit`` as
deprecated with a FutureWarning that no call avoids; the format is still what
``torch.jit.load`` reads).
"""

import copy
import hashlib
import json
import logging
import shutil
import threading
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any, Literal

import jinja2
import torch
from torch import nn

from app.families import get_spec
from app.finetune.export_assets.predict import one_line

logger = logging.getLogger("p2l.export")

ExportFormat = Literal["onnx", "torchscript"]
# The model file inside an export, by format.
MODEL_FILES: dict[str, str] = {"onnx": "model.onnx", "torchscript": "model.pt"}
PREPROCESSING_FILE = "preprocessing.json"
LABELS_FILE = "labels.txt"
CARD_FILE = "README.md"
SCRIPT_FILE = "predict.py"
ASSETS = Path(__file__).parent / "export_assets"
CARD_TEMPLATE = "model_card.md.j2"
# Bump when a bundle's content changes other than through the assets or RESIZE_WORDS (which
# ``bundle_version`` hashes): stored bundles of another version are built again.
BUNDLE_LAYOUT = 1
# The service records no licence for its sources or datasets, so the card cannot state one;
# it says so and who has to.
NO_LICENCE = (
    "unspecified: the service records no licence for sources or datasets; state the terms "
    "of the source model and of the target data before you share this model"
)
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
    "or palette images are converted to RGB first. JPEGs are decoded at the smallest scale "
    "that still covers input_size x input_size (Pillow Image.draft('RGB', (input_size, "
    "input_size)) before loading), as the service decodes them. The export's predict.py "
    "does all of this."
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


# -- the bundle: model file, preprocessing.json, labels.txt, predict.py, README.md ------------

ORIGINS = {
    "bundled": "the service's bundled zoo",
    "upload": "uploaded to the service",
    "finetune": "registered from a model fine-tuned by the service",
}


@cache
def bundle_version() -> str:
    """What a bundle of this release holds, in 12 hex digits: a stored bundle of another
    version (an older predict.py, card or preprocessing text) is not served again."""
    digest = hashlib.sha256(f"{BUNDLE_LAYOUT}\n{RESIZE_WORDS}\n{NO_LICENCE}\n".encode())
    for name in (SCRIPT_FILE, CARD_TEMPLATE):
        digest.update((ASSETS / name).read_bytes())
    return digest.hexdigest()[:12]


def bundle_files(format: ExportFormat) -> list[str]:
    """The members of an export zip, in their order."""
    return [MODEL_FILES[format], PREPROCESSING_FILE, LABELS_FILE, SCRIPT_FILE, CARD_FILE]


@dataclass(frozen=True)
class ModelCard:
    """What a model card says about a fine-tuned model, gathered by the caller.

    ``report`` is the fine-tuning job's result as stored with the model. ``source`` and
    ``target`` are None when the source or dataset was deleted since; otherwise ``source``
    has name, architecture, num_images, num_classes, origin and image_counts, and
    ``target`` name, num_images and class_counts. ``licence`` None: nobody stated one.
    """

    model_id: str
    created_at: datetime
    architecture: str
    input_size: int
    class_names: list[str]
    report: dict[str, Any]
    source_id: str
    source: dict[str, Any] | None
    target_dataset_id: str
    target: dict[str, Any] | None
    licence: str | None = None


def export_bundle(
    model: nn.Module, format: ExportFormat, card: ModelCard, folder: Path, archive: Path
) -> dict[str, Any]:
    """Write every file of an export into ``folder`` and zip them into ``archive``; returns
    what ``export_model`` made."""
    details = export_model(
        model, format, card.architecture, card.input_size, card.class_names, folder
    )
    shutil.copyfile(ASSETS / SCRIPT_FILE, folder / SCRIPT_FILE)
    # One name a line: a name with a line break or a tab would otherwise be two.
    labels = "".join(f"{one_line(name)}\n" for name in card.class_names)
    (folder / LABELS_FILE).write_text(labels, encoding="utf-8")
    spec = preprocessing_spec(card.architecture, card.input_size, card.class_names)
    (folder / CARD_FILE).write_text(model_card(card, format, details, spec), encoding="utf-8")
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name in bundle_files(format):
            bundle.write(folder / name, name)
    return details


def model_card(
    card: ModelCard, format: ExportFormat, details: dict[str, Any], spec: dict[str, Any]
) -> str:
    """The export's README.md: what the model is, how it was made and scored, how to run it."""
    report = card.report
    if format == "onnx":
        format_words = f"ONNX opset {details.get('opset')} ({details.get('exporter')} exporter)"
        model_words = "the network, ONNX (onnxruntime 1.14+ runs it), any batch size"
        requirements = "onnxruntime numpy pillow"
    else:
        format_words = "TorchScript (torch.jit.trace)"
        model_words = "the network, TorchScript (`torch.jit.load`), any batch size"
        requirements = "torch numpy pillow"
    source = None
    if card.source is not None:
        origin = card.source.get("origin", "")
        source = {**card.source, "origin_words": ORIGINS.get(origin, origin)}
    context = {
        "model_id": card.model_id,
        "architecture": card.architecture,
        "input_size": card.input_size,
        "classes": card.class_names,
        "created": _when(card.created_at),
        "exported": _when(datetime.now(UTC)),
        "format_words": format_words,
        "licence": card.licence or NO_LICENCE,
        "source_id": card.source_id,
        "source": source,
        "source_name": card.source["name"] if card.source else f"{card.source_id} (deleted)",
        "target_dataset_id": card.target_dataset_id,
        "target": card.target,
        "target_name": (
            card.target["name"] if card.target else f"{card.target_dataset_id} (deleted)"
        ),
        "splits": {
            "train": report.get("train_images", 0),
            "validation": report.get("val_images", 0),
            "test": report.get("test_images", 0),
        },
        "schedule": _schedule(report),
        "metrics": _metrics(report),
        "preprocessing": spec,
        "model_file": MODEL_FILES[format],
        "model_words": model_words,
        "requirements": requirements,
    }
    return _card_template().render(context)


@cache
def _card_template() -> jinja2.Template:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(ASSETS),
        autoescape=False,  # Markdown, not HTML
        undefined=jinja2.StrictUndefined,  # a misspelt field fails the export, not the card
        keep_trailing_newline=True,
        trim_blocks=True,  # a line holding only a tag leaves no blank line behind
        lstrip_blocks=True,
    )
    return environment.get_template(CARD_TEMPLATE)


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _sentence(text: str) -> str:
    return text.rstrip(". ") + "."


def _accuracy(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _schedule(report: dict[str, Any]) -> dict[str, Any]:
    """The schedule as the job's result stores it, in words, with its per-group rates."""
    schedule = report.get("schedule") or {}
    parts = [f"base learning rate {schedule.get('base_lr'):g}"] if "base_lr" in schedule else []
    if schedule.get("multipliers"):
        multipliers = ", ".join(f"{m:g}" for m in schedule["multipliers"])
        parts.append(f"per-group multipliers {multipliers}")
    elif schedule.get("decay") is not None:
        parts.append(f"decay {schedule['decay']:g} per group below the head")
    if schedule.get("freeze_below"):
        parts.append(f"groups below {schedule['freeze_below']} frozen")
    chosen = schedule.get("chosen_by", "manual")
    summary = f"Layer-wise learning rates ({chosen})"
    if parts:
        summary += ": " + ", ".join(parts)
    notes = []
    if schedule.get("reason") and chosen != "manual":
        notes.append(f"Why this schedule: {_sentence(schedule['reason'])}")
    if report.get("race"):
        race = report["race"]
        notes.append(
            f"The source won a race of {len(race.get('contestants') or [])} shortlisted "
            f"sources ({race.get('winner')})."
        )
    history = [h for h in report.get("history") or [] if h.get("phase", "fine_tune") == "fine_tune"]
    return {
        "summary": summary,
        "epochs": f"{len(history)} epoch{'' if len(history) == 1 else 's'}",
        "groups": report.get("groups") or [],
        "notes": notes,
    }


def _metrics(report: dict[str, Any]) -> dict[str, Any]:
    """Accuracy per held-out split, the no-transfer baseline, and per-class accuracy."""
    rows = []
    if report.get("test_images"):
        rows.append({"split": "test", "images": report["test_images"],
                     "accuracy": _accuracy(report.get("test_accuracy"))})  # fmt: skip
    if report.get("val_images"):
        rows.append({"split": "validation", "images": report["val_images"],
                     "accuracy": _accuracy(report.get("val_accuracy"))})  # fmt: skip
    notes = []
    if not rows:
        notes.append("The fine-tune held no images out: there is no accuracy to report.")
    if report.get("val_images"):
        notes.append(
            "The validation split chose the epoch (and the schedule, with auto): its accuracy "
            "is optimistic; the test split chose nothing."
        )
    baseline = report.get("baseline")
    if baseline:
        split = baseline.get("transfer_gain_split") or (
            "test" if baseline.get("test_accuracy") is not None else "validation"
        )
        scratch = baseline.get("test_accuracy" if split == "test" else "val_accuracy")
        line = (
            f"Baseline, the same architecture trained from scratch on the same split: "
            f"{_accuracy(scratch)} on the {split} split"
        )
        if baseline.get("transfer_gain") is not None:
            line += f" (transfer gain {baseline['transfer_gain']:+.4f})"
        notes.append(line + ".")
    per_class = report.get("per_class_accuracy") or {}
    if per_class:
        shown = ", ".join(f"{name} {_accuracy(value)}" for name, value in per_class.items())
        notes.append(
            f"Per-class accuracy on the {report.get('evaluated_on', 'validation')} split: {shown}."
        )
    for warning in report.get("warnings") or []:
        notes.append(f"Warning: {_sentence(warning)}")
    return {"rows": rows, "notes": notes}
