"""timm models as architectures (``timm/<model_name>``, the timm extra): resolved by name,
split into timm's own coarse layer groups, featured by their pre-logits, fine-tuned with
layer-wise rates and registered, ranked and refined through the service; without timm, a
clear refusal naming the extra.

timm's ``test_*`` models (a few hundred thousand parameters) keep it to seconds; nothing is
downloaded (pretrained=False: the weights are the test's own).
"""

import sys
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save
from torch import nn

from app.families import (
    build_model,
    describe_architecture,
    family_of,
    feature_dim,
    feature_extractor,
    get_spec,
    head,
    head_attribute,
    head_outputs,
    layer_groups,
    no_weight_decay,
    replace_head,
    timm_models,
    weights_to_save,
)
from app.finetune.layers import LayerwiseLR
from app.finetune.pipeline import FinetuneOptions, finetune
from app.p2l.refine import source_outputs
from app.zoo.bundled import bundled_target
from tests.archives import clipart_images
from tests.helpers import rank, upload_dataset, upload_garments

timm = pytest.importorskip("timm", reason="no timm here: pip install -e '.[timm]'")

RESNET = "timm/test_resnet"  # 160 px by its config, runs at any size (global pooling)
VIT = "timm/test_vit"  # 160 px only: its position embedding is sized for it


# timm's register_model reads a model's config from its module's default_cfgs.
default_cfgs = {"p2l_test_unbuildable": {"input_size": (3, 64, 64)}}


def _unbuildable(name: str) -> Callable[..., nn.Module]:
    """A timm model entrypoint that fails as a model needing what this machine lacks would."""

    def build(pretrained: bool = False, **kwargs: object) -> nn.Module:
        raise RuntimeError("this model needs a GPU kernel")

    build.__name__ = build.__qualname__ = name
    return build


