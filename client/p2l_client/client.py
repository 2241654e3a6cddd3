"""The P2L service over HTTP: one method per route, pages followed, errors raised, failed
requests retried.

from p2l_client import Client

with Client() as p2l:                       # P2L_URL, P2L_API_KEY from the environment
    target = p2l.datasets.upload("garments/")   # a folder of class folders, or an archive
    ranking = p2l.rankings.create(target["id"], top_k=3)
    job = p2l.finetunes.start(target["id"], source="best", epochs=5)
    job = p2l.jobs.wait(job["id"], progress=True)
    print(p2l.models.predict(job["model_id"], ["shirt.png"]))

``AsyncClient`` (p2l_client.async_client) is the same on asyncio.
"""

import os
import time
from collections.abc import Iterator
from contextlib import closing
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, TypeVar, cast, get_type_hints

import httpx

from p2l_client.errors import (
    JobFailed,
    P2LConnectionError,
    P2LError,
    ServiceUnavailable,
    error_for,
)
from p2l_client.events import UNREACHABLE_GRACE_SECONDS, Event, Following, parse_sse
from p2l_client.operations import (
    ArchiveInput,
    Attached,
    Call,
    Download,
    FileInput,
    Pages,
    Sends,
    StrPath,
    needs_project,
    segment,
)
from p2l_client.progress import JobProgressView, NoView
from p2l_client.resources import (
    ArchitecturesRoutes,
    AuditRoutes,
    CalibrationRoutes,
    DatasetsRoutes,
    EvaluationReport,
    FinetunesRoutes,
    Job,
    JobsRoutes,
    KeysRoutes,
    ModelsRoutes,
    ProjectsRoutes,
    RankingsRoutes,
    ServiceRoutes,
    SourcesRoutes,
)
from p2l_client.retry import Attempts, RetryPolicy, replayable, unreachable
from p2l_client.transfer import (
    ARCHIVE_SUFFIXES,
    SPOOL_BYTES,
    BodyFile,
    _archive_part,
    is_archive,
    opened_uploads,
    zip_folder,
)

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8000"
EVENTS_ACCEPT = {"Accept": "text/event-stream"}

try:
    __version__ = version("p2l-client")
except PackageNotFoundError:  # run from a source checkout
    __version__ = "0+source"


class Connection:
    """What both clients are: where the service is, who asks, how long a request may take
    and how hard it is retried (see ``Client``), and the resources they hold (their
    class-level annotations: one instance of each per client)."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        timeout: float = 120.0,
        *,
        project: str | None = None,
        stream_timeout: float = 900.0,
        retries: int = 4,
        backoff: float = 0.5,
        deadline: float | None = 60.0,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
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
        self.retry = RetryPolicy(retries, backoff, deadline=deadline)
        self.connect(transport)
        for name, kind in get_type_hints(type(self)).items():
            if isinstance(kind, type) and issubclass(kind, Attached):
                setattr(self, name, kind(self))

    def connect(self, transport: Any) -> None:
        """Open the httpx client (blocking or async) that sends the requests."""
        raise NotImplementedError

    def http_options(self) -> dict[str, Any]:
        """The arguments of the httpx client (blocking or async) that sends the requests."""
        headers = {"User-Agent": f"p2l-client/{__version__}"}
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        return {
            "base_url": self.url,
            "headers": headers,
            "params": {"project": self.project} if self.project else None,
            "timeout": httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
        }

    def attempts(self, method: str, headers: Any = None) -> Attempts:
        """The attempts of one request under the retry policy."""
        sent = httpx.Headers(headers)
        return Attempts(
            self.retry, self.url, replayable(method, sent), keyed="idempotency-key" in sent
        )

    def reconnects(self) -> Attempts:
        """The attempts at reconnecting a job's event stream once it has delivered events:
        the job exists, so the service is coming back (a restart); tried for as long as
        ``jobs.wait`` keeps polling an API that does not answer, unless retries are off."""
        policy = self.retry
        if policy.retries:
            policy = RetryPolicy(
                10_000, policy.backoff, 5.0, UNREACHABLE_GRACE_SECONDS, policy.max_retry_after
            )
        return Attempts(policy, self.url, True)

    def stream_options(self) -> dict[str, Any]:
        """Headers and timeout of an event stream: it waits far longer between bytes."""
        timeout = httpx.Timeout(self.timeout, read=self.stream_timeout)
        return {"headers": EVENTS_ACCEPT, "timeout": timeout}

    def request_options(self, call: Call[Any], files: list[Any]) -> dict[str, Any]:
        """The keyword arguments of ``call``'s request (its files opened)."""
        return {
            "params": call.params,
            "json": call.json,
            "data": call.data,
            "files": files or None,
            "headers": call.headers,
        }

    def events_path(self, job_id: str) -> str:
        """Where a job's events stream."""
        return f"/v1/jobs/{segment(job_id)}/events"

    def __repr__(self) -> str:
        key = "set" if self.api_key else None
        project = f", project={self.project!r}" if self.project else ""
        return f"{type(self).__name__}(url={self.url!r}, api_key={key}{project})"


