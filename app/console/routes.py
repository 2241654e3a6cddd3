"""Console pages: thin HTML shells; the browser fetches everything else from /v1 with the key."""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from app.api.deps import StateDep
from app.errors import NotFound
from app.pagination import is_valid_id
from app.services.access import keys_required

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")

# Everything the pages load comes from this service: no inline script, no CDN. Images of the
# API are fetched with the key and shown from blob: URLs.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)

router = APIRouter(include_in_schema=False)
try:
    VERSION = version("p2l-service")  # busts browser caches of the static files on upgrade
except PackageNotFoundError:  # run from a source checkout that is not pip-installed
    VERSION = "dev"


def static_files() -> StaticFiles:
    """The console's CSS and JavaScript (mounted at /console/static)."""
    return StaticFiles(directory=HERE / "static")


def _page(request: Request, state: StateDep, template: str, **context: object) -> HTMLResponse:
    """Render a page with what its script needs to know about the service's auth."""
    with state.sessions() as session:
        required = keys_required(session, state.settings)
    response = templates.TemplateResponse(
        request, template, {"version": VERSION, "keys_required": required, **context}
    )
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    return response


def _checked(noun: str, row_id: str) -> str:
    """The id, or a 404 before any page is rendered for something no id can name."""
    if not is_valid_id(row_id):
        raise NotFound(f"no {noun} with id {row_id[:100]!r}")
    return row_id


@router.get("/", response_class=HTMLResponse)
def zoo_page(request: Request, state: StateDep) -> HTMLResponse:
    """The zoo, its map, the datasets, and the upload form."""
    return _page(request, state, "zoo.html", page="zoo")


@router.get("/console/datasets/{dataset_id}", response_class=HTMLResponse)
def dataset_page(request: Request, state: StateDep, dataset_id: str) -> HTMLResponse:
    """A dataset: classes, ranking, and the fine-tune form."""
    return _page(
        request, state, "dataset.html", page="dataset", item_id=_checked("dataset", dataset_id)
    )


@router.get("/console/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, state: StateDep, job_id: str) -> HTMLResponse:
    """A job's live progress."""
    return _page(request, state, "job.html", page="job", item_id=_checked("job", job_id))


@router.get("/console/models/{model_id}", response_class=HTMLResponse)
def model_page(request: Request, state: StateDep, model_id: str) -> HTMLResponse:
    """A model's report, downloads and registration."""
    return _page(request, state, "model.html", page="model", item_id=_checked("model", model_id))


@router.get("/console/sources/{source_id}", response_class=HTMLResponse)
def source_page(request: Request, state: StateDep, source_id: str) -> HTMLResponse:
    """A source: its training data, lineage, and where it ranked."""
    return _page(
        request, state, "source.html", page="source", item_id=_checked("source", source_id)
    )


@router.get("/console/compare", response_class=HTMLResponse)
def compare_page(request: Request, state: StateDep) -> HTMLResponse:
    """Jobs side by side (``?jobs=ID,ID``; the script reads and checks the ids)."""
    return _page(request, state, "compare.html", page="compare")
