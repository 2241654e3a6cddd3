"""`p2l sources add --weights` and `p2l weights convert`: PyTorch state dicts become
safetensors on the user's machine (torch.load with weights_only=True), safetensors go as they
are, anything else is refused with the reason; without torch, the extra to install."""

import argparse
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, save_file
from torch import nn

from tests.servers import ROOT

sys.path.insert(0, str(ROOT / "client"))

from p2l_client.cli import main as cli_main  # client/ is on sys.path, not installed here
from p2l_client.weights import WeightsError, weights_part


class Pickled:
    """A class of this test module: weights_only=True never unpickles it."""

    def __init__(self) -> None:
        self.note = "not a tensor"


def small_state() -> dict[str, torch.Tensor]:
    """A real state dict with a conv, a batch norm (its int64 counter too) and a head."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    return model.state_dict()


def converted(path: Path) -> dict[str, torch.Tensor]:
    """What ``weights_part`` sends for a state dict file, read back."""
    part = weights_part(path)
    assert isinstance(part, tuple) and part[0] == f"{path.stem}.safetensors"
    return load(part[1])


def assert_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(got) == sorted(expected)  # safetensors stores them sorted
    for key, tensor in expected.items():
        assert got[key].dtype == tensor.dtype and torch.equal(got[key], tensor), key


@pytest.mark.unit
def test_a_state_dict_is_converted_and_wrappers_are_undone(tmp_path: Path) -> None:
    state = small_state()
    plain, wrapped, boxed, parallel = (tmp_path / n for n in ("a.pt", "b.pth", "c.bin", "d.pt"))
    torch.save(state, plain)
    # A training checkpoint: the state dict beside an epoch and an optimiser's state.
    torch.save({"epoch": 3, "state_dict": state, "optimizer": {"lr": 0.1}}, wrapped)
    # timm's train.py: its options (an argparse.Namespace) beside the state dict.
    torch.save({"model": state, "args": argparse.Namespace(model="resnet18")}, boxed)
    # nn.DataParallel's and DistributedDataParallel's "module." on every key.
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, parallel)
    for path in (plain, wrapped, boxed, parallel):
        assert_same(converted(path), state)


@pytest.mark.unit
def test_tied_and_non_contiguous_tensors_are_saved_as_copies(tmp_path: Path) -> None:
    shared = torch.arange(12.0).reshape(3, 4)
    state = {"embed.weight": shared, "head.weight": shared, "t.weight": shared.t()}
    torch.save(state, tmp_path / "tied.pt")
    assert_same(converted(tmp_path / "tied.pt"), state)


@pytest.mark.unit
def test_safetensors_go_as_they_are(tmp_path: Path) -> None:
    save_file(small_state(), tmp_path / "w.safetensors")
    assert weights_part(tmp_path / "w.safetensors") == str(tmp_path / "w.safetensors")
    # Recognised by its header too, whatever its name ends with.
    (tmp_path / "w.bin").write_bytes((tmp_path / "w.safetensors").read_bytes())
    assert weights_part(tmp_path / "w.bin") == str(tmp_path / "w.bin")


@pytest.mark.unit
def test_what_is_not_a_state_dict_of_tensors_is_refused(tmp_path: Path) -> None:
    cases = {
        # A pickled object: weights_only=True refuses it before any of its code runs.
        "object.pt": ({"weights": small_state(), "extra": Pickled()}, r"Python objects other "
                      r"than tensors.*Unsupported global.*Pickled.*model\.state_dict\(\)"),
        "model.pt": (nn.Linear(2, 2), r"Python objects other than tensors.*Linear"),
        "list.pt": ([torch.zeros(2)], r"holds a list, not a state dict"),
        "mixed.pt": ({"w": torch.zeros(2), "epoch": 3}, r"'epoch' holds a int"),
        "empty.pt": ({}, r"holds an empty state dict"),
    }  # fmt: skip
    for name, (content, reason) in cases.items():
        torch.save(content, tmp_path / name)
        with pytest.raises(WeightsError, match=reason):
            weights_part(tmp_path / name)
    neither = {"notes.pt": b"these are not weights\n", "noise.bin": bytes(range(256)) * 8}
    for name, data in neither.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(WeightsError, match=r"neither a safetensors file nor a PyTorch"):
            weights_part(tmp_path / name)
    with pytest.raises(WeightsError, match=r"no such weights file"):
        weights_part(tmp_path / "missing.pt")


@pytest.mark.unit
def test_without_torch_the_extra_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    torch.save(small_state(), tmp_path / "w.pt")
    save_file(small_state(), tmp_path / "w.safetensors")
    monkeypatch.setitem(sys.modules, "torch", None)  # as in a venv with p2l-client alone
    with pytest.raises(WeightsError, match=r"needs torch.*pip install 'p2l-client\[torch\]'"):
        weights_part(tmp_path / "w.pt")
    # safetensors need nothing of torch.
    assert weights_part(tmp_path / "w.safetensors") == str(tmp_path / "w.safetensors")
    assert cli_main(["weights", "convert", str(tmp_path / "w.pt"), str(tmp_path)]) == 1
    assert "pip install 'p2l-client[torch]'" in capsys.readouterr().err


@pytest.mark.unit
def test_weights_convert_writes_safetensors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = small_state()
    torch.save({"state_dict": state}, tmp_path / "ref.pth")
    assert cli_main(["weights", "convert", str(tmp_path / "ref.pth"), str(tmp_path)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert_same(load((tmp_path / "ref.safetensors").read_bytes()), state)
    assert cli_main(["weights", "convert", str(tmp_path / "ref.safetensors"), "x"]) == 1
    assert "is a safetensors file already" in capsys.readouterr().err
