"""The service's routes, grouped by resource, each written once as the request it makes.

``Client`` (p2l_client.client) and ``AsyncClient`` (p2l_client.async_client) mix these into
their resources: the same names, arguments and answers, blocking on one, awaited on the
other. Every value put in a path is quoted as one segment, so an id or a name (with spaces,
slashes...) reaches the service as given.
"""

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import httpx

from p2l_client.operations import (
    CURRENT_PROJECT,
    ArchiveInput,
    Call,
    Download,
    FileInput,
    Pages,
    StrPath,
    Upload,
    content,
    items,
    listing,
    new_idempotency_key,
    nothing,
    operation,
    segment,
)
from p2l_client.responses import (
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


class ServiceRoutes:
    """The client's own calls: health, reference, whoami."""

    @operation
    def health(self) -> Call[Health]:
        """GET /healthz: liveness and database readiness (ServiceUnavailable when degraded)."""
        return Call("GET", "/healthz")

    @operation
    def reference(self) -> Call[Reference]:
        """The active reference network."""
        return Call("GET", "/v1/reference")

    @operation
    def whoami(self) -> Call[WhoAmI]:
        """The project requests act in, and the key's name and role."""
        return Call("GET", "/v1/whoami")


class ListingRoutes:
    """A resource with a paginated listing at ``path``."""

    path = ""

    @operation
    def page(self, page_size: int = 50, page_token: str | None = None) -> Call[dict[str, Any]]:
        """One page: ``{"items": [...], "next_page_token": ...}`` (None on the last page)."""
        return Pages[Any](self.path, page_size).page(page_token)


class ArchitecturesRoutes:
    """The architectures the service builds: /v1/architectures."""

    @operation
    def list(self) -> Call[list[Architecture]]:
        """Every listed architecture: family, input size, normalisation, layer groups,
        feature dim (timm models are not listed: ``get`` describes one)."""
        return Call("GET", "/v1/architectures", items)

    @operation
    def get(self, name: str) -> Call[Architecture]:
        """One architecture, a timm model too (``timm/convnext_atto``)."""
        # The name's slash stays a slash: the route takes a path (timm/<model_name>).
        return Call("GET", "/v1/architectures/" + "/".join(map(segment, name.split("/"))))


def one(collection: str, key: str, *rest: str) -> str:
    """``/v1/<collection>/<key>[/rest...]``, the key quoted as one segment."""
    return "/".join([f"/v1/{collection}", segment(key), *rest])


class DatasetsRoutes(ListingRoutes):
    """Target (and source-training) datasets: /v1/datasets.

    A ``dataset`` argument is the dataset's id (or, where the service takes it, its name).
    """

    path = "/v1/datasets"

    @operation
    def upload(
        self,
        data: ArchiveInput,
        name: str | None = None,
        idempotency_key: str | None = None,
        progress: bool = False,
        console: Any = None,
    ) -> Call[DatasetCreated]:
        """Upload a folder of class folders (zipped here) or an archive; the stored dataset.

        The answer lists what the service left out (``rejected``, ``rejected_counts``).
        Retried like a GET: its Idempotency-Key (a fresh one unless given) makes a retry
        return the first attempt's dataset. ``progress`` shows an upload bar (on
        ``console``, default stderr; on a terminal only).
        """
        return Call(
            "POST",
            self.path,
            data={"name": name} if name is not None else None,
            uploads=[Upload("file", data, archive=True)],
            idempotency_key=idempotency_key or new_idempotency_key(),
            progress=progress,
            console=console,
        )

    @listing
    def list(self, page_size: int = 50) -> Pages[Dataset]:
        """Every dataset, newest first (pages fetched as you iterate)."""
        return Pages(self.path, page_size)

    @operation
    def get(self, dataset_id: str) -> Call[Dataset]:
        """One dataset: classes, counts, signature summary."""
        return Call("GET", one("datasets", dataset_id))

    @operation
    def signature(self, dataset_id: str) -> Call[Signature]:
        """The signature's vectors: mean, per-class means, per-dimension variance."""
        return Call("GET", one("datasets", dataset_id, "signature"))

    @operation
    def signature_file(self, dataset_id: str, destination: StrPath) -> Call[Any]:
        """Save the signature as safetensors (what ``sources.register`` accepts); its path."""
        path = one("datasets", dataset_id, "signature")
        params = {"format": "safetensors"}
        return Call("GET", path, params=params, download=Download(destination))

    @operation
    def delete(self, dataset_id: str) -> Call[None]:
        """Remove the dataset and its files (Conflict while a job uses it)."""
        return Call("DELETE", one("datasets", dataset_id), nothing)


class SourcesRoutes(ListingRoutes):
    """The source zoo: /v1/sources."""

    path = "/v1/sources"

    @listing
    def list(self, page_size: int = 50) -> Pages[Source]:
        """Every source, newest first."""
        return Pages(self.path, page_size)

    @operation
    def get(self, source_id: str) -> Call[Source]:
        """One source."""
        return Call("GET", one("sources", source_id))

    @operation
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
        progress: bool = False,
        console: Any = None,
    ) -> Call[Source]:
        """Add a pretrained model (safetensors) with its training data's dataset or
        signature. Retried with its Idempotency-Key (a fresh one unless given);
        ``progress`` shows an upload bar."""
        fields: dict[str, str] = {
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
        uploads = [Upload("weights", weights)]
        if signature is not None:
            uploads.append(Upload("signature", signature))
        return Call(
            "POST",
            self.path,
            data=fields,
            uploads=uploads,
            idempotency_key=idempotency_key or new_idempotency_key(),
            progress=progress,
            console=console,
        )

    @operation
    def delete(self, source_id: str) -> Call[None]:
        """Remove a source from the zoo (Conflict while a job uses it)."""
        return Call("DELETE", one("sources", source_id), nothing)

    @operation
    def publish(self, source_id: str) -> Call[Source]:
        """Move a project's source into the shared zoo, where every project ranks over it
        (operators; Forbidden for other keys)."""
        return Call("POST", one("sources", source_id, "publish"))

    @operation
    def weights(
        self, source_id: str, destination: StrPath, progress: bool = False, console: Any = None
    ) -> Call[Any]:
        """Save the source's safetensors weights (to a file, or into a folder); its path.
        ``progress`` shows a download bar."""
        path = one("sources", source_id, "weights")
        return Call("GET", path, download=Download(destination), progress=progress, console=console)

    @operation
    def map_png(self, target_dataset_id: str | None = None) -> Call[bytes]:
        """PNG map of the zoo (and a target) in feature space."""
        params = {"target_dataset_id": target_dataset_id} if target_dataset_id else None
        return Call("GET", "/v1/sources/map.png", content, params=params)


class RankingsRoutes(ListingRoutes):
    """Rank the zoo for a target, and read past rankings: /v1/rankings."""

    path = "/v1/rankings"

    @operation
    def create(
        self,
        target_dataset_id: str,
        method: Literal["p2l", "distance", "largest", "learned"] = "p2l",
        measure: Literal["kl", "js", "cosine", "emd"] | None = None,
        top_k: int | None = None,
        source_ids: Sequence[str] | None = None,
        lam: float | None = None,
        refine: Literal["logme", "leep", "nce", "knn"] | None = None,
        refine_top: int | None = None,
    ) -> Call[Ranking]:
        """Rank the sources for a target; every result carries the parts of its score.

        ``refine``: a second stage re-ranks the first's ``refine_top`` best (the service's
        default: 3) by that measure, one forward pass of the target through each. Not
        retried once sent (the service would store a second ranking).
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
        return Call("POST", self.path, json=body)

    @listing
    def list(
        self, target_dataset_id: str | None = None, page_size: int = 50
    ) -> Pages[RankingSummary]:
        """Past rankings (of one target, if given), newest first, without their results:
        method, measure, how many sources each ranked and which came first."""
        params = {"target_dataset_id": target_dataset_id} if target_dataset_id else {}
        return Pages(self.path, page_size, params)

    @operation
    def get(self, ranking_id: str) -> Call[Ranking]:
        """A stored ranking."""
        return Call("GET", one("rankings", ranking_id))

    @operation
    def delete(self, ranking_id: str) -> Call[None]:
        """Remove a ranking."""
        return Call("DELETE", one("rankings", ranking_id), nothing)

    @operation
    def plot_png(self, ranking_id: str) -> Call[bytes]:
        """PNG bar chart of the ranking's score parts."""
        return Call("GET", one("rankings", ranking_id, "plot.png"), content)


class FinetunesRoutes:
    """Start fine-tunes (jobs) or ask what one would cost: /v1/finetunes.

    ``options`` are the service's FinetuneOptions: schedule ("auto" or "manual"), epochs,
    base_lr, decay, multipliers, freeze_below, batch_size, weight_decay, patience, hflip,
    val_fraction, test_fraction, seed, baseline, auto_epochs, auto_search, auto_score; and
    with ``source="race"``, race ({"top": k, "budget_epochs": n, "score": "loss"}).
    """

    @operation
    def start(
        self,
        /,
        target_dataset_id: str,
        source: str = "best",
        idempotency_key: str | None = None,
        **options: Any,
    ) -> Call[Job]:
        """Queue a fine-tune of ``source`` (an id, "best", or "race": P2L's top sources race
        by successive halving of short fine-tunes) on the target; the job (202). Retried
        with its Idempotency-Key (a fresh one unless given): never two jobs for one call."""
        body = {"target_dataset_id": target_dataset_id, "source_id": source, **options}
        key = idempotency_key or new_idempotency_key()
        return Call("POST", "/v1/finetunes", json=body, idempotency_key=key)

    @operation
    def estimate(
        self, /, target_dataset_id: str, source: str = "best", **options: Any
    ) -> Call[Estimate]:
        """What the fine-tune would cost (``?dry_run=true``): nothing is queued or stored."""
        body = {"target_dataset_id": target_dataset_id, "source_id": source, **options}
        # Nothing is stored, so a retry is harmless: the key lets the client retry it.
        params = {"dry_run": "true"}
        return Call("POST", "/v1/finetunes", params=params, json=body,
                    idempotency_key=new_idempotency_key())  # fmt: skip


class CalibrationRoutes:
    """The ranking parameters in force, refitted on finished fine-tunes: /v1/calibration."""

    @operation
    def get(self) -> Call[Calibration]:
        """Measure and lambda in force, the evidence, and regrets on it."""
        return Call("GET", "/v1/calibration")

    @operation
    def refit(self) -> Call[Calibration]:
        """Refit measure and lambda on the evidence (Conflict while there is none to use)."""
        return Call("POST", "/v1/calibration/refit")

    @operation
    def reset(self) -> Call[Calibration]:
        """Put the bundled defaults back in force (the evidence stays)."""
        return Call("POST", "/v1/calibration/reset")

    @listing
    def evidence(self, page_size: int = 50) -> Pages[Evidence]:
        """Every finished fine-tune's evidence, newest first (pages fetched as you iterate)."""
        return Pages("/v1/calibration/evidence", page_size)


class JobsRoutes(ListingRoutes):
    """Background jobs: /v1/jobs."""

    path = "/v1/jobs"

    @listing
    def list(self, page_size: int = 50) -> Pages[Job]:
        """Every job, newest first."""
        return Pages(self.path, page_size)

    @operation
    def get(self, job_id: str) -> Call[Job]:
        """Status, progress and (once succeeded) result."""
        return Call("GET", one("jobs", job_id))

    @operation
    def cancel(self, job_id: str) -> Call[Job]:
        """Cancel: a queued job at once, a running one before its next step."""
        return Call("POST", one("jobs", job_id, "cancel"))

    @operation
    def delete(self, job_id: str) -> Call[None]:
        """Remove a finished job's record (its model stays)."""
        return Call("DELETE", one("jobs", job_id), nothing)


class ModelsRoutes(ListingRoutes):
    """Fine-tuned models: /v1/models."""

    path = "/v1/models"

    @listing
    def list(self, page_size: int = 50) -> Pages[Model]:
        """Every model, newest first."""
        return Pages(self.path, page_size)

    @operation
    def get(self, model_id: str) -> Call[Model]:
        """A model and its report."""
        return Call("GET", one("models", model_id))

    @operation
    def delete(self, model_id: str) -> Call[None]:
        """Remove a model and its weights."""
        return Call("DELETE", one("models", model_id), nothing)

    @operation
    def predict(
        self, model_id: str, files: Sequence[FileInput], top_k: int = 3
    ) -> Call[Predictions]:
        """Top-k labels for every image, in the order given."""
        if not files:
            raise ValueError("no files to classify")
        uploads = [Upload("files", item) for item in files]
        path = one("models", model_id, "predict")
        return Call("POST", path, params={"top_k": top_k}, uploads=uploads)

    @operation
    def register(self, model_id: str, name: str | None = None) -> Call[Source]:
        """Add the model to the zoo as a source (Conflict, naming it, if it already is one)."""
        body = {"name": name} if name is not None else {}
        return Call("POST", one("models", model_id, "register"), json=body)

    @operation
    def weights(
        self, model_id: str, destination: StrPath, progress: bool = False, console: Any = None
    ) -> Call[Any]:
        """Save the model's safetensors weights (to a file, or into a folder); its path.
        ``progress`` shows a download bar."""
        path = one("models", model_id, "weights")
        return Call("GET", path, download=Download(destination), progress=progress, console=console)

    @operation
    def export(
        self,
        model_id: str,
        destination: StrPath,
        format: Literal["onnx", "torchscript"] = "onnx",
        progress: bool = False,
        console: Any = None,
    ) -> Call[Any]:
        """Save the model's export zip (to a file, or into a folder), streamed to disk:
        ``model.onnx`` or ``model.pt``, ``preprocessing.json``, ``labels.txt``, the model
        card ``README.md`` and ``predict.py`` (``python predict.py IMAGE...``); its path.
        ``progress`` shows a download bar on a terminal (``console``, default stderr)."""
        return Call(
            "GET",
            one("models", model_id, "export"),
            params={"format": format},
            download=Download(destination),
            progress=progress,
            console=console,
        )

    @operation
    def preprocessing(self, model_id: str) -> Call[Preprocessing]:
        """How to feed the exported network: input size, mean/std, class names, layout."""
        return Call("GET", one("models", model_id, "preprocessing"))

    @operation
    def confusion_png(self, model_id: str) -> Call[bytes]:
        """Labelled confusion-matrix PNG of the model's evaluation report."""
        return Call("GET", one("models", model_id, "confusion.png"), content)

    @operation
    def misclassified(self, model_id: str, index: int) -> Call[bytes]:
        """The bytes of the report's ``index``-th (0-based) misclassified image."""
        return Call("GET", one("models", model_id, "misclassified", segment(index)), content)

    @operation
    def _evaluation(
        self,
        model_id: str,
        data: ArchiveInput,
        idempotency_key: str | None,
        progress: bool,
        console: Any,
    ) -> "Call[Evaluation]":
        """Send a labelled folder or archive to score the model on (``evaluate`` is this,
        then a wait for the job a large one becomes)."""
        return Call(
            "POST",
            one("models", model_id, "evaluate"),
            Evaluation.of,
            uploads=[Upload("file", data, archive=True)],
            idempotency_key=idempotency_key or new_idempotency_key(),
            progress=progress,
            console=console,
        )


class Evaluation(NamedTuple):
    """An evaluation's first answer: its report (200), or its job (202) for a large one."""

    report: EvaluationReport | None
    job: Job | None

    @classmethod
    def of(cls, response: httpx.Response) -> "Evaluation":
        """Read the answer of POST /v1/models/{id}/evaluate."""
        body = response.json()
        return cls(None, body) if response.status_code == 202 else cls(body, None)


class ProjectsRoutes(ListingRoutes):
    """Projects, their quotas and usage: /v1/projects.

    A ``project`` argument is an id or a name; left out, the client's project (its
    ``project``, else its key's).
    """

    path = "/v1/projects"

    @listing
    def list(self, page_size: int = 50) -> Pages[Project]:
        """Every project (operators; other keys see their own), newest first."""
        return Pages(self.path, page_size)

    @operation
    def get(self, project: str | None = None) -> Call[Project]:
        """One project and its quotas in force."""
        return Call("GET", project_path(project))

    @operation
    def create(
        self,
        name: str,
        quotas: Mapping[str, int | float | None] | None = None,
        share_evidence: bool = False,
    ) -> Call[Project]:
        """A new, empty project (operators); Conflict if the name is taken. ``quotas``: the
        ones other than the service's defaults (None: unlimited)."""
        body: dict[str, Any] = {"name": name, "share_evidence": share_evidence}
        if quotas is not None:
            body["quotas"] = dict(quotas)
        return Call("POST", self.path, json=body)

    @operation
    def update(
        self,
        project: str,
        quotas: Mapping[str, int | float | None] | None = None,
        share_evidence: bool | None = None,
    ) -> Call[Project]:
        """Change some quotas (those left out keep their value; None makes one unlimited)
        or evidence sharing (operators)."""
        body: dict[str, Any] = {}
        if quotas is not None:
            body["quotas"] = dict(quotas)
        if share_evidence is not None:
            body["share_evidence"] = share_evidence
        return Call("PATCH", project_path(project), json=body)

    @operation
    def delete(self, project: str) -> Call[None]:
        """Delete a project and everything it owns (operators; Conflict while its jobs run,
        and for the default project)."""
        return Call("DELETE", project_path(project), nothing)

    @operation
    def usage(self, project: str | None = None) -> Call[Usage]:
        """Active jobs, stored bytes and object counts against the quotas (admins)."""
        return Call("GET", project_path(project, "usage"))


def project_path(project: str | None, *rest: str) -> str:
    """``/v1/projects/<project>[/rest...]``; the current project when ``project`` is None."""
    key = segment(project) if project else CURRENT_PROJECT
    return "/".join(["/v1/projects", key, *rest])


class KeysRoutes:
    """A project's API keys: /v1/projects/{project}/keys (admins).

    ``project`` (an id or a name) defaults to the client's project (its ``project``, else
    its key's). Only a key's SHA-256 is stored: ``create`` returns the key once.
    """

    @listing
    def list(self, project: str | None = None, page_size: int = 50) -> Pages[ApiKey]:
        """Every key of the project, newest first, revoked ones included (never the keys)."""
        return Pages(project_path(project, "keys"), page_size)

    @operation
    def create(
        self,
        role: RoleName,
        name: str,
        project: str | None = None,
        expires_in_days: float | None = None,
    ) -> Call[KeyCreated]:
        """A new key of ``role`` (up to the creating key's own); its ``key`` is shown only
        in this answer. ``expires_in_days``: it stops working that long from now."""
        body: dict[str, Any] = {"role": role, "name": name}
        if expires_in_days is not None:
            body["expires_in_days"] = expires_in_days
        return Call("POST", project_path(project, "keys"), json=body)

    @operation
    def revoke(self, key_id: str, project: str | None = None) -> Call[None]:
        """Revoke a key: it stops working at once (it stays listed, with ``revoked_at``)."""
        return Call("DELETE", project_path(project, "keys", segment(key_id)), nothing)


class AuditRoutes:
    """The audit log of state-changing requests, newest first: /v1/audit (admins)."""

    path = "/v1/audit"

    @listing
    def list(self, page_size: int = 50, all_projects: bool = False) -> Pages[AuditEntry]:
        """Every entry of the project (operators with ``all_projects``: of every project)."""
        params = {"all_projects": "true"} if all_projects else {}
        return Pages(self.path, page_size, params)

    @operation
    def page(
        self, page_size: int = 50, page_token: str | None = None, all_projects: bool = False
    ) -> Call[dict[str, Any]]:
        """One page: ``{"items": [...], "next_page_token": ...}`` (None on the last page)."""
        params = {"all_projects": "true"} if all_projects else {}
        return Pages[Any](self.path, page_size, params).page(page_token)
