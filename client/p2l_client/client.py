"""The P2L service over HTTP: one method per route, pages followed, errors raised.

from p2l_client import Client

with Client() as p2l:                       # P2L_URL, P2L_API_KEY from the environment
    target = p2l.datasets.upload("garments/")   # a folder of class folders, or an archive
    ranking = p2l.rankings.create(target["id"], top_k=3)
    job = p2l.finetunes.start(target["id"], source="best", epochs=5)
    job = p2l.jobs.wait(job["id"], progress=True)
    print(p2l.models.predict(job["model_id"], ["shirt.png"]))
"""

import json
import os
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Any, Literal, cast

import httpx

from p2l_client.errors import (
    JobFailed,
    P2LConnectionError,
    P2LError,
    ServiceUnavailable,
    Unauthorized,
    error_for,
)
from p2l_client.responses import (
    TERMINAL,
    ApiKey,
    Architecture,
    AuditEntry,
    Calibration,
    Dataset,
    DatasetCreated,
    Estimate,
    EvaluationReport,
    Evidence,
    Health,
    Job,
    KeyCreated,
    Model,
    Predictions,
    Preprocessing,
    Project,
    Ranking,
    RankingSummary,
    Reference,
    RoleName,
    Signature,
    Source,
    Usage,
    WhoAmI,
)

DEFAULT_URL = "http://127.0.0.1:8000"
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# Archives up to this size are built in memory; larger ones spill to a temporary file.
SPOOL_BYTES = 64 * 1024 * 1024
# How long ``jobs.wait`` keeps polling an API that does not answer (restarts, deploys).
UNREACHABLE_GRACE_SECONDS = 60.0

StrPath = str | os.PathLike[str]
# An upload: a path, (filename, bytes), or (filename, an open binary file).
FileInput = StrPath | tuple[str, bytes] | tuple[str, IO[bytes]]

try:
    __version__ = version("p2l-client")
except PackageNotFoundError:  # run from a source checkout
    __version__ = "0+source"


@dataclass(frozen=True)
class Event:
    """One server-sent event: its name and its data (parsed JSON, or the raw text)."""

    event: str
    data: Any
    id: str | None = None


def parse_sse(lines: Iterable[str]) -> Iterator[Event]:
    """Server-sent events from the lines of a ``text/event-stream`` (WHATWG rules)."""
    name, event_id = "", None
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:  # a blank line dispatches the event
            if data:
                text = "\n".join(data)
                try:
                    value: Any = json.loads(text)
                except json.JSONDecodeError:
                    value = text
                yield Event(name or "message", value, event_id)
            name, data = "", []
            continue
        if line.startswith(":"):  # a comment (keep-alive)
            continue
        field, _, value_text = line.partition(":")
        value_text = value_text.removeprefix(" ")
        if field == "event":
            name = value_text
        elif field == "data":
            data.append(value_text)
        elif field == "id":
            event_id = value_text
    # A stream cut without its final blank line: that last event is incomplete, dropped.


def zip_folder(folder: StrPath) -> IO[bytes]:
    """A zip of ``folder``'s files as ``<class>/<file>``, hidden files and folders skipped.

    Built in memory up to 64 MiB, in a temporary file beyond; positioned at its start.
    """
    root = Path(folder)
    archive = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 (returned open)
    count = 0
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for directory, subdirs, files in os.walk(root):
            # Pruned in place so os.walk does not descend into them (.git, __MACOSX...).
            subdirs[:] = sorted(d for d in subdirs if not _hidden(d))
            for file in sorted(files):
                path = Path(directory, file)
                if _hidden(file) or not path.is_file():
                    continue
                out.write(path, path.relative_to(root).as_posix())
                count += 1
    if count == 0:
        archive.close()
        raise ValueError(f"{root} holds no files to upload (hidden files are skipped)")
    archive.seek(0)
    return cast(IO[bytes], archive)


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def is_archive(path: StrPath) -> bool:
    """True when the path's name ends like an archive the service accepts."""
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


