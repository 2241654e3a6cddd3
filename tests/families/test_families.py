"""Model families: every registered architecture splits into complete, ordered layer groups;
the tiny ViT fine-tunes, embeds and exports through the service's own code; the API lists
every architecture."""

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save
from torch import nn

from app.families import (
    FAMILIES,
    architecture_catalogue,
    build_model,
    family_of,
    feature_dim,
    feature_extractor,
    get_spec,
    head_outputs,
    known_architectures,
    layer_groups,
    no_weight_decay,
    replace_head,
    weights_to_save,
)
from app.finetune.export import export_model
from app.finetune.layers import LayerwiseLR
from app.finetune.pipeline import FinetuneOptions, finetune
from app.finetune.train import ImageTensors
from app.p2l.refine import source_outputs
from app.zoo.bundled import bundled_target
from tests.archives import fashion_mnist_images
from tests.helpers import start_job, upload_garments, wait_for_job
from tests.servers import ROOT

sys.path.insert(0, str(ROOT / "client"))

from p2l_client.cli import cmd_architectures  # client/ is on sys.path, not installed here
from p2l_client.client import Client

# Group names by family, input -> head: the first, the pattern of those between, the last.
LAYOUTS = {
    "compact": ("stem", r"stage\d+", "head"),
    "resnet": ("stem", r"layer[1-4]", "head"),
    "mobilenet": ("stem", r"block\d+", "head"),
    "efficientnet": ("stem", r"block\d+", "head"),
    "vit": ("embed", r"block\d+", "head"),
}
TINY = "vit_tiny"
TINY_WIDTH = 64  # hidden_dim of app.families.vit.TINY


def meta_model(name: str, num_classes: int = 3) -> nn.Module:
    """The architecture's shapes without its memory (vit_b_16 has 86M parameters)."""
    with torch.device("meta"):
        return build_model(name, num_classes)


@pytest.mark.unit
@pytest.mark.parametrize("name", known_architectures())
def test_every_architecture_splits_into_complete_ordered_groups(name: str) -> None:
    model = meta_model(name)
    family = family_of(model)
    groups = layer_groups(model)
    first, middle, last = LAYOUTS[family.name]
    names = [g.name for g in groups]
    assert len(groups) >= 3 and names[0] == first and names[-1] == last
    assert all(re.fullmatch(middle, n) for n in names[1:-1]), names
    # Numbered groups count up from 1, input -> head.
    assert [int(re.sub(r"\D", "", n)) for n in names[1:-1]] == list(range(1, len(names) - 1))
    # Every parameter in exactly one group (shared ones once), and nothing else there.
    owned = [id(p) for g in groups for p in g.parameters()]
    assert len(owned) == len(set(owned))
    assert set(owned) == {id(p) for p in model.parameters()}
    # The head group is the head: it alone changes with the number of classes.
    head = {id(p) for p in groups[-1].parameters()}
    assert head == {id(p) for p in model.get_submodule(family.head_attribute).parameters()}
    assert head_outputs(model) == 3 and head_outputs(replace_head(model, 7)) == 7
    spared = no_weight_decay(model)
    assert {k for k, p in model.named_parameters() if p.ndim <= 1} <= spared
    assert {k for k, p in model.named_parameters() if p.ndim > 1} - spared  # decay somewhere
    if family.name == "vit":
        bare = {"class_token", "encoder.pos_embedding"}
        assert bare <= spared and bare <= {k for k, _ in groups[0].named_parameters}


@pytest.mark.unit
def test_the_registry_is_the_one_place_names_come_from() -> None:
    listed = [a for family in FAMILIES for a in family.architectures]
    assert [a.name for a in listed] == known_architectures()
    assert len(set(known_architectures())) == len(listed)
    assert {"vit_tiny", "vit_b_16", "compact_cnn", "resnet18"} <= set(known_architectures())
    with pytest.raises(ValueError, match=r"unknown architecture 'vgg16'; choose one of \["):
        get_spec("vgg16")
    with pytest.raises(ValueError, match="no model family knows Linear"):
        layer_groups(nn.Linear(2, 2))
    catalogue = {info.name: info for info in architecture_catalogue()}
    assert list(catalogue) == known_architectures()
    assert catalogue["vit_b_16"].feature_dim == 768 and catalogue["vit_b_16"].input_size == 224
    assert catalogue["compact_cnn"].layer_groups == ("stem", "stage1", "stage2", "stage3", "head")
    assert catalogue[TINY].layer_groups == ("embed", "block1", "block2", "block3", "block4", "head")
    assert catalogue[TINY].fixed_input_size and not catalogue["resnet18"].fixed_input_size


