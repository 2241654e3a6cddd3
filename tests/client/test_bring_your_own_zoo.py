"""docs/guide/bring-your-own-zoo.md runs as written: its `p2l` sessions against a real
service, with models and image folders this test makes.

The page's blocks to run are the ```bash blocks after a ``<!-- byo-zoo: NAME -->`` comment.
The test writes what the page's reader has: a torchvision ResNet-18 (3 classes, random
weights) saved with ``torch.save(model.state_dict())``, a timm ConvNeXt saved as timm's
train.py saves checkpoints, "ImageNet" ResNet-18 weights for the reference network (random
too: nothing is downloaded), and folders of real images. `p2l` is this checkout's client run
by this venv's Python, which has torch: the ``p2l-client[torch]`` install the page asks for.
"""

import argparse
import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from tests.archives import bundled_target_images, clipart_images
from tests.servers import ROOT, Service, free_port, serve, stop, uvicorn_args

pytestmark = pytest.mark.system

PAGE = ROOT / "docs" / "guide" / "bring-your-own-zoo.md"
HAS_TIMM = importlib.util.find_spec("timm") is not None
MINE = ["kitchen-resnet18"] + (["garden-convnext"] if HAS_TIMM else [])


def page_blocks() -> dict[str, str]:
    """The page's blocks to run, by their marker's name."""
    found = re.findall(r"<!-- byo-zoo: ([\w-]+) -->\n```bash\n(.*?)```", PAGE.read_text(), re.S)
    blocks = dict(found)
    assert len(blocks) == len(found), "a marker name is used twice"
    return blocks


@dataclass
class Session:
    """The reader's shell: a working folder, `p2l` on PATH, the service it talks to."""

    cwd: Path
    bin: Path
    data_dir: Path
    service: Service
    log: Path
    outputs: dict[str, str] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("P2L_")}
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "client"), str(ROOT)])
        return env | {"P2L_URL": self.service.url, **extra}

    def run(self, name: str, append: str = "", **env: str) -> str:
        """Run the page's block ``name`` as written (its python: this venv's); its stdout."""
        script = page_blocks()[name].replace(".venv/bin/python", sys.executable) + append
        started = time.monotonic()
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],
            cwd=self.cwd, env=self.env(**env), capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        print(f"block {name}: {time.monotonic() - started:.1f} s")
        assert done.returncode == 0, f"block {name}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        self.outputs[name] = done.stdout
        return done.stdout + done.stderr

    def p2l(self, *args: str) -> subprocess.CompletedProcess[str]:
        """One `p2l` command, its output captured."""
        return subprocess.run(
            [str(self.bin / "p2l"), *args],
            cwd=self.cwd, env=self.env(), capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    def api(self, path: str) -> dict:
        response = httpx.get(f"{self.service.url}{path}", timeout=60)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def source(self, name: str) -> dict:
        (found,) = [s for s in self.api("/v1/sources?page_size=200")["items"] if s["name"] == name]
        return found


def write_folder(root: Path, images: dict[str, list[bytes]]) -> int:
    """``root/<class>/<index>.png``; how many images."""
    for cls, items in images.items():
        (root / cls).mkdir(parents=True)
        for i, data in enumerate(items):
            (root / cls / f"{i:03d}.png").write_bytes(data)
    return sum(len(items) for items in images.values())


def service_env(data_dir: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("P2L_")}
    return env | {"P2L_DATA_DIR": str(data_dir), "P2L_START_WORKER": "false",
                  "PYTHONPATH": str(ROOT), **settings}  # fmt: skip


FOLDERS = {
    "kitchen": lambda: clipart_images(),  # 3 classes, 18 images
    "garden": lambda: bundled_target_images("tango_fewshot"),  # 3 classes, 30 images
    "new-photos": lambda: {k: v[:6] for k, v in bundled_target_images("clipart_objects").items()},
}


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Session]:
    """The reader's folder (models, images), their `p2l`, and a service with the bundled zoo."""
    work = tmp_path_factory.mktemp("byo-zoo")
    cwd, bin_dir = work / "home", work / "bin"
    cwd.mkdir()
    bin_dir.mkdir()
    p2l = bin_dir / "p2l"
    p2l.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m p2l_client "$@"\n')
    p2l.chmod(p2l.stat().st_mode | stat.S_IXUSR)
    counts = {name: write_folder(cwd / name, make()) for name, make in FOLDERS.items()}
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=3).state_dict(), cwd / "kitchen-resnet18.pt")
    port = free_port()
    data_dir, log = work / "data", work / "server.log"
    with serve(uvicorn_args(port, "--log-level", "warning"), service_env(data_dir), log, port,
               cwd=work, timeout=180) as live:  # fmt: skip
        session = Session(cwd, bin_dir, data_dir, live, log)
        session.outputs["counts"] = repr(counts)
        yield session
        stop(session.service.process)  # the switch test may have started another


