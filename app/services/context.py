"""The one object every use case of a request takes: what it works on, and who is asking.

Built once per request (``app.api.deps.get_context``), so a use case's signature names its
own inputs only, not the five collaborators every use case needs. A job's handler gets a
``JobRun`` instead (``app.jobs.kinds``): a job opens short sessions, never one for its
whole run.

Who commits (the one rule, also in docs/DESIGN.md): a use case that writes files commits
through its unit of work (``app.unit_of_work``: files and rows land together, or neither
does). Any other use case adds and flushes; its caller commits: the request's session when
the route returns (``get_session``), or the job's handler when it ends the job
(``finish_job``). Writes that others must see at once commit on their own: deletes (the row
goes before its files), a cancel request, a calibration put in force, and a fine-tuned
model's link to the source registered from it.
"""

from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.config import Settings
from app.p2l.reference import ReferenceNetwork
from app.p2l.scoring import SignatureIndex
from app.services.access import OPEN, Principal
from app.store import ArtifactStore


@dataclass(frozen=True)
class Context:
    """The database session, the artifact store, the in-memory signature index, the active
    reference network, the settings, and who is asking (the principal: a role in a
    project; the session is scoped to that project): everything a use case reaches for."""

    session: Session
    store: ArtifactStore
    index: SignatureIndex
    reference: ReferenceNetwork
    settings: Settings
    principal: Principal = OPEN
