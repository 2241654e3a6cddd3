"""Examples for every schema of the OpenAPI document, kept in one place.

Each example is a real-looking body of the schema of the same name in ``app.schemas`` (a
test validates every one against its model, so they cannot drift). ``add_examples`` puts
them into the generated document, listings (``Page[X]``) included.
"""

from typing import Any

import numpy as np

from app.finetune.race import race_cost, run_race
from app.finetune.search import AUTO_CANDIDATES, run_search

DEFAULT_PROJECT_ID = "0" * 32
DATASET_ID = "3f2b8c1e9a7d4e6f8b0c2d4e6f8a0b1c"
SOURCE_ID = "8e1d2c3b4a5f60718293a4b5c6d7e8f9"
RANKING_ID = "c0ffee00aa11bb22cc33dd44ee55ff66"
JOB_ID = "5a6b7c8d9e0f11223344556677889900"
MODEL_ID = "9d8c7b6a5f4e3d2c1b0a998877665544"
REFERENCE_SHA = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
CREATED = "2026-11-26T09:30:00Z"
PROJECT_ID = "7b1e4c2a9d3f48e6a0b5c7d9e1f20314"
KEY_ID = "4d5e6f708192a3b4c5d6e7f8091a2b3c"
_QUOTAS = {
    "max_active_jobs": 4,
    "max_job_seconds": 7200.0,
    "max_storage_bytes": 21474836480,
    "max_event_streams_per_key": 8,
    "requests_per_minute_per_key": 1200,
}
_PROJECT = {
    "id": PROJECT_ID,
    "name": "vision-team",
    "created_at": CREATED,
    "quotas": _QUOTAS,
    "share_evidence": False,
}
_KEY = {
    "id": KEY_ID,
    "project_id": PROJECT_ID,
    "name": "ci",
    "role": "member",
    "prefix": "p2l_Xq3v9A",
    "created_at": CREATED,
    "expires_at": None,
    "last_used_at": "2026-11-26T10:02:00Z",
    "revoked_at": None,
}
_AUDIT = {
    "id": "1a2b3c4d5e6f708192a3b4c5d6e7f809",
    "created_at": CREATED,
    "key_id": KEY_ID,
    "project_id": PROJECT_ID,
    "action": "DELETE /v1/datasets/{dataset_id}",
    "object_id": "3f2b8c1e9a7d4e6f8b0c2d4e6f8a0b1c",
    "status": 204,
    "detail": None,
}
CLASSES = ["dress", "pullover", "shirt"]

_EPOCH = {
    "phase": "fine_tune",
    "epoch": 3,
    "train_loss": 0.41,
    "train_accuracy": 0.86,
    "val_accuracy": 0.82,
    "seconds": 0.9,
    "train_seconds": 0.7,
}
_CLASS_METRICS = {"precision": 0.9, "recall": 0.87, "f1": 0.885, "support": 30}
_MISCLASSIFIED = {
    "image": "shirt/0042.png",
    "true_label": "shirt",
    "predicted_label": "pullover",
    "confidence": 0.71,
}
_EVALUATION: dict[str, Any] = {
    "split": "test",
    "images": 90,
    "accuracy": 0.84,
    "macro_f1": 0.84,
    "per_class": {name: _CLASS_METRICS for name in CLASSES},
    "confusion_matrix": [[26, 2, 2], [1, 25, 4], [3, 2, 25]],
    "class_names": CLASSES,
    "misclassified": [_MISCLASSIFIED],
    "misclassified_total": 14,
}
# Validation (accuracy, loss) per auto candidate (decay 1, 0.5, 0.1, frozen) and trial length.
_TRIAL_SCORES = {
    3: [(0.78, 0.71), (0.82, 0.55), (0.8, 0.6), (0.71, 0.9)],
    6: [(0.8, 0.66), (0.86, 0.42), (0.84, 0.47), (0.72, 0.88)],
}


def _example_trial(candidate: dict[str, Any], epochs: int, *_: int) -> dict[str, float]:
    accuracy, loss = _TRIAL_SCORES[epochs][AUTO_CANDIDATES.index(candidate)]
    return {"val_accuracy": accuracy, "val_loss": loss}