@pytest.fixture
def without_timm(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A process where ``import timm`` fails, as on a service installed without the extra."""
    timm_models.spec.cache_clear()
    describe_architecture.cache_clear()
    monkeypatch.setitem(sys.modules, "timm", None)
    yield
    timm_models.spec.cache_clear()
    describe_architecture.cache_clear()


@pytest.mark.unit
def test_a_timm_name_resolves_to_its_config() -> None:
    resnet, vit = get_spec(RESNET), get_spec(VIT)
    # Input size, normalisation and fixed size from timm's pretrained config.
    cfg = timm.models.get_pretrained_cfg("test_vit")
    assert (vit.default_input_size, vit.mean, vit.std) == (160, tuple(cfg.mean), tuple(cfg.std))
    assert vit.fixed_input_size and not resnet.fixed_input_size
    # A pretrained tag picks that tag's config; the model is the same.
    tagged = get_spec("timm/resnet50.a1_in1k")
    assert tagged.name == "timm/resnet50.a1_in1k" and tagged.default_input_size == 224
    model = build_model(RESNET, 4)
    assert family_of(model).name == "timm" and head_outputs(model) == 4
    for name, reason in [
        ("timm/no_such_model", r"unknown timm model 'no_such_model'.*timm.list_models\(\)"),
        ("timm/resnet18.no_such_tag", r"Invalid pretrained tag \(no_such_tag\)"),
        ("timm/deit_tiny_distilled_patch16_224", r"classifier is a tuple, not one Linear"),
    ]:
        with pytest.raises(ValueError, match=reason):
            get_spec(name)
    # Models timm knows but the service cannot use: refused with the reason, never a 500.
    if not timm.is_model("p2l_test_unbuildable"):
        for name in ("p2l_test_unbuildable", "p2l_test_unconfigured"):
            timm.models.register_model(_unbuildable(name))
    with pytest.raises(ValueError, match=r"timm has no configuration for timm/p2l_test_unconf"):
        get_spec("timm/p2l_test_unconfigured")

    with pytest.raises(ValueError, match=r"timm/p2l_test_unbuildable cannot be used: building "
                       r"it failed \(RuntimeError: this model needs a GPU kernel\)"):  # fmt: skip
        get_spec("timm/p2l_test_unbuildable")
    with pytest.raises(ValueError, match=r"or timm/<model_name> for a timm model"):
        get_spec("convnext_tiny")  # torchvision's name is not listed; timm's needs its prefix


@pytest.mark.unit
@pytest.mark.parametrize(
    ("name", "groups"),
    [
        (RESNET, ["stem", "group1", "group2", "group3", "group4", "head"]),
        # timm folds the final norm into the last block: 6 blocks, 6 groups.
        (VIT, ["stem", *(f"group{i}" for i in range(1, 7)), "head"]),
        ("timm/convnext_atto", ["stem", "group1", "group2", "group3", "group4", "head"]),
    ],
)
def test_layer_groups_are_timms_coarse_groups_then_the_head(name: str, groups: list[str]) -> None:
    with torch.device("meta"):
        model = build_model(name, 3)
    split = layer_groups(model)  # itself checks: every parameter in exactly one group
    assert [g.name for g in split] == groups
    classifier = head_attribute(model)
    fresh = {f"{classifier}.{k}" for k, _ in head(model).named_parameters()}
    assert {k for k, _ in split[-1].named_parameters} == fresh
    # The same partition as timm's layer-wise decay uses, but for what timm counts as head
    # and a new head does not replace (ConvNeXt's pre-logits norm): with the last group.
    by_timm = timm.models.group_parameters(model, model.group_matcher(coarse=True))
    theirs = [set(v) for _, v in sorted(by_timm.items())]
    theirs[-2] |= theirs[-1] - fresh
    theirs[-1] &= fresh
    assert [{k for k, _ in g.named_parameters} for g in split] == theirs
    # A fresh head keeps the groups; timm's own reset replaced it.
    assert head_outputs(replace_head(model, 7)) == 7
    assert [g.name for g in layer_groups(model)] == groups


@pytest.mark.unit
def test_layerwise_rates_and_weight_decay_follow_timm() -> None:
    model = build_model(VIT, 3)
    spared = no_weight_decay(model)
    assert {"pos_embed", "cls_token"} <= spared  # timm's no_weight_decay(), plus every 1-D one
    param_groups = LayerwiseLR(0.1, decay=0.5, freeze_below=1).param_groups(model, 1e-3)
    rates = {g["group"]: g["lr"] for g in param_groups}
    assert "stem" not in rates  # frozen
    assert rates["head"] == 0.1 and rates["group6"] == 0.05
    assert rates["group1"] == pytest.approx(0.1 * 0.5**6)
    decay = {id(p): g["weight_decay"] for g in param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert decay[id(named["head.weight"])] == 1e-3 and decay[id(named["head.bias"])] == 0.0
    assert not named["pos_embed"].requires_grad  # in the frozen stem


@pytest.mark.unit
def test_features_are_the_non_negative_pre_logits_the_second_stage_reads() -> None:
    torch.manual_seed(0)
    model = build_model(RESNET, 5).eval()
    spec = get_spec(RESNET)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    # The second stage (LogME, LEEP, NCE) reads the classifier's input, batch by batch.
    features, probabilities = source_outputs(model, images, spec.mean, spec.std,
                                             torch.device("cpu"))  # fmt: skip
    assert probabilities.shape == (6, 5)
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    mean = torch.tensor(spec.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(spec.std).view(1, 3, 1, 1) * 255
    batch = (batch - mean) / std
    with torch.inference_mode():
        pre_logits = model.forward_head(model.forward_features(batch), pre_logits=True)
        extracted = feature_extractor(model).eval()(batch)
    assert np.allclose(features, pre_logits.numpy(), atol=1e-5)
    # The reference network's view: the same, made non-negative.
    assert extracted.shape == (6, feature_dim(feature_extractor(build_model(RESNET, 5)), 64))
    assert torch.allclose(extracted, pre_logits.clamp(min=0), atol=1e-6)
    assert (extracted >= 0).all() and (extracted > 0).any()


@pytest.mark.unit
def test_a_timm_source_fine_tunes_with_layerwise_rates() -> None:
    """The service's pipeline on a timm model: its groups, each at half the one above."""
    images, labels, names, is_test = bundled_target("fashion")
    keep = np.concatenate([np.flatnonzero((labels == c) & ~is_test)[:8] for c in range(5)])
    torch.manual_seed(0)
    source = build_model(RESNET, 10)
    spec = get_spec(RESNET)
    options = FinetuneOptions(
        schedule="manual", decay=0.5, epochs=1, patience=None, val_fraction=0.0,
        test_fraction=0.25, batch_size=16,
    )  # fmt: skip
    model, report = finetune(
        source, RESNET, images[keep], labels[keep], names, spec.mean, spec.std, options
    )
    assert [g["group"] for g in report.groups] == [
        "stem", "group1", "group2", "group3", "group4", "head"
    ]  # fmt: skip
    lrs = [g["lr"] for g in report.groups]
    assert lrs == pytest.approx([lrs[-1] * 0.5**k for k in range(5, -1, -1)])
    assert head_outputs(model) == 5
    before, after = source.state_dict(), model.state_dict()
    assert not torch.equal(before["conv1.0.weight"], after["conv1.0.weight"])  # the stem trained


@pytest.mark.api
def test_the_api_describes_registers_ranks_and_refines_a_timm_source(
    make_client: Callable[..., TestClient],
) -> None:
    client = make_client(import_bundled_zoo=False)  # the timm source alone: refined for sure
    listed = client.get("/v1/architectures").json()
    assert listed["timm_version"] == timm.__version__
    assert not any(a["name"].startswith("timm/") for a in listed["items"])  # not enumerated
    described = client.get(f"/v1/architectures/{VIT}")
    assert described.status_code == 200, described.text
    assert described.json() | {"mean": None, "std": None} == {
        "name": VIT, "family": "timm", "input_size": 160, "fixed_input_size": True,
        "mean": None, "std": None, "feature_dim": 64,
        "layer_groups": ["stem", *(f"group{i}" for i in range(1, 7)), "head"],
    }  # fmt: skip
    missing = client.get("/v1/architectures/timm/no_such_model")
    assert missing.status_code == 404 and "no_such_model" in missing.json()["detail"]
    # Registered with the images it was trained on: the service counts and signs them.
    trained_on = upload_dataset(client, clipart_images(), "clipart.zip")
    weights = save(weights_to_save(build_model(RESNET, 3)))
    registered = client.post(
        "/v1/sources",
        files={"weights": ("w.safetensors", weights)},
        data={"architecture": RESNET, "num_classes": "3", "name": "clipart-timm",
              "dataset_id": trained_on, "input_size": "64"},
    )  # fmt: skip
    assert registered.status_code == 201, registered.text
    source = registered.json()
    assert (source["architecture"], source["input_size"], source["num_images"]) == (
        RESNET,
        64,
        sum(len(v) for v in clipart_images().values()),
    )
    assert source["class_names"] == sorted(clipart_images())
    target = upload_garments(client, per_class=6)
    ranking = rank(client, target, refine={"method": "logme", "top": 3})
    (ranked,) = ranking["results"]
    assert ranked["name"] == "clipart-timm" and ranked["refine_score"] is not None, ranking
    # Weights of another timm model do not fit: named, as for any architecture.
    wrong = client.post(
        "/v1/sources",
        files={"weights": ("w.safetensors", weights)},
        data={"architecture": VIT, "num_classes": "3", "name": "x", "dataset_id": trained_on},
    )
    assert wrong.status_code == 422 and "do not fit timm/test_vit" in wrong.json()["detail"]


@pytest.mark.api
@pytest.mark.usefixtures("without_timm")
def test_without_timm_a_timm_architecture_is_a_422_naming_the_extra(client: TestClient) -> None:
    assert timm_models.installed_version() is None
    assert client.get("/v1/architectures").json()["timm_version"] is None
    refused = client.post(
        "/v1/sources",
        files={"weights": ("w.safetensors", b"unread"), "signature": ("s", b"unread")},
        data={"architecture": RESNET, "num_classes": "3", "name": "x"},
    )
    assert refused.status_code == 422
    assert refused.json()["detail"] == (
        "timm architectures need the timm package, which this service lacks: "
        "pip install 'p2l-service[timm]'"
    )
    described = client.get(f"/v1/architectures/{RESNET}")
    assert described.status_code == 404 and "p2l-service[timm]" in described.json()["detail"]
    # The listed architectures are untouched.
    assert client.get("/v1/architectures/resnet18").status_code == 200