def test_the_resnet18_is_registered_with_its_training_images(reader: Session) -> None:
    shown = reader.run("resnet")
    assert "converted kitchen-resnet18.pt (a PyTorch state dict) to safetensors" in shown
    assert "uploaded 18 training images in 3 classes as dataset" in shown
    assert "kitchen-resnet18: resnet18 at 224 px, 3 classes, trained on 18 images" in shown
    source = reader.source("kitchen-resnet18")
    assert (source["architecture"], source["input_size"], source["num_images"]) == (
        "resnet18",
        224,
        18,
    )
    # Counted by the service, classes in ImageFolder's (sorted) order.
    assert source["image_counts"] == "verified"
    assert source["class_names"] == sorted(clipart_images())
    trained_on = reader.api(f"/v1/datasets/{source['dataset_id']}")
    assert trained_on["name"] == "kitchen-resnet18-training" and trained_on["num_images"] == 18


def test_sources_add_with_a_signature_and_when_it_fails(reader: Session) -> None:
    # Safetensors go as they are (no torch in the command): seconds less per try.
    state = torch.load(reader.cwd / "kitchen-resnet18.pt", weights_only=True)
    save_file(state, reader.cwd / "kitchen.safetensors")
    # --signature: a signature file alone; its counts are the uploader's claim.
    trained_on = reader.source("kitchen-resnet18")["dataset_id"]
    signature = httpx.get(f"{reader.service.url}/v1/datasets/{trained_on}/signature",
                          params={"format": "safetensors"}, timeout=60)  # fmt: skip
    (reader.cwd / "kitchen-signature.safetensors").write_bytes(signature.content)
    signed = reader.p2l("--json", "sources", "add", "kitchen-signed", "--weights",
                        "kitchen.safetensors", "--architecture", "resnet18", "--num-classes",
                        "3", "--signature", "kitchen-signature.safetensors",
                        "--class-names", "cup,plate,spoon")  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    source = json.loads(signed.stdout)
    assert (source["name"], source["num_images"], source["image_counts"]) == (
        "kitchen-signed",
        18,
        "claimed",
    )
    assert source["class_names"] == ["cup", "plate", "spoon"]
    add = ["sources", "add", "wrong", "--weights", "kitchen.safetensors"]
    # --dataset by name; the service names the tensor that does not fit.
    wrong = reader.p2l(*add, "--architecture", "resnet18", "--num-classes", "4",
                       "--dataset", "kitchen-resnet18-training")  # fmt: skip
    assert wrong.returncode == 1
    assert "weights do not fit resnet18 with 4 classes" in wrong.stderr, wrong.stderr
    # Uploaded, then refused: the images stay, with the way to use them next time.
    wrong = reader.p2l(*add, "--architecture", "resnet34", "--num-classes", "3",
                       "--images", "kitchen")  # fmt: skip
    assert wrong.returncode == 1 and "weights lack" in wrong.stderr, wrong.stderr
    kept = re.search(r"register with --dataset (\w+) instead", wrong.stderr)
    assert kept, wrong.stderr
    assert reader.api(f"/v1/datasets/{kept[1]}")["name"] == "wrong-training"
    assert reader.p2l("datasets", "delete", kept[1]).returncode == 0  # as the reader would
    # Neither a state dict nor safetensors: refused before anything is uploaded.
    (reader.cwd / "notes.pt").write_text("not weights")
    wrong = reader.p2l("sources", "add", "wrong", "--weights", "notes.pt", "--architecture",
                       "resnet18", "--num-classes", "3", "--images", "kitchen")  # fmt: skip
    assert wrong.returncode == 1 and "neither a safetensors file nor" in wrong.stderr
    assert "uploaded" not in wrong.stderr
    assert not any(s["name"] == "wrong" for s in reader.api("/v1/sources?page_size=200")["items"])
    # A name the project holds: refused before the images go up (names are unique).
    datasets_before = reader.api("/v1/datasets?page_size=200")["items"]
    taken = reader.p2l("sources", "add", "kitchen-resnet18", "--weights",
                       "kitchen.safetensors", "--architecture", "resnet18", "--num-classes",
                       "3", "--images", "kitchen")  # fmt: skip
    assert taken.returncode == 1 and "already" in taken.stderr, taken.stderr
    assert reader.api("/v1/datasets?page_size=200")["items"] == datasets_before


@pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed (the test extra has it)")
def test_a_timm_model_is_registered_the_same_way(reader: Session) -> None:
    import timm

    torch.manual_seed(0)
    model = timm.create_model("convnext_atto", pretrained=False, num_classes=3)
    # As timm's train.py saves a checkpoint: the state dict beside its options and epoch.
    checkpoint = {"epoch": 9, "arch": "convnext_atto", "state_dict": model.state_dict(),
                  "version": 2, "args": argparse.Namespace(model="convnext_atto")}  # fmt: skip
    torch.save(checkpoint, reader.cwd / "garden-convnext_atto.pth")
    shown = reader.run("timm")
    # `p2l architectures timm/convnext_atto`: timm's groups, then the head.
    assert re.search(r"timm/convnext_atto\s+timm\s+224\s+320\s+stem group1 group2 group3 "
                     r"group4 head", shown), shown  # fmt: skip
    assert "garden-convnext: timm/convnext_atto at 224 px, 3 classes, trained on 30 images" in shown
    source = reader.source("garden-convnext")
    assert source["num_images"] == 30 and source["image_counts"] == "verified"
    assert source["class_names"] == sorted(bundled_target_images("tango_fewshot"))


def test_a_target_ranks_over_them(reader: Session) -> None:
    shown = reader.run("rank")
    ranked = reader.api("/v1/rankings?page_size=1")["items"][0]
    whole = reader.api(f"/v1/rankings/{ranked['id']}")
    names = [r["name"] for r in whole["results"]]
    assert set(MINE) <= set(names), names
    assert all(name in shown for name in MINE)
    assert "second stage: logme over the first 3" in shown
    assert len(names) > len(MINE)  # beside the bundled demo zoo
    reader.outputs["target"] = whole["target_dataset_id"]


def test_the_reference_network_switch_re_signs_them(reader: Session) -> None:
    """The page's switch: stop, convert, upgrade, start with the new settings, rank again."""
    assert "target" in reader.outputs, "needs the ranking of test_a_target_ranks_over_them"
    stop(reader.service.process)
    torch.manual_seed(1)  # "ImageNet" weights: a 1000-class ResNet-18, random here
    torch.save(torchvision.models.resnet18().state_dict(), reader.cwd / "resnet18-imagenet.pth")
    shown = reader.run(
        "reference",
        append='\necho "switched to $P2L_REFERENCE_ARCH $P2L_REFERENCE_WEIGHTS"\n',
        P2L_DATA_DIR=str(reader.data_dir),
    )
    arch, weights = re.search(r"switched to (\S+) (\S+)", shown).groups()  # type: ignore[union-attr]
    assert (arch, Path(weights)) == ("resnet18", reader.cwd / "resnet18-imagenet.safetensors")
    # Every dataset (the two sources' and the target) and both sources re-signed.
    assert f"re-signed {len(MINE) + 1} datasets" in shown, shown
    assert f"re-signed {len(MINE)} sources" in shown, shown
    port = free_port()
    env = service_env(reader.data_dir, P2L_REFERENCE_ARCH=arch, P2L_REFERENCE_WEIGHTS=weights)
    args = uvicorn_args(port, "--log-level", "warning")
    with serve(args, env, reader.log.with_name("switched.log"), port, cwd=reader.cwd,
               timeout=180) as switched:  # fmt: skip
        reader.service = switched
        shown = reader.run("rank-again", TARGET=reader.outputs["target"])
        assert shown.startswith("resnet18\n")  # p2l reference --field architecture
        ranked = reader.api("/v1/rankings?page_size=1")["items"][0]
        whole = reader.api(f"/v1/rankings/{ranked['id']}")
    assert sorted(r["name"] for r in whole["results"]) == sorted(MINE), whole
    # The bundled demo zoo was signed by the bundled reference: left out, and said why.
    assert whole["excluded"] and all(
        "another reference network" in e["reason"] for e in whole["excluded"]
    )
    assert "source(s) excluded" in shown