@pytest.fixture(scope="module")
def garments() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """48 of the bundled garments target's 32 px images (real Fashion-MNIST tops), 5 classes."""
    images, labels, names, is_test = bundled_target("fashion")
    keep = np.concatenate([np.flatnonzero((labels == c) & ~is_test)[:10] for c in range(5)])
    return images[keep[:48]], labels[keep[:48]], names


@pytest.fixture(scope="module")
def tuned(
    garments: tuple[np.ndarray, np.ndarray, list[str]],
) -> tuple[nn.Module, nn.Module, dict[str, object]]:
    """A 10-class tiny ViT (the source) fine-tuned for 2 epochs by the service's pipeline."""
    images, labels, names = garments
    spec = get_spec(TINY)
    torch.manual_seed(0)
    source = build_model(TINY, 10)
    options = FinetuneOptions(
        schedule="manual", decay=0.5, epochs=2, patience=None, val_fraction=0.0,
        test_fraction=0.25, batch_size=16,
    )  # fmt: skip
    model, report = finetune(source, TINY, images, labels, names, spec.mean, spec.std, options)
    return source, model, {"groups": report.groups, "history": report.history}


@pytest.mark.unit
def test_tiny_vit_fine_tunes_with_layerwise_rates(
    tuned: tuple[nn.Module, nn.Module, dict[str, object]],
) -> None:
    source, model, report = tuned
    groups = report["groups"]
    assert isinstance(groups, list)
    # The head at base_lr, each group below at half the one above, the embedding lowest.
    assert [g["group"] for g in groups] == ["embed", "block1", "block2", "block3", "block4", "head"]
    assert [g["lr"] for g in groups] == pytest.approx([0.05 * 0.5**k for k in range(5, -1, -1)])
    assert sum(g["parameters"] for g in groups) == sum(p.numel() for p in model.parameters())
    history = report["history"]
    assert isinstance(history, list) and len(history) == 2
    assert head_outputs(model) == 5
    # Every group trained, bare parameters included.
    before, after = source.state_dict(), model.state_dict()
    for name in ("class_token", "encoder.pos_embedding", "conv_proj.weight", "encoder.ln.weight"):
        assert not torch.equal(before[name], after[name]), name


@pytest.mark.unit
def test_vit_class_token_and_positions_get_no_weight_decay() -> None:
    model = replace_head(build_model(TINY, 10), 5)
    param_groups = LayerwiseLR(0.1, decay=0.5).param_groups(model, 1e-3)
    decay_of = {id(p): (g["group"], g["weight_decay"]) for g in param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert decay_of[id(named["class_token"])] == ("embed", 0.0)
    assert decay_of[id(named["encoder.pos_embedding"])] == ("embed", 0.0)
    assert decay_of[id(named["conv_proj.weight"])] == ("embed", 1e-3)
    assert decay_of[id(named["encoder.ln.weight"])] == ("block4", 0.0)
    assert decay_of[id(named["heads.head.weight"])] == ("head", 1e-3)
    assert len(decay_of) == len(named)


@pytest.mark.unit
def test_tiny_vit_features_are_the_non_negative_cls_token(
    tuned: tuple[nn.Module, nn.Module, dict[str, object]],
    garments: tuple[np.ndarray, np.ndarray, list[str]],
) -> None:
    _, model, _ = tuned
    images, labels, _ = garments
    spec = get_spec(TINY)
    batch, _ = ImageTensors(images[:8], labels[:8], spec.mean, spec.std).batch(
        torch.arange(8), torch.device("cpu")
    )
    # The refinement stage hooks the head's input: the CLS token after the final LayerNorm.
    features, probabilities = source_outputs(model, images[:8], spec.mean, spec.std,
                                             torch.device("cpu"))  # fmt: skip
    assert features.shape == (8, TINY_WIDTH) and probabilities.shape == (8, 5)
    extractor = feature_extractor(build_model(TINY, 5)).eval()
    extractor.load_state_dict(
        {f"0.{k}": v for k, v in model.state_dict().items() if not k.startswith("heads.")}
    )
    with torch.inference_mode():
        pooled = extractor(batch)
    assert feature_dim(extractor, spec.default_input_size) == TINY_WIDTH
    assert pooled.shape == (8, TINY_WIDTH) and (pooled >= 0).all() and (pooled > 0).any()
    assert np.allclose(pooled.numpy(), np.maximum(features, 0), atol=1e-5)


@pytest.mark.unit
# The ONNX export takes ~14 s on 2 cores: it runs in the full suite, not the inner loop.
@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=pytest.mark.system), "torchscript"])
def test_tiny_vit_exports_and_matches(
    fmt: str, tuned: tuple[nn.Module, nn.Module, dict[str, object]], tmp_path: Path
) -> None:
    _, model, _ = tuned
    model.eval()
    example = torch.randn(3, 3, 32, 32)  # another batch size than the export's example
    with torch.inference_mode():
        expected = model(example).numpy()
    export_model(model, fmt, TINY, 32, ["a", "b", "c", "d", "e"], tmp_path)  # type: ignore[arg-type]
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
        got = session.run(["logits"], {"input": example.numpy()})[0]
    else:
        with torch.inference_mode():
            got = torch.jit.load(str(tmp_path / "model.pt"))(example).numpy()
    assert np.allclose(got, expected, atol=1e-4)
    assert (tmp_path / "preprocessing.json").exists()