def stream_cut() -> httpx.TransportError:
    """What a stream that closes before its job's end or a timeout is: the service
    stopped mid-way (a restart), to reconnect to like any cut."""
    return httpx.RemoteProtocolError("the event stream closed before the job's end")


class Client(ServiceRoutes, Connection, Sends):
    """A connection to one P2L service.

    ``url`` defaults to $P2L_URL, then http://127.0.0.1:8000; ``api_key`` to $P2L_API_KEY
    (sent as ``X-API-Key``); ``project`` to $P2L_PROJECT: a project id or name sent as
    ``?project=`` with every request (operator keys act in that project; other keys may
    only name their own). ``timeout`` is per request, in seconds (uploads and predictions
    included; event streams wait longer, see ``stream_timeout``).

    Failed requests are retried (``p2l_client.retry``): up to ``retries`` more attempts
    after a connection error or a 429, 502, 503 or 504, waiting the answer's Retry-After
    or else ``backoff`` seconds doubled each time (with jitter), all within ``deadline``
    seconds per call. ``retries=0`` turns that off. GET, HEAD, PUT, DELETE and the POSTs
    the service deduplicates (uploads, source registrations, fine-tunes, evaluations: they
    carry an automatic Idempotency-Key) are retried; other POSTs only when the connection
    failed before the request left.
    """

    architectures: "Architectures"
    datasets: "Datasets"
    sources: "Sources"
    rankings: "Rankings"
    finetunes: "Finetunes"
    calibration: "Calibrations"
    jobs: "Jobs"
    models: "Models"
    projects: "Projects"
    keys: "Keys"
    audit: "Audit"
    http: httpx.Client

    def connect(self, transport: httpx.BaseTransport | None) -> None:
        """Open the httpx client that sends the requests (over ``transport`` if given)."""
        self.http = httpx.Client(transport=transport, **self.http_options())

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    # -- plumbing ---------------------------------------------------------------------------

    def send(self, call: Call[T]) -> T:
        """Send ``call`` (retried as its method allows); its answer."""
        path = call.in_project(self.current_project()) if needs_project(call.path) else call.path
        if call.download is not None:
            saved = self._save(path, call.download, call.params, call.progress, call.console)
            return cast(T, saved)
        with opened_uploads(call) as files:
            response = self.exchange(call.method, path, **self.request_options(call, files))
        return call.answer(response)

    def exchange(
        self, method: str, path: str, stream: bool = False, attempts: Attempts | None = None,
        **options: Any,
    ) -> httpx.Response:  # fmt: skip
        """Send a request, again after each failure worth retrying; the answer (unread with
        ``stream``). P2LError (by status) on 4xx/5xx, P2LConnectionError if unreachable."""
        attempts = attempts or self.attempts(method, options.get("headers"))
        while True:
            request = self.http.build_request(method, path, **options)
            try:
                response = self.http.send(request, stream=stream)
            except httpx.TransportError as error:
                time.sleep(attempts.after_error(error))
                continue
            wait = attempts.after_response(response)
            if wait is None:
                break
            response.close()
            time.sleep(wait)
        if response.status_code >= 400:
            response.read()
            raise attempts.explain(error_for(response))
        return response

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request (retried as its method and headers allow); P2LError (by status)
        on 4xx/5xx, P2LConnectionError if unreachable."""
        return self.exchange(method, path, **kwargs)

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
        return self._save(path, Download(destination), params or None, progress, console)

    def _save(
        self, path: str, download: Download, params: Any, progress: bool, console: Any
    ) -> Path:
        response = self.exchange("GET", path, stream=True, params=params)
        body = BodyFile(download.destination, response, path)
        try:
            with closing(response), body.writing(progress, console) as write:
                for chunk in response.iter_bytes():
                    write(chunk)
        except httpx.TransportError as error:  # cut mid-body: not retried, nothing kept
            raise unreachable(self.url, error) from error
        return body.target

    def iterate(self, pages: Pages[T]) -> Iterator[T]:
        """Every item of a paginated listing, fetching pages as the iteration needs them."""
        token: str | None = None
        while True:
            page = self.send(pages.page(token))
            yield from page["items"]
            token = page.get("next_page_token")
            if not token:
                return

    def pages(self, path: str, page_size: int = 50, **params: Any) -> Iterator[Any]:
        """Every item of a paginated listing, fetching pages as the iteration needs them."""
        return self.iterate(Pages[Any](path, page_size, params))

    # -- service ----------------------------------------------------------------------------

    def current_project(self) -> str:
        """The project this client acts in: its ``project``, else its key's (``whoami``)."""
        return self.project or self.whoami()["project_id"]

    def wait(self, job_id: str, progress: bool = True, **kwargs: Any) -> Job:
        """Same as ``jobs.wait``."""
        return self.jobs.wait(job_id, progress=progress, **kwargs)