class Client:
    """A connection to one P2L service.

    ``url`` defaults to $P2L_URL, then http://127.0.0.1:8000; ``api_key`` to $P2L_API_KEY
    (sent as ``X-API-Key``); ``project`` to $P2L_PROJECT: a project id or name sent as
    ``?project=`` with every request (operator keys act in that project; other keys may
    only name their own). ``timeout`` is per request, in seconds (uploads and predictions
    included; event streams wait longer, see ``stream_timeout``).
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        *,
        project: str | None = None,
        stream_timeout: float = 900.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = (url or os.environ.get("P2L_URL") or DEFAULT_URL).rstrip("/")
        if api_key is None:
            api_key = os.environ.get("P2L_API_KEY") or None
        self.api_key = api_key
        if project is None:
            project = os.environ.get("P2L_PROJECT") or None
        self.project = project
        self.timeout = timeout
        self.stream_timeout = stream_timeout
        headers = {"User-Agent": f"p2l-client/{__version__}"}
        if api_key:
            headers["X-API-Key"] = api_key
        self.http = httpx.Client(
            base_url=self.url,
            headers=headers,
            params={"project": project} if project else None,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
        )
        self.architectures = Architectures(self)
        self.datasets = Datasets(self)
        self.sources = Sources(self)
        self.rankings = Rankings(self)
        self.finetunes = Finetunes(self)
        self.calibration = Calibrations(self)
        self.jobs = Jobs(self)
        self.models = Models(self)
        self.projects = Projects(self)
        self.keys = Keys(self)
        self.audit = Audit(self)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def __repr__(self) -> str:
        key = "set" if self.api_key else None
        project = f", project={self.project!r}" if self.project else ""
        return f"Client(url={self.url!r}, api_key={key}{project})"

    # -- plumbing ---------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request; P2LError (by status) on 4xx/5xx, P2LConnectionError if unreachable."""
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 400:
            raise error_for(response)
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send a request and decode its JSON answer."""
        return self.request(method, path, **kwargs).json()

    def download(
        self,
        path: str,
        destination: StrPath,
        progress: bool = False,
        console: Any = None,
        **params: Any,
    ) -> Path:
        """Stream a GET's body into ``destination`` (a file, or a folder: the server's name).

        The body goes to ``<name>.part`` beside it, renamed to the final name once whole: a
        cut stream, a full disk or Ctrl-C leaves no file behind. ``progress`` shows a bar
        (on ``console``, default stderr; on a terminal only).
        """
        from p2l_client.progress import DownloadView

        target = Path(destination)
        try:
            with self.http.stream("GET", path, params=params or None) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_for(response)
                if target.is_dir():
                    target = target / _attachment_name(response, path)
                partial = target.with_name(target.name + ".part")
                try:
                    with partial.open("wb") as out, DownloadView(console, show=progress) as view:
                        view.start(target.name, _content_length(response))
                        for chunk in response.iter_bytes():
                            out.write(chunk)
                            view.update(response.num_bytes_downloaded)
                        view.finish(response.num_bytes_downloaded)
                    partial.replace(target)  # never a half-written file under the final name
                except BaseException:
                    partial.unlink(missing_ok=True)  # a cut stream or a full disk leaves nothing
                    raise
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        return target

    def pages(self, path: str, page_size: int = 50, **params: Any) -> Iterator[Any]:
        """Every item of a paginated listing, fetching pages as the iteration needs them."""
        token: str | None = None
        while True:
            query = {"page_size": page_size, **params}
            if token:
                query["page_token"] = token
            page = self.json("GET", path, params=query)
            yield from page["items"]
            token = page.get("next_page_token")
            if not token:
                return

    def _unreachable(self, exc: httpx.TransportError) -> P2LConnectionError:
        detail = f"cannot reach {self.url} ({type(exc).__name__}: {exc})"
        return P2LConnectionError(None, "Service unreachable", detail)

    # -- service ----------------------------------------------------------------------------

    def health(self) -> Health:
        """GET /healthz: liveness and database readiness (ServiceUnavailable when degraded)."""
        return cast(Health, self.json("GET", "/healthz"))

    def reference(self) -> Reference:
        """The active reference network."""
        return cast(Reference, self.json("GET", "/v1/reference"))

    def whoami(self) -> WhoAmI:
        """The project requests act in, and the key's name and role."""
        return cast(WhoAmI, self.json("GET", "/v1/whoami"))

    def current_project(self) -> str:
        """The project this client acts in: its ``project``, else its key's (``whoami``)."""
        return self.project or self.whoami()["project_id"]

    def wait(self, job_id: str, progress: bool = True, **kwargs: Any) -> Job:
        """Same as ``jobs.wait``."""
        return self.jobs.wait(job_id, progress=progress, **kwargs)


