"""Candidate reference networks, trained on images that no source and no target uses.

- ``ssl``: self-supervised (SimCLR, Chen et al. 2020): two strongly augmented views of each
  image (crop, flip, colour, greyscale, polarity inversion, blur) must recognise each other
  among the batch. No labels at all, so nothing ties the features to the zoo's classes.
- ``pool_packages``: supervised to tell which package of the pool an image comes from,
  labels unrelated to any source's or target's classes.
- ``random``: the same network at its seeded initialisation, the floor any trained
  reference has to beat.
"""

import math
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from app.families import build_model, get_spec
from app.families.compact import CompactCNN
from app.finetune.train import ImageTensors, TrainConfig, train_classifier

ARCHITECTURE = "compact_cnn"


def strong_augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """SimCLR-style views of a batch of [0, 1] images (B, 3, H, W), all ops batched."""
    b = images.shape[0]

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return torch.rand(b, *shape, generator=generator) * (high - low) + low

    def chance(p: float) -> torch.Tensor:
        return (torch.rand(b, 1, 1, 1, generator=generator) < p).float()

    # Random resized crop (35-100 % of the area, aspect 3/4-4/3) and horizontal flip.
    side = uniform(0.35, 1.0).sqrt()
    aspect = uniform(math.log(3 / 4), math.log(4 / 3)).exp().sqrt()
    sx, sy = (side * aspect).clamp(max=1), (side / aspect).clamp(max=1)
    tx, ty = uniform(-1, 1) * (1 - sx), uniform(-1, 1) * (1 - sy)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    zero = torch.zeros(b)
    theta = torch.stack([torch.stack([sx * flip, zero, tx], 1), torch.stack([zero, sy, ty], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    x = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)

    # Colour jitter (p = 0.8): brightness, contrast, saturation; channel shuffle for hue.
    jitter = chance(0.8)
    grey = x.mean(1, keepdim=True)
    brightness = uniform(0.6, 1.4, 1, 1, 1)
    contrast = uniform(0.6, 1.4, 1, 1, 1)
    saturation = uniform(0.0, 1.6, 1, 1, 1)
    mean = x.mean((1, 2, 3), keepdim=True)
    jittered = ((x - mean) * contrast + mean) * brightness
    jittered = grey + (jittered - grey) * saturation
    x = jitter * jittered + (1 - jitter) * x
    shuffle = chance(0.3)
    permuted = x[:, torch.randperm(3, generator=generator)]
    x = shuffle * permuted + (1 - shuffle) * x
    # Greyscale (p = 0.2), polarity inversion (p = 0.3), blur (p = 0.3).
    to_grey = chance(0.2)
    x = to_grey * x.mean(1, keepdim=True).expand_as(x) + (1 - to_grey) * x
    x = x.clamp(0, 1)
    flip_polarity = chance(0.3)
    x = flip_polarity * (1 - x) + (1 - flip_polarity) * x
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 16).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    blur = chance(0.3)
    return blur * blurred + (1 - blur) * x


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalised temperature-scaled cross entropy over 2B views."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    similarity = z @ z.T / temperature
    n = z1.shape[0]
    similarity.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(similarity, targets)


def train_ssl(
    images: np.ndarray, epochs: int, seed: int, batch_size: int = 256, temperature: float = 0.2
) -> tuple[nn.Module, dict]:
    """SimCLR on uint8 images (N, 32, 32, 3); returns the backbone (head unused) and a log."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_model(ARCHITECTURE, num_classes=1)
    assert isinstance(model, CompactCNN)
    dim = model.feature_dim
    projector = nn.Sequential(
        nn.Linear(dim, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Linear(256, 64)
    )
    params = [*model.parameters(), *projector.parameters()]
    optimizer = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)
    steps = epochs * (len(images) // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=2e-3, total_steps=steps, pct_start=0.05
    )
    spec = get_spec(ARCHITECTURE)
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1)
    std = torch.tensor(spec.std).view(1, 3, 1, 1)
    data = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    log = []
    started = time.perf_counter()
    model.train()
    projector.train()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(data), generator=generator)
        losses = []
        for first in range(0, len(data) - batch_size + 1, batch_size):
            batch = data[order[first : first + batch_size]].float() / 255
            views = [(strong_augment(batch, generator) - mean) / std for _ in range(2)]
            z1, z2 = (projector(model.features(v)) for v in views)
            loss = nt_xent(z1, z2, temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        log.append({"epoch": epoch, "loss": round(float(np.mean(losses)), 4)})
        print(f"  ssl epoch {epoch:3d} loss {log[-1]['loss']:.3f} "
              f"({time.perf_counter() - started:.0f}s)", flush=True)  # fmt: skip
    return model.eval(), {"epochs": log, "seconds": round(time.perf_counter() - started, 1)}


def train_pool_packages(
    images: np.ndarray, labels: np.ndarray, num_classes: int, epochs: int, seed: int
) -> tuple[nn.Module, dict]:
    """A classifier of the pool's packages; its backbone is the candidate."""
    spec = get_spec(ARCHITECTURE)
    torch.manual_seed(seed)
    model = build_model(ARCHITECTURE, num_classes)
    started = time.perf_counter()
    result = train_classifier(
        model,
        ImageTensors(images, labels, spec.mean, spec.std),
        TrainConfig(epochs=epochs, batch_size=128, lr=0.05, seed=seed, hflip=True),
    )
    history = [{"epoch": e.epoch, "train_accuracy": round(e.train_accuracy, 4)}
               for e in result.history]  # fmt: skip
    return model.eval(), {"epochs": history, "seconds": round(time.perf_counter() - started, 1)}


def random_init(seed: int) -> nn.Module:
    """The reference architecture at its seeded initialisation (BatchNorm at defaults)."""
    torch.manual_seed(seed)
    return build_model(ARCHITECTURE, num_classes=1).eval()
