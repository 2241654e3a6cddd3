"""The README is the contract: its commands, CI, the Dockerfile and the settings agree."""

import json
import re
import shlex
from pathlib import Path

import pytest

from app.config import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text()


def readme_commands() -> list[str]:
    """The shell commands of the README's Quick start, in order."""
    quick_start = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", quick_start, flags=re.S)
    return [block.strip() for block in blocks if block.strip().startswith("python3 -m venv")]


def test_readme_opens_with_exactly_two_setup_commands() -> None:
    start, test = readme_commands()
    assert start.endswith("&& .venv/bin/python -m app")
    assert "pytest" in test


def test_ci_runs_the_readme_test_command_and_nothing_else() -> None:
    _, test = readme_commands()
    commands = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "set ", "cd "))
    ]
    assert commands == [test]


def test_dockerfile_installs_and_starts_like_the_readme() -> None:
    start, _ = readme_commands()
    install, serve = start.rsplit(" && ", 1)
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    runs = [
        line.removeprefix("RUN ") for line in dockerfile.splitlines() if line.startswith("RUN ")
    ]
    assert runs == [install]
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, flags=re.M).group(1)
    assert shlex.join(json.loads(cmd)) == serve


def test_pinned_torch_versions() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"torch==2.14.1"' in pyproject and '"torchvision==0.29.1"' in pyproject


def test_settings_defaults(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("P2L_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("P2L_API_KEYS", " one, two ,")
    settings = Settings(_env_file=None)
    assert settings.sqlalchemy_url == f"sqlite:///{tmp_path.resolve()}/p2l.db"
    assert settings.api_keys == ["one", "two"]
    assert Settings(_env_file=None, database_url="postgresql+psycopg://h/db").sqlalchemy_url == (
        "postgresql+psycopg://h/db"
    )