def _content_length(response: httpx.Response) -> int | None:
    """The body's size in bytes as sent (what ``num_bytes_downloaded`` counts), if stated."""
    try:
        return int(response.headers["content-length"])
    except (KeyError, ValueError):
        return None


def _attachment_name(response: httpx.Response, path: str) -> str:
    disposition = response.headers.get("content-disposition", "")
    for part in disposition.split(";"):
        key, _, value = part.strip().partition("=")
        if key.lower() == "filename" and value:
            return Path(value.strip('"')).name  # never a path the server chose
    return Path(path).name or "download"


def _file_part(field: str, item: FileInput) -> tuple[str, tuple[str, Any]]:
    """One multipart part from a path, (name, bytes) or (name, binary file)."""
    if isinstance(item, tuple):
        name, content = item
        return field, (name, content)
    path = Path(item)
    return field, (path.name, path.read_bytes())


@contextmanager
def _archive_part(
    data: StrPath | tuple[str, bytes] | tuple[str, IO[bytes]],
) -> Iterator[tuple[str, Any]]:
    """(filename, content) of a labelled upload: a folder is zipped, an archive sent as is.

    What is opened here (a zip, a file) is closed on exit; a caller's tuple is left open.
    """
    if isinstance(data, tuple):
        yield data
        return
    path = Path(data)
    if path.is_dir():
        content: IO[bytes] = zip_folder(path)
        filename = f"{path.resolve().name or 'dataset'}.zip"
    elif path.is_file():
        content, filename = path.open("rb"), path.name
    else:
        raise FileNotFoundError(f"no such file or folder: {path}")
    with content:
        yield filename, content


def _idempotency(key: str | None) -> dict[str, str]:
    return {"Idempotency-Key": key} if key else {}


class Resource:
    """A group of routes sharing one Client."""

    def __init__(self, client: Client) -> None:
        self.client = client


class Listing(Resource):
    """A resource with a paginated listing at ``path``."""

    path = ""

    def page(self, page_size: int = 50, page_token: str | None = None) -> dict[str, Any]:
        """One page: ``{"items": [...], "next_page_token": ...}`` (None on the last page)."""
        params: dict[str, Any] = {"page_size": page_size}
        if page_token:
            params["page_token"] = page_token
        return cast(dict[str, Any], self.client.json("GET", self.path, params=params))


class Architectures(Resource):
    """The architectures the service builds: /v1/architectures."""

    def list(self) -> list[Architecture]:
        """Every architecture: family, input size, normalisation, layer groups, feature dim."""
        return cast(list[Architecture], self.client.json("GET", "/v1/architectures")["items"])


