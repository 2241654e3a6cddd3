"""Two-stage ranking: P2L shortlists the zoo in one pass, a per-candidate measure re-ranks it.

P2L needs one forward pass of the target through the reference network, whatever the size
of the zoo; LogME, LEEP, NCE and k-NN accuracy (``app.p2l.peers``, formulas and papers cited
there) need one through every candidate. Refining only P2L's top ``k`` costs ``k`` passes:
the shortlist is scored by the measure that reads each candidate's own features and head.
"""

from typing import assert_never

import numpy as np
import torch
from torch import nn

from app.families import head
from app.measures import RefineMethod
from app.p2l.peers import knn_accuracy, leep, logme, nce


def source_outputs(
    model: nn.Module,
    images: np.ndarray,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    device: torch.device,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """One forward pass of the target: the head's input features and its softmax, per image."""
    # The head's input: for torchvision classifiers (Dropout, Linear) the pooled features,
    # as feature_extractor sees them (for MobileNetV3, before its last hidden layer; for a
    # timm model its pre-logits features).
    captured: list[torch.Tensor] = []
    hook = head(model).register_forward_hook(
        lambda _m, inputs, _o: captured.append(inputs[0].flatten(1).float().cpu())
    )
    # Normalised as training normalises (app.finetune.train.ImageTensors): uint8 NHWC in,
    # (x - 255 mean) / (255 std) out, a batch at a time.
    scaled_mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
    scaled_std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
    probabilities = []
    model.eval().to(device)
    try:
        with torch.inference_mode():
            for first in range(0, len(images), batch_size):
                pixels = torch.from_numpy(np.ascontiguousarray(images[first : first + batch_size]))
                batch = (pixels.to(device).permute(0, 3, 1, 2).float() - scaled_mean) / scaled_std
                probabilities.append(model(batch).float().softmax(1).cpu())
    finally:
        hook.remove()
    features = torch.cat(captured).numpy()
    return features, torch.cat(probabilities).numpy()


def transferability(
    method: RefineMethod, features: np.ndarray, probabilities: np.ndarray, labels: np.ndarray
) -> float:
    """The measure's score of one candidate on the target (higher is better)."""
    match method:
        case "logme":
            return logme(features, labels)
        case "leep":
            return leep(probabilities, labels)
        case "nce":
            return nce(probabilities, labels)
        case "knn":
            return knn_accuracy(features, labels)
        case _:
            assert_never(method)
