"""The P2L service on asyncio: ``AsyncClient`` has ``Client``'s resources and methods, each
a coroutine (listings are async iterators), with the same retries.

async with AsyncClient() as p2l:
    target = await p2l.datasets.upload("garments/")
    ranking = await p2l.rankings.create(target["id"], top_k=3)
    async for source in p2l.sources.list():
        print(source["name"])
"""

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx

from p2l_client import resources as routes
from p2l_client.client import Connection, stream_cut
from p2l_client.errors import JobFailed, P2LConnectionError, ServiceUnavailable, error_for
from p2l_client.events import Event, Following, parse_sse
from p2l_client.operations import (
    ArchiveInput,
    AsyncSends,
    Attached,
    Call,
    Download,
    Pages,
    needs_project,
)
from p2l_client.progress import JobProgressView, NoView
from p2l_client.resources import EvaluationReport, Job
from p2l_client.retry import Attempts, unreachable
from p2l_client.transfer import BodyFile, opened_uploads

T = TypeVar("T")


class AsyncClient(routes.ServiceRoutes, Connection, AsyncSends):
    """``Client`` on asyncio, over ``httpx.AsyncClient``: the same arguments, resources,
    method names, answers, errors and retries; ``await`` the methods, ``async for`` over
    the listings and ``jobs.events``, ``async with`` (or ``await aclose()``) to close it.
    """

    architectures: "AsyncArchitectures"
    datasets: "AsyncDatasets"
    sources: "AsyncSources"
    rankings: "AsyncRankings"
    finetunes: "AsyncFinetunes"
    calibration: "AsyncCalibrations"
    jobs: "AsyncJobs"
    models: "AsyncModels"
    projects: "AsyncProjects"
    keys: "AsyncKeys"
    audit: "AsyncAudit"
    http: httpx.AsyncClient

    def connect(self, transport: httpx.AsyncBaseTransport | None) -> None:
        """Open the httpx client that sends the requests (over ``transport`` if given)."""
        self.http = httpx.AsyncClient(transport=transport, **self.http_options())

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()

    # -- plumbing (as Client's, awaited) ----------------------------------------------------

    async def send(self, call: Call[T]) -> T:
        """Send ``call`` (retried as its method allows); its answer."""
        path = call.path
        if needs_project(path):
            path = call.in_project(await self.current_project())
        if call.download is not None:
            saved = await self._save(path, call.download, call.params, call.progress, call.console)
            return cast(T, saved)
        with opened_uploads(call) as files:
            response = await self.exchange(call.method, path, **self.request_options(call, files))
        return call.answer(response)

    async def exchange(
        self, method: str, path: str, stream: bool = False, attempts: Attempts | None = None,
        **options: Any,
    ) -> httpx.Response:  # fmt: skip
        """``Client.exchange``, awaited."""
        attempts = attempts or self.attempts(method, options.get("headers"))
        while True:
            request = self.http.build_request(method, path, **options)
            try:
                response = await self.http.send(request, stream=stream)
            except httpx.TransportError as error:
                await asyncio.sleep(attempts.after_error(error))
                continue
            wait = attempts.after_response(response)
            if wait is None:
                break
            await response.aclose()
            await asyncio.sleep(wait)
        if response.status_code >= 400:
            await response.aread()
            raise attempts.explain(error_for(response))
        return response

    async def _save(
        self, path: str, download: Download, params: Any, progress: bool, console: Any
    ) -> Path:
        response = await self.exchange("GET", path, stream=True, params=params)
        body = BodyFile(download.destination, response, path)
        try:
            with body.writing(progress, console) as write:
                async for chunk in response.aiter_bytes():
                    write(chunk)
        except httpx.TransportError as error:  # cut mid-body: not retried, nothing kept
            raise unreachable(self.url, error) from error
        finally:
            await response.aclose()
        return body.target

    async def iterate(self, pages: Pages[T]) -> AsyncIterator[T]:
        """Every item of a paginated listing, fetching pages as the iteration needs them."""
        token: str | None = None
        while True:
            page = await self.send(pages.page(token))
            for item in page["items"]:
                yield item
            token = page.get("next_page_token")
            if not token:
                return

    # -- service ----------------------------------------------------------------------------

    async def current_project(self) -> str:
        """The project this client acts in: its ``project``, else its key's (``whoami``)."""
        return self.project or (await self.whoami())["project_id"]

    async def wait(self, job_id: str, progress: bool = True, **kwargs: Any) -> Job:
        """Same as ``jobs.wait``."""
        return await self.jobs.wait(job_id, progress=progress, **kwargs)


