"""Layer groups, layer-wise learning rates and the fine-tuning pipeline, as a library."""

from pathlib import Path

import numpy as np
import pytest
import torch

from app.families import build_model, get_spec, layer_groups, load_model, replace_head
from app.finetune.layers import LayerwiseLR
from app.finetune.pipeline import FinetuneOptions, finetune, stratified_split, three_way_split
from app.finetune.train import ImageTensors, TrainConfig, evaluate, train_classifier
from app.zoo.bundled import BUNDLED_DIR, bundled_target

ARCH = "compact_cnn"


def garments_source() -> torch.nn.Module:
    """The bundled Fashion-MNIST source trained on 1,000 images per class."""
    return load_model(ARCH, 10, BUNDLED_DIR / "sources" / "fashion_9k.safetensors")


def garments_target() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The bundled garments target (held-out Fashion-MNIST images), training part."""
    images, labels, names, is_test = bundled_target("fashion")
    return images[~is_test], labels[~is_test], names


def lrs_by_group(param_groups: list[dict]) -> dict[str, float]:
    return {g["group"]: g["lr"] for g in param_groups}


@pytest.mark.unit
def test_decay_sets_one_rate_per_group_from_the_head_down() -> None:
    model = replace_head(garments_source(), 5)
    groups = [g.name for g in layer_groups(model)]
    assert groups == ["stem", "stage1", "stage2", "stage3", "head"]
    half = lrs_by_group(LayerwiseLR(0.1, decay=0.5).param_groups(model, 5e-4))
    assert half == pytest.approx(
        {"head": 0.1, "stage3": 0.05, "stage2": 0.025, "stage1": 0.0125, "stem": 0.00625}
    )
    tenth = lrs_by_group(LayerwiseLR(0.1, decay=0.1).param_groups(model, 5e-4))
    assert tenth["stage3"] == pytest.approx(0.01) and tenth != half
    plain = lrs_by_group(LayerwiseLR(0.1, decay=1.0).param_groups(model, 5e-4))
    assert set(plain.values()) == {0.1}


@pytest.mark.unit
def test_multipliers_freezing_and_weight_decay_rules() -> None:
    model = replace_head(garments_source(), 5)
    explicit = LayerwiseLR(0.2, multipliers=(0.0, 0.1, 0.2, 0.5, 1.0)).param_groups(model, 1e-3)
    assert lrs_by_group(explicit) == pytest.approx(
        {"stage1": 0.02, "stage2": 0.04, "stage3": 0.1, "head": 0.2}
    )
    assert not any(p.requires_grad for p in model.stem.parameters())

    model = replace_head(garments_source(), 5)
    groups = LayerwiseLR(0.1, decay=0.5, freeze_below=2).param_groups(model, 1e-3)
    assert {g["group"] for g in groups} == {"stage2", "stage3", "head"}
    for group in groups:
        dims = {p.ndim for p in group["params"]}
        # Biases and BatchNorm parameters (1-D) never get weight decay.
        assert group["weight_decay"] == (0.0 if dims == {1} else 1e-3)
        assert dims == {1} or 1 not in dims
    with pytest.raises(ValueError, match="multipliers"):
        LayerwiseLR(0.1, multipliers=(1.0, 1.0)).param_groups(model, 0)


@pytest.mark.unit
def test_freeze_below_keeps_frozen_weights_bit_identical() -> None:
    images, labels, _ = garments_target()
    spec = get_spec(ARCH)
    model = replace_head(garments_source(), 5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    schedule = LayerwiseLR(0.05, decay=1.0, freeze_below=3)
    train_classifier(
        model,
        ImageTensors(images, labels, spec.mean, spec.std),
        TrainConfig(epochs=2, batch_size=32),
        param_groups=schedule.param_groups(model, 5e-4),
    )
    after = model.state_dict()
    frozen = [k for k in before if k.startswith(("stem.", "stages.0.", "stages.1."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # BN stats too
    assert not torch.equal(before["stages.2.0.0.weight"], after["stages.2.0.0.weight"])


@pytest.mark.unit
def test_decay_changes_the_result() -> None:
    images, labels, names = garments_target()
    spec = get_spec(ARCH)
    results = {}
    for decay in (1.0, 0.01):
        options = FinetuneOptions(schedule="manual", decay=decay, epochs=3, patience=None)
        model, report = finetune(
            garments_source(), ARCH, images, labels, names, spec.mean, spec.std,
            options,
        )  # fmt: skip
        results[decay] = (model.state_dict()["stem.0.weight"].clone(), report)
    (w_full, r_full), (w_low, r_low) = results[1.0], results[0.01]
    assert r_full.groups[0]["lr"] == pytest.approx(0.05)
    assert r_low.groups[0]["lr"] == pytest.approx(0.05 * 0.01**4)
    assert not torch.equal(w_full, w_low)
    assert [h["train_loss"] for h in r_full.history] != [h["train_loss"] for h in r_low.history]


@pytest.mark.system
def test_reported_accuracy_comes_from_a_split_that_chose_nothing() -> None:
    images, labels, names = garments_target()
    spec = get_spec(ARCH)
    options = FinetuneOptions(schedule="auto", auto_epochs=1, epochs=2, patience=1, seed=4)
    model, report = finetune(
        garments_source(), ARCH, images, labels, names, spec.mean, spec.std, options
    )
    train, val, test = three_way_split(labels, options.val_fraction, options.test_fraction, 4)
    # The auto search, the stopping epoch and the checkpoint saw the validation split only;
    # the figure to quote is measured on a test split disjoint from it and from training.
    assert not (set(test) & set(val)) and not (set(test) & set(train))
    assert report.evaluated_on == "test" and report.test_images == len(test) == 50
    assert report.val_images == len(val) and report.train_images == len(train)
    held_out = ImageTensors(images[test], labels[test], spec.mean, spec.std)
    assert report.test_accuracy == pytest.approx(evaluate(model, held_out).accuracy)
    assert sum(sum(row) for row in report.confusion_matrix) == len(test)
    assert report.auto_search["candidates"] and report.val_accuracy is not None
    # Every trial of the search reports both scores; the loss is the mean cross-entropy.
    trials = [t for r in report.auto_search["rounds"] for t in r["trials"]]
    assert len(trials) == 6 and all(0 < t["val_loss"] < 20 for t in trials)
    scored = evaluate(model, held_out, probabilities=True)
    picked = scored.probabilities[np.arange(len(scored.labels)), scored.labels]
    assert scored.loss == pytest.approx(-np.log(picked).mean(), rel=1e-4)


@pytest.mark.unit
def test_without_validation_training_runs_its_epochs_and_keeps_the_last_weights() -> None:
    images, labels, names = garments_target()
    spec = get_spec(ARCH)
    options = FinetuneOptions(
        schedule="manual", epochs=3, patience=None, val_fraction=0, test_fraction=0
    )
    _, report = finetune(garments_source(), ARCH, images, labels, names, spec.mean, spec.std,
                         options)  # fmt: skip
    assert len(report.history) == 3 and report.train_images == len(labels)
    assert report.evaluated_on == "none" and report.test_accuracy is None
    with pytest.raises(ValueError, match="validation split"):
        finetune(garments_source(), ARCH, images, labels, names, spec.mean, spec.std,
                 FinetuneOptions(schedule="auto", val_fraction=0))  # fmt: skip


@pytest.mark.unit
def test_the_baseline_reports_its_epochs_to_draw_its_curve() -> None:
    images, labels, names = garments_target()
    spec = get_spec(ARCH)
    options = FinetuneOptions(schedule="manual", epochs=2, patience=None, baseline=True)
    _, report = finetune(garments_source(), ARCH, images, labels, names, spec.mean, spec.std,
                         options)  # fmt: skip
    assert report.baseline is not None
    history = report.baseline["history"]
    assert [(m["phase"], m["epoch"]) for m in history] == [("baseline", 1), ("baseline", 2)]
    assert all(m["val_accuracy"] is not None and m["train_loss"] > 0 for m in history)
    assert report.baseline["epochs_run"] == 2
    assert {m["phase"] for m in report.history} == {"fine_tune"}


@pytest.mark.unit
def test_stratified_split_is_per_class_and_deterministic() -> None:
    labels = np.repeat(np.arange(3), [10, 20, 5])
    train, val = stratified_split(labels, 0.2, seed=3)
    assert np.bincount(labels[val]).tolist() == [2, 4, 1]
    assert set(train) | set(val) == set(range(35)) and not set(train) & set(val)
    again = stratified_split(labels, 0.2, seed=3)
    assert np.array_equal(again[1], val)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("architecture", "first", "count"),
    [("resnet18", "stem", 6), ("mobilenet_v3_small", "stem", 14), ("efficientnet_b0", "stem", 10)],
)
def test_torchvision_families_split_into_groups(architecture: str, first: str, count: int) -> None:
    model = build_model(architecture, 1000)
    groups = layer_groups(model)
    assert groups[0].name == first and groups[-1].name == "head" and len(groups) == count
    owned = sum(g.numel() for g in groups)
    assert owned == sum(p.numel() for p in model.parameters())
    replace_head(model, 7)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 7)


@pytest.mark.unit
def test_the_docs_defaults_table_is_the_options_model() -> None:
    """Every FinetuneOptions field is in the fine-tuning guide's table, with the model's default."""
    section = (Path(__file__).parents[2] / "docs" / "guide" / "fine-tuning.md").read_text()
    table = section[section.index("\n| field |") :].split("\n\n", 1)[0]
    documented: dict[str, str] = {}
    for line in table.strip().splitlines()[2:]:
        names, defaults = (cell.strip() for cell in line.split("|")[1:3])
        keys = [n.strip(" `") for n in names.split(",")]
        values = [d.strip(" `") for d in defaults.split(",")]
        documented.update(zip(keys, values, strict=True))
    assert set(documented) == set(FinetuneOptions.model_fields)
    for name, field in FinetuneOptions.model_fields.items():
        text, default = documented[name], field.default
        if default is None:
            assert text == "—", name
        elif isinstance(default, bool):
            assert text == str(default).lower(), name
        elif isinstance(default, int | float):
            assert float(text) == default, name
        else:
            assert text == default, name