class Datasets(Listing):
    """Target (and source-training) datasets: /v1/datasets."""

    path = "/v1/datasets"

    def upload(
        self,
        data: StrPath | tuple[str, bytes] | tuple[str, IO[bytes]],
        name: str | None = None,
        idempotency_key: str | None = None,
    ) -> DatasetCreated:
        """Upload a folder of class folders (zipped here) or an archive; the stored dataset.

        The answer lists what the service left out (``rejected``, ``rejected_counts``).
        """
        with _archive_part(data) as (filename, content):
            return cast(
                DatasetCreated,
                self.client.json(
                    "POST",
                    "/v1/datasets",
                    files={"file": (filename, content)},
                    data={"name": name} if name is not None else None,
                    headers=_idempotency(idempotency_key),
                ),
            )

    def list(self, page_size: int = 50) -> Iterator[Dataset]:
        """Every dataset, newest first (pages fetched as you iterate)."""
        return self.client.pages(self.path, page_size)

    def get(self, dataset_id: str) -> Dataset:
        """One dataset: classes, counts, signature summary."""
        return cast(Dataset, self.client.json("GET", f"/v1/datasets/{dataset_id}"))

    def signature(self, dataset_id: str) -> Signature:
        """The signature's vectors: mean, per-class means, per-dimension variance."""
        return cast(Signature, self.client.json("GET", f"/v1/datasets/{dataset_id}/signature"))

    def signature_file(self, dataset_id: str, destination: StrPath) -> Path:
        """Save the signature as safetensors (what ``sources.register`` accepts)."""
        path = f"/v1/datasets/{dataset_id}/signature"
        return self.client.download(path, destination, format="safetensors")

    def delete(self, dataset_id: str) -> None:
        """Remove the dataset and its files (Conflict while a job uses it)."""
        self.client.request("DELETE", f"/v1/datasets/{dataset_id}")


class Sources(Listing):
    """The source zoo: /v1/sources."""

    path = "/v1/sources"

    def list(self, page_size: int = 50) -> Iterator[Source]:
        """Every source, newest first."""
        return self.client.pages(self.path, page_size)

    def get(self, source_id: str) -> Source:
        """One source."""
        return cast(Source, self.client.json("GET", f"/v1/sources/{source_id}"))

    def register(
        self,
        weights: FileInput,
        architecture: str,
        num_classes: int,
        name: str,
        dataset_id: str | None = None,
        signature: FileInput | None = None,
        input_size: int | None = None,
        class_names: Sequence[str] | None = None,
        idempotency_key: str | None = None,
    ) -> Source:
        """Add a pretrained model (safetensors) with its training data's dataset or signature."""
        fields: dict[str, Any] = {
            "architecture": architecture,
            "num_classes": str(num_classes),
            "name": name,
        }
        if dataset_id is not None:
            fields["dataset_id"] = dataset_id
        if input_size is not None:
            fields["input_size"] = str(input_size)
        if class_names is not None:
            fields["class_names"] = json.dumps(list(class_names))
        files = [_file_part("weights", weights)]
        if signature is not None:
            files.append(_file_part("signature", signature))
        return cast(
            Source,
            self.client.json(
                "POST",
                "/v1/sources",
                data=fields,
                files=files,
                headers=_idempotency(idempotency_key),
            ),
        )

    def delete(self, source_id: str) -> None:
        """Remove a source from the zoo (Conflict while a job uses it)."""
        self.client.request("DELETE", f"/v1/sources/{source_id}")

    def publish(self, source_id: str) -> Source:
        """Move a project's source into the shared zoo, where every project ranks over it
        (operators; Forbidden for other keys)."""
        return cast(Source, self.client.json("POST", f"/v1/sources/{source_id}/publish"))

    def weights(self, source_id: str, destination: StrPath) -> Path:
        """Save the source's safetensors weights (to a file, or into a folder)."""
        return self.client.download(f"/v1/sources/{source_id}/weights", destination)

    def map_png(self, target_dataset_id: str | None = None) -> bytes:
        """PNG map of the zoo (and a target) in feature space."""
        params = {"target_dataset_id": target_dataset_id} if target_dataset_id else None
        return self.client.request("GET", "/v1/sources/map.png", params=params).content


