"""A job's server-sent events: parsing the stream, and what following a job to its end
keeps track of (shared by the blocking and the async client)."""

import json
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from p2l_client.errors import P2LConnectionError, ServiceUnavailable, TooManyRequests, Unauthorized
from p2l_client.responses import TERMINAL, Job

# How long ``jobs.wait`` keeps polling an API that does not answer (restarts, deploys).
UNREACHABLE_GRACE_SECONDS = 60.0
# Events after which the service closes the stream: nothing is lost, nothing to reconnect.
CLOSING_EVENTS = ("end", "timeout")
VIEW_EVENTS = ("status", "phase", "epoch", "step")
# A stream refused with these leaves the job to polling.
STREAM_REFUSED = (ServiceUnavailable, TooManyRequests, Unauthorized)


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


class Following:
    """What ``jobs.wait`` knows of the job it follows, fed by its events and polls; the
    view (a progress bar, or nothing) is told every change.

    ``timeout``: seconds the whole wait may take (TimeoutError past them); an API that
    does not answer is polled again for ``UNREACHABLE_GRACE_SECONDS`` of consecutive
    failures before the wait gives up.
    """

    def __init__(self, job_id: str, view: Any, timeout: float | None) -> None:
        self.job_id = job_id
        self.view = view
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.job: Job | None = None  # the latest whole job seen
        self.failing_since: float | None = None
        self.streamed = 0  # events the stream delivered

    @contextmanager
    def reading_stream(self) -> Iterator[None]:
        """Around the reading of the job's event stream: a stream refused (the limit of
        open streams, a key-only route) or cut for good after it delivered events leaves
        the job to polling; a service that never answered is an error."""
        try:
            yield
        except STREAM_REFUSED:
            pass
        except P2LConnectionError:
            if not self.streamed:
                raise

    @property
    def ended(self) -> bool:
        """True once the job seen has ended (its final state is ``job``)."""
        return self.job is not None and self.job["status"] in TERMINAL

    def past_deadline(self) -> bool:
        """True once the wait's ``timeout`` is spent."""
        return self.deadline is not None and time.monotonic() > self.deadline

    def check_deadline(self) -> None:
        """TimeoutError once the wait's ``timeout`` is spent."""
        if self.past_deadline():
            raise TimeoutError(f"job {self.job_id} has not ended after {self.timeout} s")

    def event(self, event: Event) -> bool:
        """Take one event; True when the stream is done with (ended, timed out, or the
        wait's deadline passed): polling takes over unless the job has ended."""
        self.streamed += 1
        data = event.data if isinstance(event.data, dict) else {}
        if event.event in ("job", "progress", "end") and "id" in data:
            self.polled(cast(Job, data))  # "progress": services before the typed events
        elif event.event in VIEW_EVENTS:
            getattr(self.view, event.event)(data)
        return event.event in CLOSING_EVENTS or self.past_deadline()

    def polled(self, job: Job) -> None:
        """A whole job (from the stream or a poll)."""
        self.failing_since = None
        self.job = job
        self.view.job(job)

    def unreachable(self, error: Exception) -> None:
        """A poll failed: the API may be restarting (a rolling deploy), which does not stop
        the job; ``error`` is raised once the failures have lasted the grace period."""
        self.failing_since = self.failing_since or time.monotonic()
        if time.monotonic() - self.failing_since > UNREACHABLE_GRACE_SECONDS:
            raise error

    def final(self) -> Job:
        """The job's final state, shown once more (the bar's last line)."""
        assert self.job is not None and self.ended, "final() before the job ended"
        self.view.job(self.job)
        return self.job