class Resource(Attached, Sends):
    """A group of routes sharing one Client."""

    client: Client

    def send(self, call: Call[T]) -> T:
        """Send ``call`` with the client; its answer."""
        return self.client.send(call)

    def iterate(self, pages: Pages[T]) -> Iterator[T]:
        """Every item of ``pages``, with the client."""
        return self.client.iterate(pages)


class Architectures(ArchitecturesRoutes, Resource):
    """The architectures the service builds: /v1/architectures."""


class Datasets(DatasetsRoutes, Resource):
    """Target (and source-training) datasets: /v1/datasets."""


class Sources(SourcesRoutes, Resource):
    """The source zoo: /v1/sources."""


class Rankings(RankingsRoutes, Resource):
    """Rank the zoo for a target, and read past rankings: /v1/rankings."""


class Finetunes(FinetunesRoutes, Resource):
    """Start fine-tunes (jobs) or ask what one would cost: /v1/finetunes."""


class Calibrations(CalibrationRoutes, Resource):
    """The ranking parameters in force, refitted on finished fine-tunes: /v1/calibration."""


class Projects(ProjectsRoutes, Resource):
    """Projects, their quotas and usage: /v1/projects."""


class Keys(KeysRoutes, Resource):
    """A project's API keys: /v1/projects/{project}/keys (admins)."""


class Audit(AuditRoutes, Resource):
    """The audit log of state-changing requests, newest first: /v1/audit (admins)."""


class Jobs(JobsRoutes, Resource):
    """Background jobs: /v1/jobs."""

    def events(self, job_id: str) -> Iterator[Event]:
        """The job's server-sent events as they come: job, status, phase, epoch, step, then
        end (the final job) or timeout; the iteration ends with those. A stream cut before
        them (the service restarting) is reconnected with backoff: the new stream starts
        with the whole job again."""
        client = self.client
        attempts: Attempts | None = None  # None: the client's policy, or after a cut
        while True:
            try:
                response = client.exchange(
                    "GET", client.events_path(job_id), True, attempts, **client.stream_options()
                )
                with closing(response):
                    for event in parse_sse(response.iter_lines()):
                        if event.event != "job":  # the job moves on: the next cut
                            attempts = None  # gets a whole budget, from then on
                        yield event
                        if event.event in ("end", "timeout"):
                            return
                raise stream_cut()
            except httpx.TransportError as error:
                attempts = attempts or client.reconnects()
                time.sleep(attempts.after_error(error))

    def wait(
        self,
        job_id: str,
        progress: bool = True,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        console: Any = None,
    ) -> Job:
        """Follow the job until it ends and return its final state (whatever the status).

        Fed by the event stream (reconnected if cut); polls ``GET /v1/jobs/{id}`` every
        ``poll_interval`` s if the stream times out, breaks for good, or is refused (503:
        too many streams). ``progress`` shows a rich progress bar (on ``console``, default
        stderr): epochs done of planned, the phase, the last epoch's metrics and the ETA.
        TimeoutError after ``timeout`` s.
        """
        with JobProgressView(console) if progress else NoView() as view:
            following = Following(job_id, view, timeout)
            self._follow(following)
            while not following.ended:
                following.check_deadline()
                if following.job is not None:
                    time.sleep(poll_interval)
                try:
                    following.polled(self.get(job_id))
                except (P2LConnectionError, ServiceUnavailable) as error:
                    following.unreachable(error)
                    time.sleep(poll_interval)
            return following.final()

    def _follow(self, following: Following) -> None:
        """Feed ``following`` from the event stream until it is done with it."""
        with following.reading_stream():
            for event in self.events(following.job_id):
                if following.event(event):
                    return

    def result(self, job_id: str, progress: bool = False, **kwargs: Any) -> Any:
        """Wait for the job and return its result; JobFailed if it failed or was cancelled."""
        job = self.wait(job_id, progress=progress, **kwargs)
        if job["status"] != "succeeded":
            raise JobFailed.of(job)
        return job["result"]


class Models(ModelsRoutes, Resource):
    """Fine-tuned models: /v1/models."""

    def evaluate(
        self,
        model_id: str,
        data: ArchiveInput,
        wait: bool = True,
        progress: bool = False,
        idempotency_key: str | None = None,
        console: Any = None,
    ) -> EvaluationReport | Job:
        """Score the model on a labelled folder or archive (class folders named like its
        classes). Small ones are answered at once; large ones become an evaluation job,
        waited for when ``wait`` (JobFailed if it fails), else returned as the job.
        ``progress``: an upload bar, then the job's bar."""
        sent = self._evaluation(model_id, data, idempotency_key, progress, console)
        if sent.job is None or not wait:
            return sent.report or cast(Job, sent.job)
        return cast(EvaluationReport, self.client.jobs.result(sent.job["id"], progress=progress))


__all__ = [
    "ARCHIVE_SUFFIXES",
    "SPOOL_BYTES",
    "Client",
    "Event",
    "FileInput",
    "P2LError",
    "_archive_part",
    "is_archive",
    "parse_sse",
    "zip_folder",
]