class Rankings(Listing):
    """Rank the zoo for a target, and read past rankings: /v1/rankings."""

    path = "/v1/rankings"

    def create(
        self,
        target_dataset_id: str,
        method: Literal["p2l", "distance", "largest"] = "p2l",
        measure: Literal["kl", "js", "cosine", "emd"] | None = None,
        top_k: int | None = None,
        source_ids: Sequence[str] | None = None,
        lam: float | None = None,
        refine: Literal["logme", "leep", "nce"] | None = None,
        refine_top: int | None = None,
    ) -> Ranking:
        """Rank the sources for a target; every result carries the parts of its score.

        ``refine``: a second stage re-ranks the first's ``refine_top`` best (the service's
        default: 3) by that measure, one forward pass of the target through each.
        """
        body: dict[str, Any] = {"target_dataset_id": target_dataset_id, "method": method}
        optional = {"measure": measure, "top_k": top_k, "lambda": lam}
        body |= {k: v for k, v in optional.items() if v is not None}
        if refine is not None:
            body["refine"] = {"method": refine}
            if refine_top is not None:
                body["refine"]["top"] = refine_top
        if source_ids is not None:
            body["source_ids"] = list(source_ids)
        return cast(Ranking, self.client.json("POST", "/v1/rankings", json=body))

    def list(
        self, target_dataset_id: str | None = None, page_size: int = 50
    ) -> Iterator[RankingSummary]:
        """Past rankings (of one target, if given), newest first, without their results:
        method, measure, how many sources each ranked and which came first."""
        params = {"target_dataset_id": target_dataset_id} if target_dataset_id else {}
        return self.client.pages(self.path, page_size, **params)

    def get(self, ranking_id: str) -> Ranking:
        """A stored ranking."""
        return cast(Ranking, self.client.json("GET", f"/v1/rankings/{ranking_id}"))

    def delete(self, ranking_id: str) -> None:
        """Remove a ranking."""
        self.client.request("DELETE", f"/v1/rankings/{ranking_id}")

    def plot_png(self, ranking_id: str) -> bytes:
        """PNG bar chart of the ranking's score parts."""
        return self.client.request("GET", f"/v1/rankings/{ranking_id}/plot.png").content


class Finetunes(Resource):
    """Start fine-tunes (jobs) or ask what one would cost: /v1/finetunes.

    ``options`` are the service's FinetuneOptions: schedule ("auto" or "manual"), epochs,
    base_lr, decay, multipliers, freeze_below, batch_size, weight_decay, patience, hflip,
    val_fraction, test_fraction, seed, baseline, auto_epochs, auto_search, auto_score; and
    with ``source="race"``, race ({"top": k, "budget_epochs": n, "score": "loss"}).
    """

    def start(
        self,
        target_dataset_id: str,
        source: str = "best",
        idempotency_key: str | None = None,
        **options: Any,
    ) -> Job:
        """Queue a fine-tune of ``source`` (an id, "best", or "race": P2L's top sources race
        by successive halving of short fine-tunes) on the target; the job (202)."""
        body = {"target_dataset_id": target_dataset_id, "source_id": source, **options}
        return cast(
            Job,
            self.client.json(
                "POST", "/v1/finetunes", json=body, headers=_idempotency(idempotency_key)
            ),
        )

    def estimate(self, target_dataset_id: str, source: str = "best", **options: Any) -> Estimate:
        """What the fine-tune would cost (``?dry_run=true``): nothing is queued or stored."""
        body = {"target_dataset_id": target_dataset_id, "source_id": source, **options}
        return cast(
            Estimate,
            self.client.json("POST", "/v1/finetunes", params={"dry_run": "true"}, json=body),
        )


class Calibrations(Resource):
    """The ranking parameters in force, refitted on finished fine-tunes: /v1/calibration."""

    def get(self) -> Calibration:
        """Measure and lambda in force, the evidence, and regrets on it."""
        return cast(Calibration, self.client.json("GET", "/v1/calibration"))

    def refit(self) -> Calibration:
        """Refit measure and lambda on the evidence (Conflict while there is none to use)."""
        return cast(Calibration, self.client.json("POST", "/v1/calibration/refit"))

    def reset(self) -> Calibration:
        """Put the bundled defaults back in force (the evidence stays)."""
        return cast(Calibration, self.client.json("POST", "/v1/calibration/reset"))

    def evidence(self, page_size: int = 50) -> Iterator[Evidence]:
        """Every finished fine-tune's evidence, newest first (pages fetched as you iterate)."""
        return self.client.pages("/v1/calibration/evidence", page_size)