# What the service records, made by the same code: the wording cannot drift.
_AUTO_SEARCH = run_search("halving", "loss", 10, _example_trial)


def _race_trial(loss: float) -> dict[str, Any]:
    """Scores of a race trial: 40 validation images, each with a loss spread around ``loss``."""
    losses = loss * (0.5 + np.arange(40) / 39)
    return {"val_accuracy": 0.8, "val_loss": loss, "val_losses": losses,
            "val_correct": losses < loss}  # fmt: skip


# A race over three sources (validation loss per source and trial length).
_RACE_LOSSES = {
    6: {"fashion_tops_2700": 0.62, "fashion_9k": 0.55, "mixed_17k": 0.81},
    10: {"fashion_tops_2700": 0.49, "fashion_9k": 0.44},
}
_RACE = run_race(
    [
        {"source_id": name, "source_name": name, "p2l_rank": rank}
        for rank, name in enumerate(_RACE_LOSSES[6], start=1)
    ],
    40,
    "loss",
    lambda name, epochs, *_: _race_trial(_RACE_LOSSES[epochs][name]),
)
_RACE["cost"] = {
    **race_cost(_RACE["epochs"], 64, 3),
    "race_seconds": 31.5,
    "finetune_seconds": 52.0,
}
_SCHEDULE = {
    "base_lr": 0.05,
    "decay": 0.5,
    "multipliers": None,
    "freeze_below": 0,
    "chosen_by": "auto",
    "reason": _AUTO_SEARCH["reason"],
}
_REPORT = {
    "model_id": MODEL_ID,
    "schedule": _SCHEDULE,
    "groups": [
        {"group": "stem", "parameters": 1792, "lr": 0.0125, "frozen": False},
        {"group": "block1", "parameters": 36928, "lr": 0.025, "frozen": False},
        {"group": "head", "parameters": 387, "lr": 0.05, "frozen": False},
    ],
    "history": [_EPOCH],
    "test_accuracy": 0.84,
    "val_accuracy": 0.86,
    "evaluated_on": "test",
    "per_class_accuracy": {"dress": 0.87, "pullover": 0.83, "shirt": 0.83},
    "confusion_matrix": _EVALUATION["confusion_matrix"],
    "evaluation": _EVALUATION,
    "train_images": 180,
    "val_images": 45,
    "test_images": 90,
    "seconds": 41.5,
    "auto_search": _AUTO_SEARCH,
    "baseline": None,
    "warnings": [],
}
_PROGRESS = {
    "phase": "fine_tune",
    "label": "fine-tune: auto's choice, decay 0.5",
    "epoch": 3,
    "epochs": 40,
    "step": 4,
    "steps_per_epoch": 6,
    "epochs_done": 27,
    "epochs_planned": 64,
    "elapsed_seconds": 38.2,
    "eta_seconds": 32.9,
    "history": [_EPOCH],
}
_ESTIMATE = {
    "seconds": 75.0,
    "epochs_planned": 64,
    "train_images": 180,
    "val_images": 45,
    "test_images": 90,
    "seconds_per_epoch": 0.94,
    "architecture": "compact_cnn",
    "input_size": 32,
    "images_per_second": 410.0,
    "flops_per_image": 1.2e7,
    "basis": "measured",
    "device": "cpu",
    "workers_alive": 1,
    "warnings": [],
}
_JOB: dict[str, Any] = {
    "id": JOB_ID,
    "kind": "finetune",
    "status": "running",
    "created_at": CREATED,
    "started_at": "2026-11-26T09:30:01Z",
    "finished_at": None,
    "params": {
        "target_dataset_id": DATASET_ID,
        "source_id": SOURCE_ID,
        "source_name": "fashion_tops_2700",
        "chosen_by": "p2l",
        "ranking_id": RANKING_ID,
    },
    "progress": _PROGRESS,
    "result": None,
    "error": None,
    "cancel_requested": False,
    "model_id": None,
    "attempts": 1,
    "worker_id": "host-4242-worker",
    "estimate": _ESTIMATE,
    "warnings": [],
}
_SIGNATURE = {"n": 250, "feature_dim": 128, "reference_sha256": REFERENCE_SHA}
_DATASET = {
    "id": DATASET_ID,
    "name": "garments",
    "created_at": CREATED,
    "num_images": 250,
    "num_classes": 3,
    "classes": [{"name": name, "count": 50} for name in CLASSES],
    "signature": _SIGNATURE,
}
_SOURCE = {
    "id": SOURCE_ID,
    "name": "fashion_tops_2700",
    "created_at": CREATED,
    "architecture": "compact_cnn",
    "num_classes": 5,
    "input_size": 32,
    "class_names": ["coat", "dress", "pullover", "shirt", "top"],
    "num_images": 2700,
    "class_counts": {"coat": 540, "dress": 540, "pullover": 540, "shirt": 540, "top": 540},
    "feature_dim": 128,
    "reference_sha256": REFERENCE_SHA,
    "weights_sha256": "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
    "dataset_id": None,
    "origin": "bundled",
    "project_id": DEFAULT_PROJECT_ID,
    "shared": True,
    "image_counts": "verified",
}
_RANKED = {
    "rank": 1,
    "source_id": SOURCE_ID,
    "name": "fashion_tops_2700",
    "score": -0.0213,
    "distance": 0.0371,
    "similarity": 0.9636,
    "size_term": 0.0158,
    "num_images": 2700,
    "first_stage_rank": 2,
    "refine_score": 1.734,
    "image_counts": "verified",
    "shared": True,
}
_GAIN = {"expected": 0.094, "low": 0.021, "high": 0.168}
_COVERAGE = {
    "covered": True,
    "nearest_source_id": SOURCE_ID,
    "nearest_distance": 0.0371,
    "percentile": 0.42,
    "past_targets": 60,
    "recommendation": None,
}
_LEARNED = {
    "used": True,
    "targets": 63,
    "jobs": 7,
    "bundled_targets": 60,
    "min_targets": 5,
    "calibration_id": None,
    "without_record": 1,
    "bundled_pending": None,
    "fallback": None,
}
_RANKED["gain"] = _GAIN
_RANKING_SUMMARY = {
    "id": RANKING_ID,
    "created_at": CREATED,
    "target_dataset_id": DATASET_ID,
    "method": "p2l",
    "measure": "js",
    "refine_method": "logme",
    "calibration_id": None,
    "num_results": 3,
    "num_excluded": 0,
    "top_source_id": SOURCE_ID,
    "top_source_name": "fashion_tops_2700",
    "top_score": -0.0213,
    "source_rank": None,
}
_REFINE = {
    "method": "logme",
    "top": 3,
    "forward_passes": 3,
    "images_per_pass": 250,
    "seconds": 0.21,
    "first_stage_ms": 0.4,
}
_REJECTED = {
    "path": "garments/dress/broken.png",
    "kind": "corrupt_image",
    "reason": "the image data is truncated",
}
_MODEL = {
    "id": MODEL_ID,
    "name": "garments-from-fashion_9k",
    "created_at": CREATED,
    "job_id": JOB_ID,
    "source_id": SOURCE_ID,
    "target_dataset_id": DATASET_ID,
    "architecture": "compact_cnn",
    "input_size": 32,
    "class_names": CLASSES,
    "report": _REPORT,
    "registered_source_id": None,
}
_EVIDENCE = {"fine_tunes": 31, "targets": 14, "usable_targets": 12}
_EVIDENCE_ROW = {
    "id": "7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a29",
    "created_at": CREATED,
    "job_id": JOB_ID,
    "target_dataset_id": DATASET_ID,
    "reference_sha256": REFERENCE_SHA,
    "source_id": SOURCE_ID,
    "source_name": "fashion_54k",
    "accuracy": 0.84,
    "accuracy_split": "test",
    "schedule": _SCHEDULE,
    "baseline_accuracy": 0.66,
}
_CALIBRATION_REGRET = {
    "current": 0.021,
    "bundled_defaults": 0.034,
    "refit_in_sample": 0.021,
    "refit_leave_one_target_out": 0.027,
    "candidates": 24,
    "decision": "the parameters in force have the lowest regret: a refit keeps them",
}
_ARCHITECTURE = {
    "name": "vit_tiny",
    "family": "vit",
    "input_size": 32,
    "fixed_input_size": True,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
    "layer_groups": ["embed", "block1", "block2", "block3", "block4", "head"],
    "feature_dim": 64,
}
_PREDICTION = {
    "filename": "0001.png",
    "top": [{"label": "dress", "probability": 0.93}, {"label": "shirt", "probability": 0.05}],
}