@pytest.mark.api
def test_architectures_are_listed_by_the_api_and_the_client(
    client: TestClient, capsys: pytest.CaptureFixture[str]
) -> None:
    response = client.get("/v1/architectures")
    assert response.status_code == 200
    items = {a["name"]: a for a in response.json()["items"]}
    assert list(items) == known_architectures()
    # timm's family lists nothing: its architectures are named, not enumerated.
    assert {a["family"] for a in items.values()} == {f.name for f in FAMILIES if f.architectures}
    assert items[TINY] == {
        "name": TINY, "family": "vit", "input_size": 32, "fixed_input_size": True,
        "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
        "layer_groups": ["embed", "block1", "block2", "block3", "block4", "head"],
        "feature_dim": TINY_WIDTH,
    }  # fmt: skip
    assert items["vit_b_16"]["input_size"] == 224 and items["vit_b_16"]["feature_dim"] == 768
    assert len(items["vit_b_16"]["layer_groups"]) == 14  # embed, 12 blocks, head
    assert items["resnet18"]["layer_groups"] == ["stem", *(f"layer{i}" for i in range(1, 5)),
                                                 "head"]  # fmt: skip
    # A ViT runs at its own size only: a source claiming another is refused up front.
    refused = client.post(
        "/v1/sources",
        files={"weights": ("w.safetensors", b"unread"), "signature": ("s", b"unread")},
        data={"architecture": TINY, "num_classes": "5", "name": "vit", "input_size": "64"},
    )
    assert refused.status_code == 422
    assert refused.json()["detail"] == "vit_tiny runs at 32 px only; input_size=64 does not fit it"
    # The Python client and `p2l architectures` over the same app.
    p2l = Client("http://testserver", transport=client._transport)
    assert p2l.architectures.list() == response.json()["items"]
    answer = cmd_architectures(p2l, argparse.Namespace(name=None))
    assert answer.show is not None
    answer.show(answer.value)
    shown = capsys.readouterr().out
    assert "vit_tiny" in shown and "embed block1 block2 block3 block4 head" in shown


@pytest.mark.api
def test_architectures_is_a_plain_read(make_client: Callable[..., TestClient]) -> None:
    """Open on an open service; with keys, it needs one as every /v1 route does."""
    assert make_client().get("/v1/architectures").status_code == 200
    closed = make_client(api_keys="k1")
    assert closed.get("/v1/architectures").status_code == 401
    assert closed.get("/v1/architectures", headers={"X-API-Key": "k1"}).status_code == 200


@pytest.mark.system
def test_a_vit_source_is_registered_fine_tuned_and_predicts_through_the_service(
    make_client: Callable[..., TestClient],
) -> None:
    """The whole path a user takes with a new family: register its weights with a stored
    dataset's signature, fine-tune it as a job (layer-wise rates over the ViT's own groups),
    and classify with the model the job made."""
    client = make_client(start_worker=True)
    target = upload_garments(client, per_class=12)
    weights = save(weights_to_save(build_model(TINY, 10)))
    registered = client.post(
        "/v1/sources",
        files={"weights": ("vit.safetensors", weights)},
        data={
            "architecture": TINY,
            "num_classes": "10",
            "name": "vit-garments",
            "dataset_id": target,
        },
    )
    assert registered.status_code == 201, registered.text
    assert registered.json()["input_size"] == 32
    job = start_job(
        client, target_dataset_id=target, source_id=registered.json()["id"],
        schedule="manual", epochs=2, decay=0.5, patience=None,
    )  # fmt: skip
    groups = ["embed", "block1", "block2", "block3", "block4", "head"]
    assert job["params"]["layer_groups"] == groups
    finished = wait_for_job(client, job["id"])
    assert finished["status"] == "succeeded", finished
    model = client.get(f"/v1/models/{finished['model_id']}").json()
    lrs = [g["lr"] for g in model["report"]["groups"]]
    assert lrs == pytest.approx([lrs[-1] * 0.5**k for k in range(5, -1, -1)])
    png = next(iter(fashion_mnist_images(per_class=1).values()))[0]
    predicted = client.post(
        f"/v1/models/{finished['model_id']}/predict", files=[("files", ("x.png", png))]
    )
    assert predicted.status_code == 200, predicted.text
    assert len(predicted.json()["predictions"][0]["top"]) >= 1