class Jobs(Listing):
    """Background jobs: /v1/jobs."""

    path = "/v1/jobs"

    def list(self, page_size: int = 50) -> Iterator[Job]:
        """Every job, newest first."""
        return self.client.pages(self.path, page_size)

    def get(self, job_id: str) -> Job:
        """Status, progress and (once succeeded) result."""
        return cast(Job, self.client.json("GET", f"/v1/jobs/{job_id}"))

    def cancel(self, job_id: str) -> Job:
        """Cancel: a queued job at once, a running one before its next step."""
        return cast(Job, self.client.json("POST", f"/v1/jobs/{job_id}/cancel"))

    def delete(self, job_id: str) -> None:
        """Remove a finished job's record (its model stays)."""
        self.client.request("DELETE", f"/v1/jobs/{job_id}")

    def events(self, job_id: str) -> Iterator[Event]:
        """The job's server-sent events as they come: job, status, phase, epoch, step, then
        end (the final job) or timeout; the iteration ends when the stream closes."""
        timeout = httpx.Timeout(self.client.timeout, read=self.client.stream_timeout)
        headers = {"Accept": "text/event-stream"}
        try:
            with self.client.http.stream(
                "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_for(response)
                yield from parse_sse(response.iter_lines())
        except httpx.TransportError as exc:
            raise self.client._unreachable(exc) from exc

    def wait(
        self,
        job_id: str,
        progress: bool = True,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        console: Any = None,
    ) -> Job:
        """Follow the job until it ends and return its final state (whatever the status).

        Fed by the event stream; polls ``GET /v1/jobs/{id}`` every ``poll_interval`` s if
        the stream times out, breaks, or is refused (503: too many streams). ``progress``
        shows a rich progress bar (on ``console``, default stderr): epochs done of planned,
        the phase, the last epoch's metrics and the ETA. TimeoutError after ``timeout`` s.
        """
        from p2l_client.progress import JobProgressView, NoView

        deadline = None if timeout is None else time.monotonic() + timeout
        view = JobProgressView(console) if progress else NoView()
        failing_since: float | None = None
        with view:
            job = self._follow(job_id, view, deadline)
            while job is None or job["status"] not in TERMINAL:
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} has not ended after {timeout} s")
                if job is not None:
                    time.sleep(poll_interval)
                try:
                    job = self.get(job_id)
                except (P2LConnectionError, ServiceUnavailable):
                    # An API restarting (a rolling deploy) does not stop the job: try again
                    # for up to a minute of consecutive failures.
                    failing_since = failing_since or time.monotonic()
                    if time.monotonic() - failing_since > UNREACHABLE_GRACE_SECONDS:
                        raise
                    time.sleep(poll_interval)
                    continue
                failing_since = None
                view.job(job)
            view.job(job)
        return job

    def _follow(self, job_id: str, view: Any, deadline: float | None) -> Job | None:
        """Feed the view from the event stream; the final job, or None to go on polling."""
        received = 0
        try:
            for event in self.events(job_id):
                received += 1
                data = event.data if isinstance(event.data, dict) else {}
                if event.event in ("job", "progress") and "id" in data:
                    view.job(cast(Job, data))  # "progress": services before the typed events
                elif event.event == "end":
                    final = cast(Job, data) if "id" in data else self.get(job_id)
                    view.job(final)
                    return final
                elif event.event == "timeout":
                    return None
                elif event.event in ("status", "phase", "epoch", "step"):
                    getattr(view, event.event)(data)
                if deadline is not None and time.monotonic() > deadline:
                    return None
        except (ServiceUnavailable, Unauthorized):
            pass  # stream refused (limit reached, or a key-only route): polling still works
        except P2LConnectionError:
            if not received:
                raise  # the service is not there at all
            # The stream was cut (an API restarting): polling still works.
        return None

    def result(self, job_id: str, progress: bool = False, **kwargs: Any) -> Any:
        """Wait for the job and return its result; JobFailed if it failed or was cancelled."""
        job = self.wait(job_id, progress=progress, **kwargs)
        if job["status"] != "succeeded":
            raise JobFailed.of(job)
        return job["result"]


