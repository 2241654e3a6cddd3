"""The evaluation report of a classifier on a labelled split (no web imports).

Per-class precision, recall and F1, macro F1, accuracy, the confusion matrix, and the
misclassified images, most confident first. The dict it returns has the fields of the
API's ``EvaluationReport``.

Why not ``sklearn.metrics``: scikit-learn's wheels bring their own OpenMP runtime
(``scikit_learn.libs/libgomp-*.so``), and loaded beside torch's in the API and worker
processes, the first full test run with it loaded crashed as its process exited ("pure
virtual method called", then a segmentation fault), after every test had passed. A
confusion matrix and the three ratios on it are a few lines of numpy, checked by hand in
tests/jobs/test_evaluation.py.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

# The report lists at most this many misclassified images (all are counted).
MAX_MISCLASSIFIED_LISTED = 100


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, classes: int) -> np.ndarray:
    """Counts with rows = true class, columns = predicted class."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    rows, columns = np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    np.add.at(matrix, (rows, columns), 1)
    return matrix


def class_metrics(matrix: np.ndarray) -> list[dict[str, Any]]:
    """Precision, recall, F1 and support per class of a confusion matrix.

    Precision is None when nothing was predicted as the class, recall when the split holds
    no image of it. F1 = 2 TP / (2 TP + FP + FN) is None only when both are (the class is
    neither in the split nor predicted): a class never predicted but present scores 0.
    """
    metrics = []
    for i in range(len(matrix)):
        true_positive = int(matrix[i, i])
        predicted = int(matrix[:, i].sum())
        support = int(matrix[i, :].sum())
        precision = true_positive / predicted if predicted else None
        recall = true_positive / support if support else None
        f1 = 2 * true_positive / (predicted + support) if predicted + support else None
        metrics.append({"precision": precision, "recall": recall, "f1": f1, "support": support})
    return metrics


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
    per_class = class_metrics(matrix)
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