class AsyncResource(Attached, AsyncSends):
    """A group of routes sharing one AsyncClient."""

    client: AsyncClient

    async def send(self, call: Call[T]) -> T:
        """Send ``call`` with the client; its answer."""
        return await self.client.send(call)

    def iterate(self, pages: Pages[T]) -> AsyncIterator[T]:
        """Every item of ``pages``, with the client."""
        return self.client.iterate(pages)


class AsyncArchitectures(routes.ArchitecturesRoutes, AsyncResource):
    """``Client.architectures`` on asyncio."""


class AsyncDatasets(routes.DatasetsRoutes, AsyncResource):
    """``Client.datasets`` on asyncio."""


class AsyncSources(routes.SourcesRoutes, AsyncResource):
    """``Client.sources`` on asyncio."""


class AsyncRankings(routes.RankingsRoutes, AsyncResource):
    """``Client.rankings`` on asyncio."""


class AsyncFinetunes(routes.FinetunesRoutes, AsyncResource):
    """``Client.finetunes`` on asyncio."""


class AsyncCalibrations(routes.CalibrationRoutes, AsyncResource):
    """``Client.calibration`` on asyncio."""


class AsyncProjects(routes.ProjectsRoutes, AsyncResource):
    """``Client.projects`` on asyncio."""


class AsyncKeys(routes.KeysRoutes, AsyncResource):
    """``Client.keys`` on asyncio."""


class AsyncAudit(routes.AuditRoutes, AsyncResource):
    """``Client.audit`` on asyncio."""


class AsyncJobs(routes.JobsRoutes, AsyncResource):
    """``Client.jobs`` on asyncio."""

    async def events(self, job_id: str) -> AsyncGenerator[Event, None]:
        """The job's server-sent events, as ``Client.jobs.events`` (reconnected if cut)."""
        client = self.client
        attempts: Attempts | None = None  # None: the client's policy, or after a cut
        while True:
            try:
                response = await client.exchange(
                    "GET", client.events_path(job_id), True, attempts, **client.stream_options()
                )
                try:
                    async for event in parse_sse_async(response.aiter_lines()):
                        if event.event != "job":  # the job moves on: the next cut
                            attempts = None  # gets a whole budget, from then on
                        yield event
                        if event.event in ("end", "timeout"):
                            return
                finally:
                    await response.aclose()
                raise stream_cut()
            except httpx.TransportError as error:
                attempts = attempts or client.reconnects()
                await asyncio.sleep(attempts.after_error(error))

    async def wait(
        self,
        job_id: str,
        progress: bool = True,
        poll_interval: float = 1.0,
        timeout: float | None = None,
        console: Any = None,
    ) -> Job:
        """Follow the job until it ends; its final state (as ``Client.jobs.wait``)."""
        with JobProgressView(console) if progress else NoView() as view:
            following = Following(job_id, view, timeout)
            await self._follow(following)
            while not following.ended:
                following.check_deadline()
                if following.job is not None:
                    await asyncio.sleep(poll_interval)
                try:
                    following.polled(await self.get(job_id))
                except (P2LConnectionError, ServiceUnavailable) as error:
                    following.unreachable(error)
                    await asyncio.sleep(poll_interval)
            return following.final()

    async def _follow(self, following: Following) -> None:
        """Feed ``following`` from the event stream until it is done with it."""
        with following.reading_stream():
            async with aclosing(self.events(following.job_id)) as events:
                async for event in events:
                    if following.event(event):
                        return

    async def result(self, job_id: str, progress: bool = False, **kwargs: Any) -> Any:
        """Wait for the job and return its result; JobFailed if it failed or was cancelled."""
        job = await self.wait(job_id, progress=progress, **kwargs)
        if job["status"] != "succeeded":
            raise JobFailed.of(job)
        return job["result"]


async def parse_sse_async(lines: AsyncIterator[str]) -> AsyncIterator[Event]:
    """``parse_sse`` over an async stream of lines, one line at a time."""
    pending: list[str] = []
    async for line in lines:
        pending.append(line)
        if not line.strip("\r\n"):  # an event ends at a blank line: parse what came so far
            for event in parse_sse(pending):
                yield event
            pending = []


class AsyncModels(routes.ModelsRoutes, AsyncResource):
    """``Client.models`` on asyncio."""

    async def evaluate(
        self,
        model_id: str,
        data: ArchiveInput,
        wait: bool = True,
        progress: bool = False,
        idempotency_key: str | None = None,
        console: Any = None,
    ) -> EvaluationReport | Job:
        """Score the model on a labelled folder or archive (as ``Client.models.evaluate``)."""
        sent = await self._evaluation(model_id, data, idempotency_key, progress, console)
        if sent.job is None or not wait:
            return sent.report or cast(Job, sent.job)
        report = await self.client.jobs.result(sent.job["id"], progress=progress)
        return cast(EvaluationReport, report)


__all__ = ["AsyncClient"]