class Models(Listing):
    """Fine-tuned models: /v1/models."""

    path = "/v1/models"

    def list(self, page_size: int = 50) -> Iterator[Model]:
        """Every model, newest first."""
        return self.client.pages(self.path, page_size)

    def get(self, model_id: str) -> Model:
        """A model and its report."""
        return cast(Model, self.client.json("GET", f"/v1/models/{model_id}"))

    def delete(self, model_id: str) -> None:
        """Remove a model and its weights."""
        self.client.request("DELETE", f"/v1/models/{model_id}")

    def predict(self, model_id: str, files: Sequence[FileInput], top_k: int = 3) -> Predictions:
        """Top-k labels for every image, in the order given."""
        parts = [_file_part("files", item) for item in files]
        if not parts:
            raise ValueError("no files to classify")
        return cast(
            Predictions,
            self.client.json(
                "POST", f"/v1/models/{model_id}/predict", params={"top_k": top_k}, files=parts
            ),
        )

    def register(self, model_id: str, name: str | None = None) -> Source:
        """Add the model to the zoo as a source (Conflict, naming it, if it already is one)."""
        body = {"name": name} if name is not None else {}
        return cast(Source, self.client.json("POST", f"/v1/models/{model_id}/register", json=body))

    def weights(self, model_id: str, destination: StrPath) -> Path:
        """Save the model's safetensors weights (to a file, or into a folder)."""
        return self.client.download(f"/v1/models/{model_id}/weights", destination)

    def export(
        self,
        model_id: str,
        destination: StrPath,
        format: Literal["onnx", "torchscript"] = "onnx",
        progress: bool = False,
        console: Any = None,
    ) -> Path:
        """Save the model's export zip (to a file, or into a folder), streamed to disk:
        ``model.onnx`` or ``model.pt``, ``preprocessing.json``, ``labels.txt``, the model
        card ``README.md`` and ``predict.py`` (``python predict.py IMAGE...``). ``progress``
        shows a download bar on a terminal (``console``, default stderr)."""
        path = f"/v1/models/{model_id}/export"
        return self.client.download(path, destination, progress, console, format=format)

    def preprocessing(self, model_id: str) -> Preprocessing:
        """How to feed the exported network: input size, mean/std, class names, layout."""
        return cast(Preprocessing, self.client.json("GET", f"/v1/models/{model_id}/preprocessing"))

    def evaluate(
        self,
        model_id: str,
        data: StrPath | tuple[str, bytes] | tuple[str, IO[bytes]],
        wait: bool = True,
        progress: bool = False,
    ) -> EvaluationReport | Job:
        """Score the model on a labelled folder or archive (class folders named like its
        classes). Small ones are answered at once; large ones become an evaluation job,
        waited for when ``wait`` (JobFailed if it fails), else returned as the job."""
        with _archive_part(data) as (filename, content):
            response = self.client.request(
                "POST", f"/v1/models/{model_id}/evaluate", files={"file": (filename, content)}
            )
        body = response.json()
        if response.status_code != 202:
            return cast(EvaluationReport, body)
        if not wait:
            return cast(Job, body)
        return cast(EvaluationReport, self.client.jobs.result(body["id"], progress=progress))

    def confusion_png(self, model_id: str) -> bytes:
        """Labelled confusion-matrix PNG of the model's evaluation report."""
        return self.client.request("GET", f"/v1/models/{model_id}/confusion.png").content

    def misclassified(self, model_id: str, index: int) -> bytes:
        """The bytes of the report's ``index``-th (0-based) misclassified image."""
        return self.client.request("GET", f"/v1/models/{model_id}/misclassified/{index}").content


