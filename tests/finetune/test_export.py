"""Export: ONNX and TorchScript files that, fed as preprocessing.json says, give the service's
own predictions, without this project's code; and the export's predict.py, run in a fresh
venv with onnxruntime, numpy and Pillow alone, prints the service's own answers."""

import io
import json
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from app.config import Settings
from app.families import get_spec
from app.finetune.export import bundle_files
from app.main import create_app
from tests.archives import DATA, image_folder_entries, png_bytes, varied_images, zip_bytes
from tests.helpers import PROBLEM, finetuned_model

pytestmark = pytest.mark.system

UPLOADED_PER_CLASS = 30  # the rest of the sample's 50 per class is held out


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export") / "data"


@pytest.fixture(scope="module")
def service(data_dir: Path) -> Iterator[TestClient]:
    """A started service with its job worker."""
    settings = Settings(_env_file=None, data_dir=data_dir, start_worker=True)
    client = TestClient(create_app(settings), raise_server_exceptions=False)
    client.__enter__()
    yield client
    client.__exit__(None, None, None)


@pytest.fixture(scope="module")
def garments() -> dict[str, list[bytes]]:
    """The Fashion-MNIST sample (real 28 x 28 garments, 5 classes, 50 each) as PNGs."""
    sample = np.load(DATA / "fashion_mnist_sample.npz")
    return {
        str(name): [
            png_bytes(Image.fromarray(pixels, "L"))
            for pixels in sample["images"][sample["labels"] == label]
        ]
        for name, label in zip(sample["names"], sample["label_ids"], strict=True)
    }


@pytest.fixture(scope="module")
def held_out(garments: dict[str, list[bytes]]) -> list[tuple[str, bytes]]:
    """(file name, PNG) of the images the model never saw: 20 per class."""
    return [
        (f"{label}-{i}.png", image)
        for label, images in garments.items()
        for i, image in enumerate(images[UPLOADED_PER_CLASS:])
    ]


@pytest.fixture(scope="module")
def model_id(service: TestClient, garments: dict[str, list[bytes]]) -> str:
    """A compact_cnn garment source fine-tuned (2 epochs) on 30 garments per class."""
    uploaded = {label: images[:UPLOADED_PER_CLASS] for label, images in garments.items()}
    archive = zip_bytes(image_folder_entries(uploaded))
    return str(finetuned_model(service, archive, "fashion_9k", epochs=2)["model_id"])


def service_probabilities(
    client: TestClient, model_id: str, images: list[tuple[str, bytes]], classes: list[str]
) -> np.ndarray:
    """(N, classes) probabilities from POST /v1/models/{id}/predict, in class order."""
    files = [("files", (name, data)) for name, data in images]
    response = client.post(
        f"/v1/models/{model_id}/predict", files=files, params={"top_k": len(classes)}
    )
    assert response.status_code == 200, response.text
    rows = []
    for prediction in response.json()["predictions"]:
        scores = {entry["label"]: entry["probability"] for entry in prediction["top"]}
        rows.append([scores[name] for name in classes])
    return np.array(rows)


