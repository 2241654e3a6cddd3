"""The export's predict.py (app/finetune/export_assets/predict.py) sees images exactly as the
service does: the same pixels as ``decode_square`` for every format, mode and size the
service takes, the same float32 input as its tensors, and the same refusals."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from app.families import get_spec
from app.finetune.export_assets import predict
from app.finetune.train import ImageTensors
from app.imaging.images import ImageRejected, decode_square
from tests.archives import encoded, varied_images

pytestmark = pytest.mark.unit

SIZES = (32, 64)


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = {}
    for name, data in varied_images().items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    return paths


@pytest.mark.parametrize("size", SIZES)
def test_pixels_are_the_services_for_every_format_mode_and_size(
    images: dict[str, Path], size: int
) -> None:
    for name, path in images.items():
        ours = predict.load_pixels(path, size, predict.MAX_PIXELS)
        theirs = decode_square(path.read_bytes(), predict.MAX_PIXELS, size)
        assert ours.dtype == theirs.dtype == np.uint8 and ours.shape == (size, size, 3), name
        assert np.array_equal(ours, theirs), (name, int(np.abs(ours - theirs.astype(int)).max()))


def test_the_input_tensor_is_the_services_bit_for_bit(images: dict[str, Path]) -> None:
    pixels = np.stack([predict.load_pixels(p, 32, predict.MAX_PIXELS) for p in images.values()])
    spec = get_spec("compact_cnn")
    ours = predict.normalise(pixels, spec.mean, spec.std)
    tensors = ImageTensors(pixels, np.zeros(len(pixels)), spec.mean, spec.std)
    theirs, _ = tensors.batch(torch.arange(len(pixels)), torch.device("cpu"))
    assert ours.dtype == np.float32 and ours.flags.c_contiguous
    assert np.array_equal(ours, theirs.numpy())


def test_unreadable_files_are_refused_with_the_services_reasons(tmp_path: Path) -> None:
    garbage = tmp_path / "notes.png"
    garbage.write_bytes(b"this is not an image")
    svg = tmp_path / "drawing.svg"
    svg.write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(encoded(Image.new("RGB", (300, 300), (1, 2, 3)), "PNG")[:200])
    big = tmp_path / "big.png"
    big.write_bytes(encoded(Image.new("L", (200, 100)), "PNG"))
    cases = {
        garbage: "not a decodable image",
        svg: "not a decodable image",
        truncated: "corrupt or truncated image",
        tmp_path / "missing.png": "No such file or directory",
        tmp_path: "Is a directory",
    }
    for path, reason in cases.items():
        with pytest.raises(predict.Unreadable, match=reason):
            predict.load_pixels(path, 32, predict.MAX_PIXELS)
        if path.is_file():  # the service refuses the same files
            with pytest.raises(ImageRejected):
                decode_square(path.read_bytes(), predict.MAX_PIXELS, 32)
    with pytest.raises(predict.Unreadable, match="20,000 pixels, above the limit of 19,999"):
        predict.load_pixels(big, 32, 19_999)


def test_labels_and_paths_stay_one_field_of_one_line() -> None:
    assert predict.one_line("t-shirt / top") == "t-shirt / top"
    assert predict.one_line("a\tb\nc\r") == "a\\tb\\nc\\r"
    assert predict.one_line("C:\\images\\shirt.png") == "C:\\images\\shirt.png"