class Projects(Listing):
    """Projects, their quotas and usage: /v1/projects.

    A ``project`` argument is an id or a name; left out, the client's project (its
    ``project``, else its key's).
    """

    path = "/v1/projects"

    def list(self, page_size: int = 50) -> Iterator[Project]:
        """Every project (operators; other keys see their own), newest first."""
        return self.client.pages(self.path, page_size)

    def get(self, project: str | None = None) -> Project:
        """One project and its quotas in force."""
        project = project or self.client.current_project()
        return cast(Project, self.client.json("GET", f"/v1/projects/{project}"))

    def create(
        self,
        name: str,
        quotas: Mapping[str, int | float | None] | None = None,
        share_evidence: bool = False,
    ) -> Project:
        """A new, empty project (operators); Conflict if the name is taken. ``quotas``: the
        ones other than the service's defaults (None: unlimited)."""
        body: dict[str, Any] = {"name": name, "share_evidence": share_evidence}
        if quotas is not None:
            body["quotas"] = dict(quotas)
        return cast(Project, self.client.json("POST", self.path, json=body))

    def update(
        self,
        project: str,
        quotas: Mapping[str, int | float | None] | None = None,
        share_evidence: bool | None = None,
    ) -> Project:
        """Change some quotas (those left out keep their value; None makes one unlimited)
        or evidence sharing (operators)."""
        body: dict[str, Any] = {}
        if quotas is not None:
            body["quotas"] = dict(quotas)
        if share_evidence is not None:
            body["share_evidence"] = share_evidence
        return cast(Project, self.client.json("PATCH", f"/v1/projects/{project}", json=body))

    def delete(self, project: str) -> None:
        """Delete a project and everything it owns (operators; Conflict while its jobs run,
        and for the default project)."""
        self.client.request("DELETE", f"/v1/projects/{project}")

    def usage(self, project: str | None = None) -> Usage:
        """Active jobs, stored bytes and object counts against the quotas (admins)."""
        project = project or self.client.current_project()
        return cast(Usage, self.client.json("GET", f"/v1/projects/{project}/usage"))


class Keys(Resource):
    """A project's API keys: /v1/projects/{project}/keys (admins).

    ``project`` (an id or a name) defaults to the client's project (its ``project``, else
    its key's). Only a key's SHA-256 is stored: ``create`` returns the key once.
    """

    def _path(self, project: str | None) -> str:
        return f"/v1/projects/{project or self.client.current_project()}/keys"

    def list(self, project: str | None = None, page_size: int = 50) -> Iterator[ApiKey]:
        """Every key of the project, newest first, revoked ones included (never the keys)."""
        return self.client.pages(self._path(project), page_size)

    def create(
        self,
        role: RoleName,
        name: str,
        project: str | None = None,
        expires_in_days: float | None = None,
    ) -> KeyCreated:
        """A new key of ``role`` (up to the creating key's own); its ``key`` is shown only
        in this answer. ``expires_in_days``: it stops working that long from now."""
        body: dict[str, Any] = {"role": role, "name": name}
        if expires_in_days is not None:
            body["expires_in_days"] = expires_in_days
        return cast(KeyCreated, self.client.json("POST", self._path(project), json=body))

    def revoke(self, key_id: str, project: str | None = None) -> None:
        """Revoke a key: it stops working at once (it stays listed, with ``revoked_at``)."""
        self.client.request("DELETE", f"{self._path(project)}/{key_id}")


class Audit(Resource):
    """The audit log of state-changing requests, newest first: /v1/audit (admins)."""

    path = "/v1/audit"

    def list(self, page_size: int = 50, all_projects: bool = False) -> Iterator[AuditEntry]:
        """Every entry of the project (operators with ``all_projects``: of every project)."""
        params = {"all_projects": "true"} if all_projects else {}
        return self.client.pages(self.path, page_size, **params)

    def page(
        self, page_size: int = 50, page_token: str | None = None, all_projects: bool = False
    ) -> dict[str, Any]:
        """One page: ``{"items": [...], "next_page_token": ...}`` (None on the last page)."""
        params: dict[str, Any] = {"page_size": page_size}
        if page_token:
            params["page_token"] = page_token
        if all_projects:
            params["all_projects"] = "true"
        return cast(dict[str, Any], self.client.json("GET", self.path, params=params))


__all__ = ["Client", "Event", "P2LError", "parse_sse", "zip_folder"]