def preprocess(data: bytes, spec: dict) -> np.ndarray:
    """An image as a consumer would feed the exported model, following preprocessing.json
    alone: RGB, shorter side to input_size, centre square, / 255, (x - mean) / std, CHW."""
    size = spec["input_size"]
    image = Image.open(io.BytesIO(data)).convert(spec["color"])
    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    left, top = (width - size) // 2, (height - size) // 2
    box = (
        left * image.width / width,
        top * image.height / height,
        (left + size) * image.width / width,
        (top + size) * image.height / height,
    )
    square = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
    pixels = np.asarray(square, dtype=np.float32) / 255
    normalised = (pixels - np.array(spec["mean"], np.float32)) / np.array(spec["std"], np.float32)
    return normalised.transpose(2, 0, 1).astype(np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def download(client: TestClient, model_id: str, format: str) -> dict[str, bytes]:
    """The files of an export zip, by name."""
    response = client.get(f"/v1/models/{model_id}/export", params={"format": format})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert f'filename="model-{model_id}-{format}.zip"' in response.headers["content-disposition"]
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_onnx_export_gives_the_services_predictions(
    service: TestClient, model_id: str, held_out: list[tuple[str, bytes]], data_dir: Path
) -> None:
    files = download(service, model_id, "onnx")
    assert list(files) == bundle_files("onnx")
    spec = json.loads(files["preprocessing.json"])
    assert spec["export"]["opset"] == 18 and spec["export"]["format"] == "onnx"
    assert {k: v for k, v in spec.items() if k != "export"} == service.get(
        f"/v1/models/{model_id}/preprocessing"
    ).json()
    classes = spec["class_names"]

    session = onnxruntime.InferenceSession(files["model.onnx"])
    (model_input,) = session.get_inputs()
    assert model_input.name == spec["input_name"]
    assert model_input.shape[1:] == [3, spec["input_size"], spec["input_size"]]
    batch = np.stack([preprocess(data, spec) for _, data in held_out])
    (logits,) = session.run([spec["output_name"]], {spec["input_name"]: batch})
    ours = softmax(logits)
    theirs = service_probabilities(service, model_id, held_out, classes)

    # Same top-1 on every held-out image, probabilities within 1e-4.
    assert ours.shape == theirs.shape == (100, 5)
    assert (ours.argmax(1) == theirs.argmax(1)).all()
    difference = float(np.abs(ours - theirs).max())
    print(f"ONNX vs service on {len(held_out)} held-out images: max |dp| = {difference:.2e}")
    assert difference <= 1e-4
    # The model is a real classifier, not a constant: it gets most garments right.
    truth = [name.split("-")[0] for name, _ in held_out]
    accuracy = np.mean([classes[i] == t for i, t in zip(ours.argmax(1), truth, strict=True)])
    print(f"top-1 agreement 100/100, held-out accuracy {accuracy:.2f}")
    assert accuracy >= 0.6, accuracy
    # The batch axis is dynamic: one image at a time gives the same answers.
    (single,) = session.run(None, {spec["input_name"]: batch[:1]})
    assert np.allclose(softmax(single)[0], ours[0], atol=1e-6)
    # The export was built in the store's scratch and cleaned up.
    assert not any((data_dir / "tmp").iterdir())


def test_torchscript_export_loads_with_torch_jit_and_matches(
    service: TestClient, model_id: str, held_out: list[tuple[str, bytes]]
) -> None:
    files = download(service, model_id, "torchscript")
    assert list(files) == bundle_files("torchscript")
    spec = json.loads(files["preprocessing.json"])
    module = torch.jit.load(io.BytesIO(files["model.pt"]))
    batch = torch.from_numpy(np.stack([preprocess(data, spec) for _, data in held_out]))
    with torch.no_grad():
        ours = module(batch).softmax(1).numpy()
    theirs = service_probabilities(service, model_id, held_out, spec["class_names"])
    assert (ours.argmax(1) == theirs.argmax(1)).all()
    assert float(np.abs(ours - theirs).max()) <= 1e-4


def test_preprocessing_spec_states_what_the_service_does(
    service: TestClient, model_id: str
) -> None:
    spec = service.get(f"/v1/models/{model_id}/preprocessing").json()
    model = service.get(f"/v1/models/{model_id}").json()
    architecture = get_spec(model["architecture"])
    assert spec["input_size"] == model["input_size"] == 32
    assert spec["mean"] == list(architecture.mean) and spec["std"] == list(architecture.std)
    assert spec["class_names"] == model["class_names"]
    assert (spec["layout"], spec["color"], spec["scale"]) == ("NCHW", "RGB", "0..1 (pixel / 255)")
    assert "centre" in spec["resize"] and "shorter side" in spec["resize"]
    assert spec["output"] == "logits; softmax gives probabilities"


def test_bad_export_requests_are_problems(service: TestClient, model_id: str) -> None:
    response = service.get(f"/v1/models/{model_id}/export", params={"format": "tflite"})
    assert response.status_code == 422
    assert response.headers["content-type"] == PROBLEM
    missing = "0" * 32
    for path in (f"/v1/models/{missing}/export", f"/v1/models/{missing}/preprocessing"):
        response = service.get(path)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == PROBLEM


LINE = re.compile(r"(?P<path>[^\t]+)\t(?P<label>[^\t]+)\t(?P<probability>[01]\.\d{4})")


def unpack(files: dict[str, bytes], folder: Path) -> Path:
    """The export's files written into ``folder``."""
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def service_top1(client: TestClient, model_id: str, paths: list[Path]) -> list[tuple[str, float]]:
    """(label, probability) of the service's top-1 for each file, in order."""
    files = [("files", (path.name, path.read_bytes())) for path in paths]
    response = client.post(f"/v1/models/{model_id}/predict", files=files, params={"top_k": 1})
    assert response.status_code == 200, response.text
    tops = [prediction["top"][0] for prediction in response.json()["predictions"]]
    return [(top["label"], top["probability"]) for top in tops]


def check_predict_py_output(
    stdout: str, paths: list[Path], theirs: list[tuple[str, float]]
) -> float:
    """Every line ``path<TAB>label<TAB>probability``, in order, with the service's label and
    its probability within 1e-3; the largest difference."""
    lines = stdout.splitlines()
    assert len(lines) == len(paths)
    worst = 0.0
    for line, path, (label, probability) in zip(lines, paths, theirs, strict=True):
        match = LINE.fullmatch(line)
        assert match, repr(line)
        assert match["path"] == str(path) and match["label"] == label, (line, label)
        worst = max(worst, abs(float(match["probability"]) - probability))
    assert worst <= 1e-3, worst
    return worst


def test_predict_py_in_a_fresh_venv_prints_the_services_answers(
    service: TestClient,
    model_id: str,
    held_out: list[tuple[str, bytes]],
    tmp_path: Path,
) -> None:
    """onnxruntime, numpy and Pillow from PyPI in a new venv, nothing else: predict.py gives
    the service's own top-1 on held-out garments and on images of every format and mode
    (transparent clip art, large JPEGs, CMYK, 16-bit, 500:1)."""
    files = download(service, model_id, "onnx")
    bundle = unpack(files, tmp_path / "my model")  # a space in the path: run from anywhere
    images = tmp_path / "held out"
    images.mkdir()
    paths = []
    for name, data in [*held_out, *varied_images().items()]:
        paths.append(images / name)
        paths[-1].write_bytes(data)

    started = time.monotonic()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    installed = subprocess.run(
        [*pip, "onnxruntime", "numpy", "pillow"], capture_output=True, text=True, timeout=600
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    print(f"fresh venv with onnxruntime, numpy, pillow: {time.monotonic() - started:.1f} s")
    probe = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True)
    assert "No module named 'torch'" in probe.stderr  # nothing of this project's venv

    done = subprocess.run(
        [python, str(bundle / "predict.py"), *map(str, paths)],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done.stderr[-3000:]
    theirs = service_top1(service, model_id, paths)
    worst = check_predict_py_output(done.stdout, paths, theirs)
    print(f"predict.py = service on {len(paths)} images; max |dp| {worst:.1e} (4 decimals)")

    classes = json.loads(files["preprocessing.json"])["class_names"]
    assert (bundle / "labels.txt").read_text().splitlines() == classes
    model = service.get(f"/v1/models/{model_id}").json()
    dataset = service.get(f"/v1/datasets/{model['target_dataset_id']}").json()
    card = (bundle / "README.md").read_text()
    assert f"**fashion_9k** fine-tuned on the dataset **{dataset['name']}**" in card
    assert f"| test | 30 | {model['report']['test_accuracy']:.4f} |" in card
    assert "pip install onnxruntime numpy pillow" in card


def test_predict_py_runs_a_torchscript_export_with_torch(
    service: TestClient, model_id: str, tmp_path: Path
) -> None:
    """The same script in a TorchScript export: torch instead of onnxruntime (this venv's)."""
    bundle = unpack(download(service, model_id, "torchscript"), tmp_path / "bundle")
    assert not (bundle / "model.onnx").exists()
    paths = []
    for name, data in varied_images().items():
        paths.append(tmp_path / name)
        paths[-1].write_bytes(data)
    done = subprocess.run(
        [sys.executable, str(bundle / "predict.py"), *map(str, paths)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done.stderr[-3000:]
    check_predict_py_output(done.stdout, paths, service_top1(service, model_id, paths))
    assert "pip install torch numpy pillow" in (bundle / "README.md").read_text()
