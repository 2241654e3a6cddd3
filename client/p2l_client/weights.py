"""Model weights for ``p2l sources add``: safetensors as they are, PyTorch state dicts converted.

The service takes safetensors only (no pickle is ever loaded on the server). A PyTorch state
dict (``torch.save(model.state_dict(), "model.pt")``, .pt/.pth/.bin) is converted here, on
the user's machine, with ``torch.load(weights_only=True)``: tensors and plain containers
load, any other pickled object is refused. torch is optional for the client
(``pip install 'p2l-client[torch]'``) and imported only when a state dict is converted.
"""

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TORCH_EXTRA = "pip install 'p2l-client[torch]'"
# What training scripts wrap a state dict in: many save {"state_dict": ..., "epoch": ...},
# others {"model": ...}. (Lightning's also prefixes every key with the attribute that held
# the network, "model.": not undone here, as no prefix can be told from a real one.)
WRAPPER_KEYS = ("state_dict", "model")
# nn.DataParallel and DistributedDataParallel prefix every key of the wrapped model's state.
PARALLEL_PREFIX = "module."


class WeightsError(ValueError):
    """A weights file that cannot be sent: why, and what to do (the CLI prints it)."""


def weights_part(path: str | Path) -> str | tuple[str, bytes]:
    """What ``client.sources.register(weights=...)`` takes: a safetensors file's path as it
    is, or ``(name.safetensors, bytes)`` converted from a PyTorch state dict."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"no such weights file: {path}")
    if path.suffix.lower() == ".safetensors" or is_safetensors(path):
        return str(path)
    return f"{path.stem}.safetensors", state_dict_to_safetensors(path)


def is_safetensors(path: Path) -> bool:
    """True when the file starts like safetensors (an 8-byte header length, then JSON)."""
    with path.open("rb") as stream:
        head = stream.read(9)
    if len(head) < 9:
        return False
    size = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 0 < size <= path.stat().st_size - 8


def state_dict_to_safetensors(path: Path) -> bytes:
    """The state dict saved in ``path``, as safetensors bytes; WeightsError saying why not."""
    torch, save = _torch()
    try:
        # timm's train.py saves its argparse.Namespace of options beside the state dict: plain
        # data, allowed; every other class stays refused.
        with torch.serialization.safe_globals([argparse.Namespace]):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, KeyError...
        reason = _load_failure(exc)
        if "Unsupported global" in reason:
            # A whole pickled model (torch.save(model)) or a custom class in the file.
            raise WeightsError(
                f"{path} holds Python objects other than tensors, which are never loaded "
                f"(torch.load with weights_only=True refused {reason.split(' was ')[0]!r}). "
                "Save the state dict instead: torch.save(model.state_dict(), path)"
            ) from None
        raise WeightsError(
            f"{path} is neither a safetensors file nor a PyTorch state dict that "
            f"torch.load(weights_only=True) reads ({reason})"
        ) from None
    state = unwrap(loaded, torch.Tensor, path)
    try:
        # Contiguous copies: safetensors refuses views and tensors that share memory
        # (tied weights).
        data: bytes = save({k: v.detach().clone().contiguous() for k, v in state.items()})
    except Exception as exc:  # sparse or quantised tensors
        raise WeightsError(f"{path}: its tensors cannot be saved as safetensors: {exc}") from None
    return data


def unwrap(loaded: Any, tensor_type: type, path: Path) -> dict[str, Any]:
    """The state dict in what ``torch.load`` returned: ``{"state_dict": ...}`` and
    ``{"model": ...}`` wrappers unwrapped, a ``module.`` prefix on every key removed.
    WeightsError unless it is a non-empty mapping of names to tensors."""
    state = loaded
    while isinstance(state, Mapping):
        inner = next((state[k] for k in WRAPPER_KEYS if isinstance(state.get(k), Mapping)), None)
        if inner is None:
            break
        state = inner
    if not isinstance(state, Mapping):
        raise WeightsError(
            f"{path} holds a {type(state).__name__}, not a state dict (a mapping of names to "
            "tensors): save model.state_dict()"
        )
    if not state:
        raise WeightsError(f"{path} holds an empty state dict")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, tensor_type):
            raise WeightsError(
                f"{path} is not a state dict of tensors: {key!r} holds a "
                f"{type(value).__name__} (save model.state_dict())"
            )
    if all(key.startswith(PARALLEL_PREFIX) for key in state):
        return {key.removeprefix(PARALLEL_PREFIX): value for key, value in state.items()}
    return dict(state)


def _load_failure(exc: Exception) -> str:
    """The gist of torch.load's failure: the weights-only unpickler's own line if any (its
    message is mostly advice to load with weights_only=False, which is never done here)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            detail = line.split("WeightsUnpickler error:", 1)[1].strip()
            if not detail and i + 1 < len(lines):
                detail = lines[i + 1]
            return detail
    return f"{type(exc).__name__}: {lines[0] if lines else 'unreadable'}"


def _torch() -> tuple[Any, Any]:
    """torch and safetensors' save; WeightsError naming the extra when they are missing."""
    try:
        import torch
        from safetensors.torch import save
    except ImportError as exc:
        raise WeightsError(
            f"converting a PyTorch state dict needs torch and safetensors ({exc.name} is "
            f"missing): {TORCH_EXTRA}, or send a .safetensors file"
        ) from None
    return torch, save
