"""The evaluation report of a classifier on a labelled split (no web imports).

Per-class precision, recall and F1, macro F1, accuracy, the confusion matrix, and the
misclassified images, most confident first. The dict it returns has the fields of the
API's ``EvaluationReport``. The counts and ratios are scikit-learn's (``sklearn.metrics``).
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

# The report lists at most this many misclassified images (all are counted).
MAX_MISCLASSIFIED_LISTED = 100


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class."""
    if len(labels) == 0:  # scikit-learn refuses an empty split; its matrix is all zeros
        return np.zeros((classes, classes), dtype=np.int64)
    from sklearn import metrics  # here: its import costs the service's start-up ~0.5 s

    matrix = metrics.confusion_matrix(labels, predicted, labels=np.arange(classes))
    return np.asarray(matrix, dtype=np.int64)


def class_metrics(predicted: np.ndarray, labels: np.ndarray, classes: int) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support per class.

    Precision is None when nothing was predicted as the class, recall when the split holds
    no image of it. F1 = 2 TP / (2 TP + FP + FN) is None only when both are (the class is
    neither in the split nor predicted): a class never predicted but present scores 0.
    """
    if len(labels) == 0:  # scikit-learn refuses an empty split: nothing is defined
        return [
            {"precision": None, "recall": None, "f1": None, "support": 0} for _ in range(classes)
        ]
    from sklearn import metrics

    # zero_division=nan marks the undefined ratios, which the report gives as null (0 would
    # claim a measured zero); sklearn's F1 is NaN only when 2 TP + FP + FN is 0, as above.
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        labels, predicted, labels=np.arange(classes), zero_division=np.nan
    )
    return [
        {"precision": _defined(p), "recall": _defined(r), "f1": _defined(f), "support": int(s)}
        for p, r, f, s in zip(precision, recall, f1, support, strict=True)
    ]


def _defined(value: float) -> float | None:
    """The ratio, or None where scikit-learn found it undefined (NaN)."""
    return None if np.isnan(value) else float(value)


def evaluation_report(
    predicted: np.ndarray,
    labels: np.ndarray,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    image_names: Sequence[str],
    split: str,
    max_listed: int = MAX_MISCLASSIFIED_LISTED,
) -> dict[str, Any]:
    """The report of one split: ``probabilities`` is (N, classes) softmax output.

    Macro F1 averages F1 over the classes in the split or predicted (those whose F1 is
    defined, as scikit-learn does by default); 0.0 when there is none. The misclassified
    images are ordered by the probability the model gave its wrong label, highest first
    (ties: in split order).
    """
    predicted = np.asarray(predicted, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    count = len(labels)
    if len(predicted) != count or len(image_names) != count or len(probabilities) != count:
        raise ValueError(
            f"{len(predicted)} predictions, {count} labels, {len(probabilities)} probability "
            f"rows and {len(image_names)} image names: they must match"
        )
    if probabilities.ndim != 2 or probabilities.shape[1] != len(class_names):
        raise ValueError(
            f"probabilities of shape {probabilities.shape}; expected (N, {len(class_names)})"
        )
    matrix = confusion_matrix(predicted, labels, len(class_names))
    per_class = class_metrics(predicted, labels, len(class_names))
    defined = [m["f1"] for m in per_class if m["f1"] is not None]
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]] if count else np.zeros(0)
    order = wrong[np.argsort(-confidence, kind="stable")]
    misclassified = [
        {
            "image": image_names[i],
            "true_label": class_names[labels[i]],
            "predicted_label": class_names[predicted[i]],
            "confidence": float(probabilities[i, predicted[i]]),
        }
        for i in order[:max_listed]
    ]
    return {
        "split": split,
        "images": count,
        "accuracy": float((predicted == labels).mean()) if count else 0.0,
        "macro_f1": float(np.mean(defined)) if defined else 0.0,
        "per_class": dict(zip(class_names, per_class, strict=True)),
        "confusion_matrix": matrix.tolist(),
        "class_names": list(class_names),
        "misclassified": misclassified,
        "misclassified_total": len(wrong),
    }
