"""The one object every use case takes: what it works on, and who is asking.

Built once per request (``app.api.deps.get_context``) or per job, so a use case's signature
names its own inputs only, not the five collaborators every use case needs.

Who commits (the one rule): a use case that writes files commits through its unit of work
(``app.unit_of_work``: files and rows land together, or neither does). Any other use case
adds and flushes; its caller commits: the request's session when the route returns
(``get_session``), or the job handler when the job ends (``finish_job``). A few writes
commit on their own because others must see them at once: a cancel request, a deleted
row before its files go, and calibration refits.
"""

from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.config import Settings
from app.p2l.reference import ReferenceNetwork
from app.p2l.scoring import SignatureIndex
from app.store import ArtifactStore


@dataclass(frozen=True)
class Caller:
    """Who is asking: ``principal`` names an API key by its fingerprint (``key:...``), the
    service itself (``service``), or anyone when keys are off (``anonymous``)."""

    principal: str

    @property
    def anonymous(self) -> bool:
        return self.principal == "anonymous"


ANONYMOUS = Caller("anonymous")
SERVICE = Caller("service")


@dataclass(frozen=True)
class Context:
    """The database session, the artifact store, the in-memory signature index, the active
    reference network, the settings, and the caller: everything a use case reaches for."""

    session: Session
    store: ArtifactStore
    index: SignatureIndex
    reference: ReferenceNetwork
    settings: Settings
    caller: Caller = ANONYMOUS