EXAMPLES: dict[str, dict[str, Any]] = {
    "Problem": {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": f"no dataset with id '{DATASET_ID}'",
        "instance": f"/v1/datasets/{DATASET_ID}",
    },
    "HealthOut": {"status": "ok", "database": "ok", "version": "0.1.0"},
    "ReferenceOut": {
        "architecture": "compact_cnn",
        "input_size": 32,
        "feature_dim": 128,
        "weights_sha256": REFERENCE_SHA,
        "weights_source": "file:reference.safetensors",
        "device": "cpu",
    },
    "ArchitectureOut": _ARCHITECTURE,
    "ArchitectureList": {"items": [_ARCHITECTURE]},
    "RejectedFileOut": _REJECTED,
    "ClassCount": {"name": "dress", "count": 50},
    "SignatureSummary": _SIGNATURE,
    "DatasetOut": _DATASET,
    "DatasetCreated": {
        **_DATASET,
        "rejected": [_REJECTED],
        "rejected_counts": {"corrupt_image": 1},
        "rejected_total": 1,
    },
    "SignatureClass": {"name": "dress", "count": 50, "mean": [0.12, 0.0, 0.57]},
    "SignatureOut": {
        "n": 250,
        "feature_dim": 3,
        "reference_sha256": REFERENCE_SHA,
        "classes": [{"name": "dress", "count": 50, "mean": [0.12, 0.0, 0.57]}],
        "mean": [0.1, 0.02, 0.49],
        "variance": [0.01, 0.003, 0.04],
    },
    "SourceOut": _SOURCE,
    "Quotas": _QUOTAS,
    "QuotasPatch": {"max_active_jobs": 2, "max_job_seconds": None},
    "ProjectCreate": {"name": "vision-team", "share_evidence": False},
    "ProjectPatch": {"quotas": {"max_active_jobs": 2}, "share_evidence": True},
    "ProjectOut": _PROJECT,
    "UsageOut": {
        "project_id": PROJECT_ID,
        "active_jobs": 1,
        "storage_bytes": 48_213_504,
        "datasets": 3,
        "sources": 1,
        "models": 2,
        "rankings": 7,
        "jobs": 4,
        "quotas": _QUOTAS,
    },
    "KeyCreate": {"role": "member", "name": "ci", "expires_in_days": 90},
    "KeyOut": _KEY,
    "KeyCreated": {**_KEY, "key": "p2l_Xq3v9AexampleNotARealKey0123456789abcdefg"},
    "WhoAmIOut": {
        "project_id": PROJECT_ID,
        "project_name": "vision-team",
        "role": "member",
        "key_id": KEY_ID,
        "key_name": "ci",
        "authenticated": True,
    },
    "AuditOut": _AUDIT,
    "RankingRequest": {
        "target_dataset_id": DATASET_ID,
        "method": "p2l",
        "top_k": 3,
        "refine": {"method": "logme", "top": 3},
    },
    "RefineRequest": {"method": "logme", "top": 3},
    "RefineOut": _REFINE,
    "RankedSource": _RANKED,
    "GainOut": _GAIN,
    "CoverageOut": _COVERAGE,
    "LearnedOut": _LEARNED,
    "ExcludedSource": {
        "source_id": SOURCE_ID,
        "name": "old_reference_source",
        "reason": "signature computed with another reference network",
    },
    "RankingOut": {
        "id": RANKING_ID,
        "created_at": CREATED,
        "target_dataset_id": DATASET_ID,
        "method": "p2l",
        "measure": "js",
        "params": {"lambda": 0.002, "eps": 0.001},
        "results": [_RANKED],
        "excluded": [],
        "elapsed_ms": 0.4,
        "refine": _REFINE,
        "warnings": [],
        "coverage": _COVERAGE,
    },
    "RankingSummary": _RANKING_SUMMARY,
    "RegisterRequest": {"name": "fashion-finetuned"},
    "FinetuneRequest": {"target_dataset_id": DATASET_ID, "source_id": "best", "baseline": True},
    "EpochMetrics": _EPOCH,
    "JobProgress": _PROGRESS,
    "Estimate": _ESTIMATE,
    "GroupOut": {"group": "head", "parameters": 387, "lr": 0.05, "frozen": False},
    "ScheduleOut": _SCHEDULE,
    "ClassMetrics": _CLASS_METRICS,
    "MisclassifiedImage": _MISCLASSIFIED,
    "EvaluationReport": _EVALUATION,
    "BaselineOut": {
        "test_accuracy": 0.64,
        "val_accuracy": 0.66,
        "epochs_run": 31,
        "seconds": 12.3,
        "transfer_gain": 0.2,
        "transfer_gain_split": "test",
        "history": [{**_EPOCH, "phase": "baseline", "train_accuracy": 0.61, "val_accuracy": 0.6}],
    },
    "FinetuneReport": {**_REPORT, "race": _RACE},
    "RaceOptions": {"top": 3, "budget_epochs": 40, "score": "loss"},
    "EvidenceCountsOut": _EVIDENCE,
    "EvidenceOut": _EVIDENCE_ROW,
    "CalibrationRegretOut": _CALIBRATION_REGRET,
    "CalibrationOut": {
        "calibration_id": "1b2c3d4e5f60718293a4b5c6d7e8f901",
        "created_at": CREATED,
        "trigger": "refit",
        "params": {"measure": "cosine", "lambda": 0.0, "refine": None},
        "bundled_defaults": {"measure": "kl", "lambda": 0.005},
        "evidence": _EVIDENCE,
        "regret": _CALIBRATION_REGRET,
        "fitted_on": {"fine_tunes": 31, "targets": 12, "regret": _CALIBRATION_REGRET},
        "auto_refit_after_targets": 10,
        "notes": ["refine (the two-stage ranking) is not refitted"],
    },
    "JobOut": _JOB,
    "ModelOut": _MODEL,
    "ArchiveEvaluation": {
        **_EVALUATION,
        "split": "archive",
        "rejected": [{"path": "shirt/notes.txt", "kind": "not_an_image", "reason": "not an image"}],
        "rejected_counts": {"not_an_image": 1},
        "rejected_total": 1,
    },
    "PreprocessingOut": {
        "architecture": "compact_cnn",
        "input_size": 32,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "class_names": CLASSES,
        "layout": "NCHW",
        "color": "RGB",
        "scale": "0..1 (pixel / 255)",
        "normalize": "(pixel / 255 - mean) / std, per channel",
        "resize": "shorter side to input_size, centre square, bilinear",
        "input_name": "input",
        "output_name": "logits",
        "dtype": "float32",
        "output": "logits; softmax gives probabilities",
    },
    "LabelScore": {"label": "dress", "probability": 0.93},
    "Prediction": _PREDICTION,
    "PredictionsOut": {"model_id": MODEL_ID, "predictions": [_PREDICTION]},
}

# Listings: one item and the token of the next page.
PAGE_ITEMS = {
    "ProjectOut": _PROJECT,
    "KeyOut": _KEY,
    "AuditOut": _AUDIT,
    "DatasetOut": _DATASET,
    "SourceOut": _SOURCE,
    "JobOut": _JOB,
    "ModelOut": _MODEL,
    "EvidenceOut": _EVIDENCE_ROW,
    "RankingSummary": _RANKING_SUMMARY,
}
NEXT_PAGE_TOKEN = "MjAyNi0xMS0yNlQwOTozMDowMHw1YTZiN2M4ZA"


def add_examples(schema: dict[str, Any]) -> dict[str, Any]:
    """Put each component's example into an OpenAPI document (in place; returns it)."""
    for name, component in schema.get("components", {}).get("schemas", {}).items():
        if name in EXAMPLES:
            component["examples"] = [EXAMPLES[name]]
        elif name.startswith("Page_") and (item := name[len("Page_") : -1]) in PAGE_ITEMS:
            component["examples"] = [
                {"items": [PAGE_ITEMS[item]], "next_page_token": NEXT_PAGE_TOKEN}
            ]
    return schema
