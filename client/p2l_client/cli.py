"""The `p2l` command: the P2L service from a shell.

Every command takes --url/--api-key/--project (default: $P2L_URL, $P2L_API_KEY,
$P2L_PROJECT), --json (the answer as plain JSON on stdout, nothing else there) and --field
PATH (one value of that answer, e.g. `--field id` or `--field result.test_accuracy`).
Progress bars and errors go to stderr; an error of the service exits with 1 and its problem
detail on stderr.
"""

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import islice
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from p2l_client.client import Client, __version__, is_archive
from p2l_client.errors import NotFound, P2LError
from p2l_client.progress import format_seconds
from p2l_client.responses import TERMINAL
from p2l_client.weights import is_safetensors, state_dict_to_safetensors, weights_part

# No markup: names, file names and details from the service are printed as they are.
out = Console(highlight=False, soft_wrap=True, markup=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

Handler = Callable[[Client, argparse.Namespace], Any]
Show = Callable[[Any], None]


class Answer:
    """What a command produced: its JSON value, how to show it to people, its exit code."""

    def __init__(self, value: Any, show: Show | None = None, code: int = 0) -> None:
        self.value = value
        self.show = show or show_json
        self.code = code


def show_json(value: Any) -> None:
    """Pretty JSON for people (the default view)."""
    out.print_json(data=value)


# -- commands --------------------------------------------------------------------------------


def cmd_health(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l health`: is the service up, and its database."""
    health = client.health()
    return Answer(
        health,
        lambda h: out.print(
            f"{h['status']} (database {h['database']}, version {h['version']}) at {client.url}"
        ),
    )


def cmd_reference(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l reference`: the active reference network."""
    return Answer(client.reference())


def cmd_architectures(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l architectures [NAME]`: what a source can be, with its layer groups, as a table;
    with NAME one architecture (a timm model too: timm/convnext_tiny)."""
    columns = ["name", "family", "input_size", "feature_dim", "layer_groups"]

    def show(rows: list[dict[str, Any]]) -> None:
        # Group names, input -> head, in one cell: what multipliers and freeze_below count.
        table([{**row, "layer_groups": " ".join(row["layer_groups"])} for row in rows], columns)

    if args.name:
        one = client.architectures.get(args.name)
        return Answer(one, lambda row: show([row]))
    listing = client.json("GET", "/v1/architectures")
    timm = listing.get("timm_version")

    def show_all(rows: list[dict[str, Any]]) -> None:
        show(rows)
        if timm:
            out.print(
                f"and with timm {timm}: any timm model as timm/<model_name> "
                "(p2l architectures timm/<model_name> describes one)"
            )

    return Answer(listing["items"], show_all)


def cmd_datasets_upload(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l datasets upload`: send a folder (zipped here) or an archive."""
    path = Path(args.path)
    if path.is_file() and not is_archive(path):
        err.print(f"note: {path} does not end like an archive; sending it as one")
    created = client.datasets.upload(
        path, name=args.name, idempotency_key=args.idempotency_key, progress=not args.no_progress
    )
    return Answer(created, show_upload)


def show_upload(d: dict[str, Any]) -> None:
    """The stored dataset and the files the service left out."""
    show_dataset(d)
    if d.get("rejected_total"):
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(d["rejected_counts"].items()))
        out.print(f"rejected {d['rejected_total']} file(s): {kinds}")
        for item in d["rejected"][:10]:
            out.print(f"  {item['path']}: {item['reason']}")


def show_dataset(d: dict[str, Any]) -> None:
    """One line: the dataset's id, name, size and classes."""
    classes = ", ".join(f"{c['name']} {c['count']}" for c in d["classes"])
    out.print(
        f"dataset {d['id']} {d['name']}: {d['num_images']} images in "
        f"{d['num_classes']} classes ({classes})"
    )


def cmd_datasets_list(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l datasets list`: datasets, newest first, as a table."""
    rows = limited(client.datasets.list(args.page_size), args.limit)
    return Answer(
        rows, lambda r: table(r, ["id", "name", "num_images", "num_classes", "created_at"])
    )


def cmd_datasets_get(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l datasets get`: one dataset."""
    return Answer(client.datasets.get(args.id), show_dataset)


def cmd_datasets_delete(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l datasets delete`: remove a dataset and its files."""
    client.datasets.delete(args.id)
    return Answer({"deleted": args.id}, lambda v: out.print(f"deleted dataset {args.id}"))


def cmd_sources_list(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l sources list`: the zoo, newest first, as a table."""
    rows = limited(client.sources.list(args.page_size), args.limit)
    columns = ["id", "name", "architecture", "num_classes", "num_images", "origin"]
    return Answer(rows, lambda r: table(r, columns))


def cmd_sources_get(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l sources get`: one source."""
    return Answer(client.sources.get(args.id), show_source)


def show_source(s: dict[str, Any]) -> None:
    """The source's architecture, size, origin and classes."""
    out.print(
        f"source {s['id']} {s['name']}: {s['architecture']} at {s['input_size']} px, "
        f"{s['num_classes']} classes, trained on {s['num_images']} images ({s['origin']})"
    )
    if "shared" in s:
        where = "the shared zoo" if s["shared"] else f"project {s.get('project_id')} only"
        out.print(f"in {where}")
    out.print(f"classes: {', '.join(s['class_names'])}")


def cmd_sources_add(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l sources add`: register a pretrained model with its training images (uploaded
    here), a stored dataset or a signature file."""
    # The weights first: a file that cannot be sent fails before any image is uploaded.
    weights = weights_part(args.weights)
    if isinstance(weights, tuple):
        err.print(f"converted {args.weights} (a PyTorch state dict) to safetensors")
    dataset_id = None
    if args.images:
        images = Path(args.images)
        if not images.exists():
            raise FileNotFoundError(f"no such folder or archive: {images}")
        # A name the project holds is refused before the images go up, not after (names are
        # unique in a project; another project's shared source shows no project and may
        # share the name).
        try:
            taken = client.sources.get(args.name)
        except NotFound:
            taken = None
        if taken is not None and taken.get("project_id") is not None:
            raise ValueError(
                f"the project has a source named {args.name!r} already ({taken['id']}): "
                "choose another name"
            )
        uploaded = client.datasets.upload(
            images,
            name=args.images_name or f"{args.name}-training",
            progress=not args.no_progress,
        )
        dataset_id = uploaded["id"]
        rejected = uploaded.get("rejected_total") or 0
        err.print(
            f"uploaded {uploaded['num_images']} training images in {uploaded['num_classes']} "
            f"classes as dataset {dataset_id}"
            + (f" ({rejected} file(s) left out)" if rejected else "")
        )
    elif args.dataset:
        dataset_id = args.dataset  # an id or a name: the service resolves either
    try:
        source = client.sources.register(
            weights,
            architecture=args.architecture,
            num_classes=args.num_classes,
            name=args.name,
            dataset_id=dataset_id,
            signature=args.signature,
            input_size=args.input_size,
            class_names=class_names(args.class_names),
            idempotency_key=args.idempotency_key,
            progress=not args.no_progress,
        )
    except P2LError:
        if args.images:
            err.print(
                f"the training images stay stored as dataset {dataset_id}: once the problem "
                f"is fixed, register with --dataset {dataset_id} instead of uploading them again"
            )
        raise
    return Answer(source, show_source)


def class_names(given: list[str] | None) -> list[str] | None:
    """--class-names as names, one per class: several words, or one comma-separated word."""
    if not given:
        return None
    if len(given) == 1 and "," in given[0]:
        return [name.strip() for name in given[0].split(",")]
    return given


def cmd_weights_convert(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l weights convert`: a PyTorch state dict as safetensors (here; no service)."""
    source, target = Path(args.input), Path(args.output)
    if target.is_dir():
        target = target / f"{source.stem}.safetensors"
    if not source.is_file():
        raise FileNotFoundError(f"no such file: {source}")
    if is_safetensors(source):
        raise ValueError(f"{source} is a safetensors file already")
    target.write_bytes(state_dict_to_safetensors(source))
    value = {"input": str(source), "output": str(target), "bytes": target.stat().st_size}
    return Answer(value, lambda v: out.print(f"wrote {v['output']} ({v['bytes']:,} bytes)"))


def cmd_sources_publish(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l sources publish`: move a project's source into the shared zoo (operators)."""
    return Answer(client.sources.publish(args.id), show_source)


def cmd_rank(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l rank`: rank the zoo for a target dataset."""
    ranking = client.rankings.create(
        args.target, method=args.method, measure=args.measure, top_k=args.top_k, lam=args.lam,
        refine=args.refine, refine_top=args.refine_top,
    )  # fmt: skip
    return Answer(ranking, show_ranking)


def show_ranking(r: dict[str, Any]) -> None:
    """The ranked sources as a table, the excluded ones, and any warnings."""
    out.print(
        f"ranking {r['id']}: {r['method']} ({r['measure']}) for target {r['target_dataset_id']}"
    )
    columns = ["rank", "name", "score", "distance", "size_term", "num_images"]
    refine = r.get("refine")
    if refine:
        columns += ["first_stage_rank", "refine_score"]
    if r.get("learned", {}) and r["learned"].get("used"):
        columns.insert(3, "p2l_rank")
    table(r["results"], columns)
    learned = r.get("learned")
    if learned:
        bundled = learned["bundled_targets"]
        out.print(
            f"learned from {learned['targets']} past targets: {bundled} of the bundled "
            f"benchmark, {learned['targets'] - bundled} of this service "
            f"({learned['jobs']} fine-tunes)"
            if learned["used"]
            else f"kept P2L's ranking: {learned['fallback']}"
        )
        if learned["used"] and learned.get("bundled_pending"):
            out.print(learned["bundled_pending"], style="yellow")
    coverage = r.get("coverage")
    if coverage and coverage.get("covered") is False:
        out.print(f"coverage: {coverage['recommendation']}", style="yellow")
    for result in r["results"][:3]:
        gain = result.get("gain")
        if gain:
            out.print(
                f"expected gain of {result['name']} over scratch: {gain['expected']:+.3f} "
                f"[{gain['low']:+.3f}, {gain['high']:+.3f}]"
            )
    if r.get("calibration_id"):
        out.print(f"measure and lambda from calibration {r['calibration_id']}")
    if refine:
        out.print(
            f"second stage: {refine['method']} over the first {refine['top']}, "
            f"{refine['forward_passes']} forward passes, {refine['seconds']:.2f} s"
        )
    if r["excluded"]:
        out.print(
            f"{len(r['excluded'])} source(s) excluded, e.g. {r['excluded'][0]['name']}: "
            f"{r['excluded'][0]['reason']}"
        )
    warnings = r.get("warnings") or []
    for warning in warnings:  # why nothing (or less than asked) was ranked, e.g. an empty zoo
        out.print(f"warning: {warning}", style="yellow")
    if not r["results"] and not warnings:
        out.print("no source ranked", style="yellow")


def cmd_rankings_list(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l rankings list`: past rankings, newest first, as a table."""
    rows = limited(client.rankings.list(args.target, args.page_size), args.limit)
    columns = ["id", "target_dataset_id", "method", "measure", "num_results", "top_source_name",
               "top_score", "created_at"]  # fmt: skip
    return Answer(rows, lambda r: table(r, columns))


def cmd_rankings_get(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l rankings get`: one past ranking, whole."""
    return Answer(client.rankings.get(args.id), show_ranking)


# A positional argument naming a dataset, source or model: the service takes either.
HANDLE: dict[str, str] = {"metavar": "ID_OR_NAME", "help": "its id or its name"}

FINETUNE_OPTIONS = (
    "schedule",
    "epochs",
    "base_lr",
    "decay",
    "multipliers",
    "freeze_below",
    "batch_size",
    "weight_decay",
    "patience",
    "hflip",
    "val_fraction",
    "test_fraction",
    "seed",
    "baseline",
    "auto_epochs",
    "auto_search",
    "auto_score",
    "model_name",  # not a training option, but sent beside them
)


def cmd_finetune(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l finetune`: queue a fine-tune (or estimate it), following it with --wait."""
    options = {k: getattr(args, k) for k in FINETUNE_OPTIONS if getattr(args, k) is not None}
    race = {k: v for k, v in (("top", args.race_top), ("budget_epochs", args.race_budget))
            if v is not None}  # fmt: skip
    if race:
        options["race"] = race
    if args.dry_run:
        estimate = client.finetunes.estimate(args.target, args.source, **options)
        return Answer(estimate, show_estimate)
    job = client.finetunes.start(
        args.target, args.source, idempotency_key=args.idempotency_key, **options
    )
    if not args.wait:
        return Answer(job, show_started)
    show_started(job, to=err)
    return finished(client.jobs.wait(job["id"], progress=not args.no_progress))


def show_estimate(e: dict[str, Any]) -> None:
    """What a fine-tune would cost, and its warnings."""
    out.print(
        f"estimated {format_seconds(e['seconds'])} ({e['seconds']:.0f} s) for up to "
        f"{e['epochs_planned']} epochs of {e['train_images']} images "
        f"({e['architecture']} at {e['input_size']} px, {e['images_per_second']:.0f} "
        f"images/s, {e['basis']}); {e['workers_alive']} worker(s) alive"
    )
    for warning in e.get("warnings") or []:
        out.print(f"warning: {warning}", style="yellow")


def show_started(job: Mapping[str, Any], to: Console = out) -> None:
    """A just-queued job: its source, target, estimate and warnings."""
    params = job.get("params") or {}
    source = params.get("source_name") or params.get("source_id") or "?"
    to.print(
        f"job {job['id']} {job['status']}: fine-tune {source} on "
        f"{params.get('target_dataset_id', '?')}"
    )
    estimate = job.get("estimate")
    if estimate:
        to.print(f"estimated {format_seconds(estimate['seconds'])} once a worker starts it")
    for warning in job.get("warnings") or []:
        to.print(f"warning: {warning}", style="yellow")
    if job["status"] not in TERMINAL and to is out:
        to.print(f"follow it with: p2l jobs watch {job['id']}")


def finished(job: Mapping[str, Any]) -> Answer:
    """The answer for a job that has ended: exit code 1 unless it succeeded."""
    return Answer(job, show_job, 0 if job["status"] == "succeeded" else 1)


def show_job(job: dict[str, Any]) -> None:
    """A job's status and progress, and its report once it has one."""
    progress = job.get("progress") or {}
    label = progress.get("label") or progress.get("phase") or ""
    done, planned = progress.get("epochs_done"), progress.get("epochs_planned")
    epochs = f", {done}/{planned} epochs" if planned and "epoch" not in label else ""
    out.print(f"job {job['id']} ({job['kind']}): {job['status']}; {label}{epochs}")
    if job.get("error"):
        out.print(f"error: {job['error']}")
    result = job.get("result") or {}
    if job.get("model_id"):
        out.print(f"model {job['model_id']}")
    if "test_accuracy" in result:
        show_report(result)
    elif "accuracy" in result:
        show_evaluation(result)


def show_report(r: dict[str, Any]) -> None:
    """A fine-tune report: accuracies, schedule, baseline and warnings."""
    acc = ", ".join(
        f"{k} {r[k]:.3f}" for k in ("test_accuracy", "val_accuracy") if r.get(k) is not None
    )
    out.print(
        f"{acc or 'no held-out split'} ({r['train_images']} training images, {r['seconds']:.1f} s)"
    )
    schedule = r.get("schedule") or {}
    if schedule:
        out.print(
            f"schedule {schedule.get('chosen_by')}: decay {schedule.get('decay')}, "
            f"base_lr {schedule.get('base_lr')}"
        )
        if schedule.get("reason"):
            out.print(f"  why: {schedule['reason']}")
    race = r.get("race")
    if race:
        out.print(f"race: {race['reason']}")
        field = "val_loss" if race.get("score", "loss") == "loss" else "val_accuracy"
        for stage in race["rounds"]:
            scores = ", ".join(f"{t['source_name']} {cell(t[field])}" for t in stage["trials"])
            words = field.replace("_", " ")
            out.print(f"  round {stage['round']} ({stage['epochs']} epochs, {words}): {scores}")
        cost = race.get("cost") or {}
        if cost.get("fraction_of_every_source") is not None:
            out.print(
                f"  cost: {cost['epochs_planned']} epochs planned, "
                f"{cost['fraction_of_every_source']:.0%} of fine-tuning every contestant"
            )
    baseline = r.get("baseline")
    if baseline:
        gain = baseline.get("transfer_gain")
        gain_text = f", transfer gain {gain:+.3f}" if gain is not None else ""
        scratch = baseline.get("test_accuracy")
        scratch_text = "-" if scratch is None else f"{scratch:.3f}"
        out.print(f"from scratch: test_accuracy {scratch_text}{gain_text}")
    for warning in r.get("warnings") or []:
        out.print(f"warning: {warning}", style="yellow")


def cmd_calibration_get(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l calibration get`: the ranking parameters in force and the evidence."""
    return Answer(client.calibration.get(), show_calibration)


def cmd_calibration_refit(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l calibration refit`: refit measure and lambda on the evidence."""
    return Answer(client.calibration.refit(), show_calibration)


def cmd_calibration_reset(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l calibration reset`: put the bundled defaults back in force."""
    return Answer(client.calibration.reset(), show_calibration)


def cmd_calibration_evidence(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l calibration evidence`: finished fine-tunes' evidence, newest first, as a table."""
    rows = limited(client.calibration.evidence(args.page_size), args.limit)
    columns = ["job_id", "target_dataset_id", "source_name", "accuracy", "accuracy_split"]
    return Answer(rows, lambda r: table(r, columns))


def show_calibration(c: dict[str, Any]) -> None:
    """Parameters in force, where they come from, the evidence and the regrets."""
    params, evidence, regret = c["params"], c["evidence"], c["regret"]
    origin = (
        f"calibration {c['calibration_id']} ({c['trigger']})"
        if c["calibration_id"] and c["trigger"] != "reset"
        else "the bundled defaults"
    )
    out.print(f"measure {params['measure']}, lambda {params['lambda']:g}: {origin}")
    out.print(
        f"evidence: {evidence['fine_tunes']} fine-tunes on {evidence['targets']} targets, "
        f"{evidence['usable_targets']} usable (two or more sources)"
    )
    if regret["current"] is not None:
        out.print(
            f"mean regret: in force {regret['current']:.3f}, bundled defaults "
            f"{regret['bundled_defaults']:.3f}, refit leave-one-target-out "
            f"{regret['refit_leave_one_target_out']:.3f}"
        )
    out.print(regret["decision"])


def cmd_jobs_list(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l jobs list`: jobs, newest first, as a table."""
    rows = limited(client.jobs.list(args.page_size), args.limit)
    for row in rows:  # flattened for the table only; --json gets the jobs unchanged
        row.setdefault("phase", (row.get("progress") or {}).get("phase"))
    return Answer(
        rows, lambda r: table(r, ["id", "kind", "status", "phase", "model_id", "created_at"])
    )


def cmd_jobs_get(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l jobs get`: one job."""
    return Answer(client.jobs.get(args.id), show_job)


def cmd_jobs_watch(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l jobs watch`: follow a job until it ends (exit 1 unless it succeeds)."""
    return finished(client.jobs.wait(args.id, progress=not args.no_progress))


def cmd_jobs_cancel(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l jobs cancel`: cancel a job."""
    return Answer(client.jobs.cancel(args.id), show_job)


def cmd_predict(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l predict`: top-k labels for images, with a fine-tuned model."""
    answer = client.models.predict(args.model, args.files, top_k=args.top_k)
    return Answer(answer, show_predictions)


def show_predictions(p: dict[str, Any]) -> None:
    """One line per image: the best label, then the others."""
    for item in p["predictions"]:
        best = item["top"][0]
        others = ", ".join(f"{t['label']} {t['probability']:.2f}" for t in item["top"][1:])
        more = f"  ({others})" if others else ""
        out.print(f"{item['filename']} -> {best['label']} {best['probability']:.2f}{more}")


def cmd_export(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l export`: save a model as an ONNX or TorchScript zip, with a download bar."""
    path = client.models.export(
        args.model, args.output, format=args.format, progress=not args.no_progress
    )
    value = {
        "model_id": args.model,
        "format": args.format,
        "path": str(path),
        "bytes": path.stat().st_size,
    }
    return Answer(value, show_export)


def show_export(v: dict[str, Any]) -> None:
    """Where the zip went, and how to use it."""
    out.print(f"wrote {v['path']} ({v['bytes']:,} bytes)")
    out.print("unzip it, then: python predict.py IMAGE...  (README.md inside says what it needs)")


def cmd_evaluate(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l evaluate`: score a model on a labelled folder or archive."""
    report = client.models.evaluate(args.model, args.data, wait=True, progress=not args.no_progress)
    return Answer(report, show_evaluation)


def show_evaluation(r: dict[str, Any]) -> None:
    """An evaluation: accuracy, per-class metrics, the worst misclassified images."""
    out.print(
        f"{r['split']}: accuracy {r['accuracy']:.3f}, macro F1 {r['macro_f1']:.3f} "
        f"on {r['images']} images"
    )
    rows = [{"class": name, **m} for name, m in r["per_class"].items()]
    table(rows, ["class", "precision", "recall", "f1", "support"])
    if r["misclassified_total"]:
        out.print(f"{r['misclassified_total']} misclassified, most confident first:")
        for m in r["misclassified"][:10]:
            out.print(
                f"  {m['image']}: {m['true_label']} -> {m['predicted_label']} {m['confidence']:.2f}"
            )


def cmd_models_list(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l models list`: models, newest first, as a table."""
    rows = limited(client.models.list(args.page_size), args.limit)
    for row in rows:
        row.setdefault("test_accuracy", (row.get("report") or {}).get("test_accuracy"))
    columns = ["id", "architecture", "target_dataset_id", "test_accuracy", "created_at"]
    return Answer(rows, lambda r: table(r, columns))


def cmd_models_get(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l models get`: one model and its report."""
    return Answer(client.models.get(args.id), show_model)


def show_model(m: dict[str, Any]) -> None:
    """A model, its report and evaluation, and its source if registered."""
    out.print(
        f"model {m['id']}: {m['architecture']} at {m['input_size']} px, classes "
        f"{', '.join(m['class_names'])}"
    )
    out.print(f"source {m['source_id']}, target {m['target_dataset_id']}, job {m['job_id']}")
    show_report(m["report"])
    if m["report"].get("evaluation"):
        show_evaluation(m["report"]["evaluation"])
    if m.get("registered_source_id"):
        out.print(f"registered as source {m['registered_source_id']}")


def cmd_models_register(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l models register`: add a model to the zoo as a source."""
    return Answer(client.models.register(args.id, name=args.name), show_source)


def cmd_models_delete(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l models delete`: remove a model and its weights."""
    client.models.delete(args.id)
    return Answer({"deleted": args.id}, lambda v: out.print(f"deleted model {args.id}"))


def cmd_whoami(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l whoami`: the project requests act in, and the key's role."""
    return Answer(client.whoami(), show_whoami)


def show_whoami(w: dict[str, Any]) -> None:
    """One line: who the key is, its role, and the project."""
    project = f"project {w['project_name']} ({w['project_id']})"
    if not w["authenticated"]:
        out.print(f"open service (no API keys): {w['role']} of {project}")
        return
    key = w["key_name"] or "?"
    key_id = f" ({w['key_id']})" if w.get("key_id") else ""
    out.print(f"key {key}{key_id}: {w['role']} of {project}")


QUOTA_NAMES = (
    "max_active_jobs",
    "max_job_seconds",
    "max_storage_bytes",
    "max_event_streams_per_key",
    "requests_per_minute_per_key",
)


def cmd_projects_list(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l projects list`: projects (operators: all; others: their own), newest first."""
    rows = limited(client.projects.list(args.page_size), args.limit)
    columns = ["id", "name", "share_evidence", "created_at"]
    return Answer(rows, lambda r: table(r, columns))


def cmd_projects_show(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l projects show`: one project and its quotas."""
    return Answer(client.projects.get(args.id), show_project)


def cmd_projects_create(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l projects create`: a new, empty project (operators)."""
    project = client.projects.create(args.name, args.quotas, bool(args.share_evidence))

    def show(p: dict[str, Any]) -> None:
        show_project(p)
        out.print(
            f"make its first key with: p2l keys create --project {p['name']} "
            "--role admin --name NAME"
        )

    return Answer(project, show)


def cmd_projects_update(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l projects update`: change quotas or evidence sharing (operators)."""
    if args.quotas is None and args.share_evidence is None:
        raise ValueError("nothing to change: give --quota NAME=VALUE or --(no-)share-evidence")
    project = client.projects.update(args.id, args.quotas, args.share_evidence)
    return Answer(project, show_project)


def cmd_projects_delete(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l projects delete`: a project and everything it owns (operators)."""
    if not args.yes:
        raise ValueError(
            f"deleting project {args.id} removes its datasets, sources, jobs, models and keys; "
            "add --yes to do it"
        )
    client.projects.delete(args.id)
    return Answer({"deleted": args.id}, lambda v: out.print(f"deleted project {args.id}"))


def cmd_projects_usage(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l projects usage`: what a project holds and runs, against its quotas (admins)."""
    return Answer(client.projects.usage(args.id), show_usage)


def show_project(p: dict[str, Any]) -> None:
    """The project, whether it shares its evidence, and its quotas."""
    shares = "shares" if p["share_evidence"] else "does not share"
    out.print(f"project {p['id']} {p['name']}: created {p['created_at']}, {shares} its evidence")
    quotas = p.get("quotas") or {}
    out.print("quotas: " + ", ".join(f"{k} {quota(v)}" for k, v in quotas.items()))


def show_usage(u: dict[str, Any]) -> None:
    """Counts and bytes, and the quotas they are held to."""
    quotas = u.get("quotas") or {}
    out.print(
        f"project {u['project_id']}: {u['active_jobs']} active job(s) "
        f"(max {quota(quotas.get('max_active_jobs'))}), "
        f"{u['storage_bytes']:,} bytes stored (max {quota(quotas.get('max_storage_bytes'))})"
    )
    counts = ", ".join(f"{u[k]} {k}" for k in ("datasets", "sources", "models", "rankings", "jobs"))
    out.print(f"holds {counts} (sources: private ones only)")
    others = [k for k in quotas if k not in ("max_active_jobs", "max_storage_bytes")]
    out.print("other quotas: " + ", ".join(f"{k} {quota(quotas[k])}" for k in others))


def quota(value: Any) -> str:
    """A quota for people: None is unlimited."""
    if value is None:
        return "unlimited"
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def quota_item(text: str) -> tuple[str, int | float | None]:
    """``max_active_jobs=3`` -> ("max_active_jobs", 3); ``=none`` (or unlimited): None."""
    name, sep, value = text.partition("=")
    name = name.strip().replace("-", "_")
    if not sep or name not in QUOTA_NAMES:
        raise argparse.ArgumentTypeError(
            f"not NAME=VALUE with NAME one of {', '.join(QUOTA_NAMES)}: {text}"
        )
    value = value.strip().lower()
    if value in ("none", "null", "unlimited"):
        return name, None
    try:
        return name, float(value) if name == "max_job_seconds" else int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number (or none): {text}") from None


class QuotaAction(argparse.Action):
    """Repeated ``--quota NAME=VALUE`` gathered into one dict."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        quotas = dict(getattr(namespace, self.dest, None) or {})
        name, value = values
        quotas[name] = value
        setattr(namespace, self.dest, quotas)


def cmd_keys_list(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l keys list`: the project's keys, newest first (never the keys themselves)."""
    rows = limited(client.keys.list(page_size=args.page_size), args.limit)
    columns = ["id", "name", "role", "prefix", "created_at", "last_used_at", "revoked_at"]
    return Answer(rows, lambda r: table(r, columns))


def cmd_keys_create(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l keys create`: a new key; the key is printed this once."""
    created = client.keys.create(args.role, args.name, expires_in_days=args.expires_days)
    return Answer(created, show_key_created)


def show_key_created(k: dict[str, Any]) -> None:
    """The new key on a line of its own, and that it is not shown again."""
    expires = f", expires {k['expires_at']}" if k.get("expires_at") else ""
    out.print(f"key {k['id']} {k['name']}: {k['role']} of project {k['project_id']}{expires}")
    out.print("API key (shown only this once; keep it now, it cannot be read again):")
    out.print(k["key"])


def cmd_keys_revoke(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l keys revoke`: the key stops working at once."""
    client.keys.revoke(args.id)
    return Answer({"revoked": args.id}, lambda v: out.print(f"revoked key {args.id}"))


def cmd_audit(client: Client, args: argparse.Namespace) -> Answer:
    """`p2l audit`: the audit log, newest first."""
    entries = client.audit.list(args.page_size, all_projects=args.all_projects)
    rows = limited(entries, args.limit)
    columns = ["created_at", "action", "status", "object_id", "key_id", "detail"]
    if args.all_projects:
        columns.insert(1, "project_id")
    return Answer(rows, lambda r: table(r, columns))


# -- helpers ---------------------------------------------------------------------------------


def limited(items: Iterator[Any], limit: int | None) -> list[Any]:
    """The first ``limit`` items (all when None), following pages as needed."""
    return list(items if limit is None else islice(items, limit))


def table(rows: Iterable[dict[str, Any]], columns: list[str]) -> None:
    """Rows as a table on stdout."""
    view = Table(box=None, pad_edge=False)
    for column in columns:
        is_id = column == "id" or column.endswith("_id")
        view.add_column(column, no_wrap=is_id, min_width=32 if is_id else None)
    for row in rows:
        view.add_row(*(cell(row.get(c)) for c in columns))
    # Piped or logged, rich would assume 80 columns and cut the ids short.
    wide = out if out.is_terminal else Console(file=out.file, width=240, markup=False)
    wide.print(view)


def cell(value: Any) -> str:
    """One table cell: floats to 4 places, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def pick(value: Any, path: str) -> Any:
    """``value`` at a dotted path: ``result.test_accuracy``, ``results.0.name``."""
    for key in path.split("."):
        if isinstance(value, list) and key.lstrip("-").isdigit():
            if not -len(value) <= int(key) < len(value):
                raise KeyError(f"--field {path}: no item {key} in a list of {len(value)}")
            value = value[int(key)]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            raise KeyError(f"--field {path}: no {key!r} in the answer")
    return value


def print_problem(error: P2LError, as_json: bool) -> None:
    """An error on stderr: the problem+json itself with --json, else a few lines for people."""
    if as_json:
        body = error.problem or {"title": error.title, "detail": error.detail}
        if error.status is None and "status" not in body:
            body = {"title": error.title, "detail": error.detail, **body}
        print(json.dumps(body), file=sys.stderr)
        return
    status = f"{error.status} " if error.status else ""
    err.print(f"error: {status}{error.title}: {error.detail}", style="red")
    extra = error.extra
    for item in (extra.get("rejected") or [])[:10]:
        err.print(f"  rejected {item.get('path')}: {item.get('reason')}")
    if extra.get("rejected_total", 0) > 10:
        err.print(f"  ... {extra['rejected_total']} rejected in all")
    for item in (extra.get("errors") or [])[:10]:
        err.print(f"  {'.'.join(map(str, item.get('loc', [])))}: {item.get('msg')}")
    for key in ("jobs", "source_id"):
        if key in extra:
            err.print(f"  {key}: {extra[key]}")


# -- parser ----------------------------------------------------------------------------------


def common_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """--url, --api-key, --json, --field; on every subcommand too, so they go anywhere."""

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    group = parser.add_argument_group("connection and output")
    group.add_argument(
        "--url",
        default=default(None),
        help="service URL (default: $P2L_URL, else http://127.0.0.1:8000)",
    )
    group.add_argument(
        "--api-key",
        default=default(None),
        help="API key, sent as X-API-Key (default: $P2L_API_KEY)",
    )
    group.add_argument(
        "--project",
        default=default(None),
        help="project id or name to act in, sent as ?project= (default: $P2L_PROJECT, else "
        "the key's own project; operator keys: the default project)",
    )
    group.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print the answer as JSON on stdout, and nothing else there",
    )
    group.add_argument(
        "--field",
        metavar="PATH",
        default=default(None),
        help="print one value of the answer, e.g. id, model_id, "
        "result.test_accuracy, results.0.name",
    )
    group.add_argument(
        "--timeout", type=float, default=default(120.0), help="seconds per request (default 120)"
    )
    group.add_argument(
        "--retries",
        type=int,
        default=default(4),
        help="attempts after a failure worth retrying: the service unreachable or restarting, "
        "429, 502, 503, 504 (default 4; 0: none)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole `p2l` command line."""
    parser = argparse.ArgumentParser(
        prog="p2l",
        description="Command line of the P2L service: upload a dataset, rank the source zoo "
        "for it, fine-tune the best source, watch the job, predict, export.",
        epilog="Every command has --help. Environment: P2L_URL, P2L_API_KEY, P2L_PROJECT.",
    )
    parser.add_argument("--version", action="version", version=f"p2l-client {__version__}")
    common_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        group: Any, name: str, handler: Handler, help: str, description: str | None = None
    ) -> argparse.ArgumentParser:
        sub: argparse.ArgumentParser = group.add_parser(
            name, help=help, description=description or help
        )
        common_options(sub, defaults=False)
        sub.set_defaults(handler=handler)
        return sub

    def listing(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--limit", type=int, help="at most this many (default: all)")
        sub.add_argument("--page-size", type=int, default=50, help="items per request")

    def group_of(name: str, help: str) -> Any:
        parent = commands.add_parser(name, help=help, description=help)
        common_options(parent, defaults=False)
        return parent.add_subparsers(dest="action", metavar="ACTION", required=True)

    command(commands, "health", cmd_health, "is the service up (GET /healthz)")
    command(commands, "whoami", cmd_whoami, "the project requests act in, and the key's role")
    command(commands, "reference", cmd_reference, "the active reference network")
    command(
        commands,
        "architectures",
        cmd_architectures,
        "the architectures a source can have, with their layer groups",
    ).add_argument(
        "name",
        nargs="?",
        metavar="NAME",
        help="only this one; a timm model too (timm/convnext_tiny), which the list leaves out",
    )

    datasets = group_of("datasets", "upload, list, show and delete datasets")
    sub = command(
        datasets,
        "upload",
        cmd_datasets_upload,
        "upload a folder of class folders (zipped here) or an archive",
        "Upload DIR_OR_ARCHIVE: a folder laid out as <class>/<image> (zipped on the "
        "fly, hidden files skipped) or a .zip/.tar/.tar.gz/.tar.bz2/.tar.xz. Prints "
        "the dataset and the files the service left out.",
    )
    sub.add_argument("path", metavar="DIR_OR_ARCHIVE")
    sub.add_argument(
        "--name",
        help="dataset name, unique in the project (default: the folder's or file's name, "
        "numbered if taken)",
    )
    sub.add_argument("--idempotency-key", help="retry-safe key (Idempotency-Key header)")
    sub.add_argument("--no-progress", action="store_true", help="no upload bar")
    listing(command(datasets, "list", cmd_datasets_list, "list datasets, newest first"))
    command(datasets, "get", cmd_datasets_get, "show one dataset").add_argument("id", **HANDLE)
    command(datasets, "delete", cmd_datasets_delete, "delete a dataset").add_argument(
        "id", **HANDLE
    )

    sources = group_of("sources", "add, list, show and publish the source zoo")
    sub = command(
        sources,
        "add",
        cmd_sources_add,
        "register a pretrained model you have, with its training images",
        "Register NAME: a pretrained classifier (--weights: .safetensors, or a PyTorch "
        "state dict .pt/.pth/.bin converted here, which needs pip install "
        "'p2l-client[torch]') of --architecture (p2l architectures lists them; timm models "
        "as timm/<model_name>) with what it was trained on: --images, a folder of class "
        "folders uploaded as a dataset that the service counts and signs, or a stored "
        "--dataset, or a --signature file. Prints the registered source.",
    )
    sub.add_argument("name", metavar="NAME", help="its name in the zoo, unique in the project")
    sub.add_argument(
        "--weights",
        required=True,
        metavar="FILE",
        help=".safetensors, or a state dict saved with torch.save (.pt/.pth/.bin; "
        '{"state_dict": ...} and {"model": ...} wrappers and DataParallel\'s "module." '
        "prefix are undone)",
    )
    sub.add_argument(
        "--architecture",
        required=True,
        metavar="ARCH",
        help="resnet18, mobilenet_v3_large, ... or timm/<model_name> (p2l architectures)",
    )
    sub.add_argument(
        "--num-classes", type=int, required=True, metavar="N", help="outputs of its head"
    )
    trained_on = sub.add_mutually_exclusive_group(required=True)
    trained_on.add_argument(
        "--images",
        metavar="DIR",
        help="its training images: a folder of class folders (zipped here) or an archive",
    )
    trained_on.add_argument(
        "--dataset", metavar="ID_OR_NAME", help="or: a stored dataset it was trained on"
    )
    trained_on.add_argument(
        "--signature",
        metavar="FILE",
        help="or: its training data's signature file (.safetensors, as the Python client's "
        "datasets.signature_file saves it)",
    )
    sub.add_argument(
        "--input-size", type=int, metavar="PX", help="its input side (default: the architecture's)"
    )
    sub.add_argument(
        "--class-names",
        nargs="+",
        metavar="NAME",
        help="one per output, in the head's order (default: the training images' class "
        "folders, sorted as torchvision's ImageFolder sorts them); one comma-separated word "
        "works too",
    )
    sub.add_argument(
        "--images-name", metavar="NAME", help="--images: the dataset's name (default NAME-training)"
    )
    sub.add_argument("--idempotency-key", help="retry-safe key of the registration")
    sub.add_argument("--no-progress", action="store_true", help="no upload bars")
    listing(command(sources, "list", cmd_sources_list, "list sources, newest first"))
    command(sources, "get", cmd_sources_get, "show one source").add_argument("id", **HANDLE)
    command(
        sources,
        "publish",
        cmd_sources_publish,
        "move a project's source into the shared zoo (operators)",
    ).add_argument("id", **HANDLE)

    weights = group_of("weights", "model weights files, here (no service)")
    sub = command(
        weights,
        "convert",
        cmd_weights_convert,
        "save a PyTorch state dict as safetensors (pip install 'p2l-client[torch]')",
        "Convert INPUT, a state dict saved with torch.save (loaded with weights_only=True: "
        "tensors only), to safetensors: what P2L_REFERENCE_WEIGHTS takes. Wrappers "
        '({"state_dict": ...}, {"model": ...}) and a "module." prefix are undone. Nothing '
        "is sent to the service.",
    )
    sub.add_argument("input", metavar="INPUT", help="a .pt/.pth/.bin state dict")
    sub.add_argument(
        "output", metavar="OUTPUT", help="the .safetensors file to write (or a folder)"
    )

    sub = command(commands, "rank", cmd_rank, "rank the zoo for a target dataset")
    sub.add_argument("target", metavar="TARGET", help="target dataset: its id or name")
    sub.add_argument("--top-k", type=int, help="only the best K")
    sub.add_argument("--method", choices=["p2l", "distance", "largest", "learned"], default="p2l")
    sub.add_argument("--measure", choices=["js", "kl", "cosine", "emd"])
    sub.add_argument("--lambda", dest="lam", type=float, help="override lambda (0 to 100)")
    sub.add_argument(
        "--refine", choices=["logme", "leep", "nce", "knn"], help="re-rank the top by this measure"
    )
    sub.add_argument("--refine-top", type=int, help="how many to re-rank (1-20; default 3)")

    rankings = group_of("rankings", "list and show past rankings")
    sub = command(rankings, "list", cmd_rankings_list, "list past rankings, newest first")
    listing(sub)
    sub.add_argument(
        "--target", metavar="DATASET", help="only the rankings of this dataset (id or name)"
    )
    command(rankings, "get", cmd_rankings_get, "show one ranking").add_argument("id")

    sub = command(
        commands,
        "finetune",
        cmd_finetune,
        "fine-tune a source on a target (a job); --wait shows its progress",
        "Start fine-tuning SOURCE (default: best, the top of the P2L ranking) on "
        "TARGET. Options not given keep the service's defaults.",
    )
    sub.add_argument("target", metavar="TARGET", help="target dataset: its id or name")
    sub.add_argument(
        "--source",
        default="best",
        help='a source id or name, "best" (default), or "race" (P2L\'s top sources race)',
    )
    sub.add_argument(
        "--model-name",
        help="the model's name, unique in the project (default: TARGET-from-SOURCE, "
        "numbered if taken)",
    )
    sub.add_argument("--race-top", type=int, help="--source race: sources racing (2-8, default 3)")
    sub.add_argument(
        "--race-budget", type=int, help="--source race: epochs of all trials (default: --epochs)"
    )
    sub.add_argument("--wait", action="store_true", help="follow the job with a progress bar")
    sub.add_argument("--no-progress", action="store_true", help="with --wait: no bar")
    sub.add_argument(
        "--dry-run", action="store_true", help="only estimate the time (nothing is queued)"
    )
    sub.add_argument("--idempotency-key", help="retry-safe key (Idempotency-Key header)")
    opts = sub.add_argument_group("training options")
    opts.add_argument("--schedule", choices=["auto", "manual"])
    opts.add_argument("--epochs", type=int)
    opts.add_argument("--auto-epochs", type=int, help="auto's budget per candidate")
    opts.add_argument("--auto-search", choices=["halving", "exhaustive"], help="how auto searches")
    opts.add_argument("--auto-score", choices=["loss", "accuracy"], help="what auto compares")
    opts.add_argument("--base-lr", type=float)
    opts.add_argument("--decay", type=float, help="manual: per-group learning-rate decay")
    opts.add_argument("--multipliers", type=float_list, help="manual: e.g. 0,0.1,0.5,1,1")
    opts.add_argument("--freeze-below", type=int)
    opts.add_argument("--batch-size", type=int)
    opts.add_argument("--weight-decay", type=float)
    opts.add_argument("--patience", type=int)
    opts.add_argument("--val-fraction", type=float)
    opts.add_argument("--test-fraction", type=float)
    opts.add_argument("--seed", type=int)
    opts.add_argument("--hflip", action="store_true", default=None)
    opts.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also train from scratch, for the transfer gain (--no-baseline: never; left "
        "out: on for 'best' where the zoo does not cover the target)",
    )

    jobs = group_of("jobs", "list, show, watch and cancel jobs")
    listing(command(jobs, "list", cmd_jobs_list, "list jobs, newest first"))
    command(jobs, "get", cmd_jobs_get, "show one job").add_argument("id")
    sub = command(
        jobs,
        "watch",
        cmd_jobs_watch,
        "follow a job with a progress bar until it ends (exit 1 unless it succeeds)",
    )
    sub.add_argument("id")
    sub.add_argument("--no-progress", action="store_true", help="no bar, just wait")
    command(jobs, "cancel", cmd_jobs_cancel, "cancel a job").add_argument("id")

    sub = command(commands, "predict", cmd_predict, "classify images with a fine-tuned model")
    sub.add_argument("model", metavar="MODEL", help="model: its id or name")
    sub.add_argument("files", metavar="FILES", nargs="+", help="image files")
    sub.add_argument("--top-k", type=int, default=3)

    sub = command(
        commands,
        "export",
        cmd_export,
        "download a model as ONNX or TorchScript: a zip with predict.py, labels.txt, a model "
        "card (README.md) and preprocessing.json",
    )
    sub.add_argument("model", metavar="MODEL", help="model: its id or name")
    sub.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    sub.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="PATH",
        help="file to write, or a folder (the server's file name)",
    )
    sub.add_argument("--no-progress", action="store_true", help="no download bar")

    sub = command(
        commands,
        "evaluate",
        cmd_evaluate,
        "score a model on a labelled folder or archive (per-class metrics)",
    )
    sub.add_argument("model", metavar="MODEL", help="model: its id or name")
    sub.add_argument("data", metavar="ARCHIVE_OR_DIR", help="class folders named like the model's")
    sub.add_argument("--no-progress", action="store_true", help="no bar if it becomes a job")

    calibration = group_of(
        "calibration", "the ranking's measure and lambda, refitted on finished fine-tunes"
    )
    command(calibration, "get", cmd_calibration_get, "parameters in force, evidence, regrets")
    command(calibration, "refit", cmd_calibration_refit, "refit them on the evidence")
    command(calibration, "reset", cmd_calibration_reset, "put the bundled defaults back")
    listing(command(calibration, "evidence", cmd_calibration_evidence, "list the evidence"))

    models = group_of("models", "list, show, register and delete fine-tuned models")
    listing(command(models, "list", cmd_models_list, "list models, newest first"))
    command(models, "get", cmd_models_get, "show a model and its report").add_argument(
        "id", **HANDLE
    )
    sub = command(models, "register", cmd_models_register, "add a model to the zoo as a source")
    sub.add_argument("id", **HANDLE)
    sub.add_argument(
        "--name", help="the new source's name, unique in the project (default: the model's)"
    )
    command(models, "delete", cmd_models_delete, "delete a model").add_argument("id", **HANDLE)

    projects = group_of("projects", "projects, their quotas and usage")

    def quota_options(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--quota",
            dest="quotas",
            metavar="NAME=VALUE",
            type=quota_item,
            action=QuotaAction,
            help=f"a quota (repeatable; VALUE none: unlimited): {', '.join(QUOTA_NAMES)}",
        )
        sub.add_argument(
            "--share-evidence",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="whether its finished fine-tunes feed the shared calibration",
        )

    listing(command(projects, "list", cmd_projects_list, "list projects, newest first"))
    sub = command(projects, "show", cmd_projects_show, "show a project and its quotas")
    sub.add_argument("id", nargs="?", help="id or name (default: the current project)")
    sub = command(projects, "create", cmd_projects_create, "create a project (operators)")
    sub.add_argument("name")
    quota_options(sub)
    sub = command(
        projects, "update", cmd_projects_update, "change quotas or evidence sharing (operators)"
    )
    sub.add_argument("id", help="id or name")
    quota_options(sub)
    sub = command(
        projects,
        "delete",
        cmd_projects_delete,
        "delete a project and everything it owns (operators)",
    )
    sub.add_argument("id", help="id or name")
    sub.add_argument("--yes", action="store_true", help="yes, delete it and all it holds")
    sub = command(projects, "usage", cmd_projects_usage, "what a project holds and runs (admins)")
    sub.add_argument("id", nargs="?", help="id or name (default: the current project)")

    keys = group_of("keys", "a project's API keys (admins; --project, else the key's own project)")
    listing(command(keys, "list", cmd_keys_list, "list the keys, newest first"))
    sub = command(
        keys,
        "create",
        cmd_keys_create,
        "create a key (printed once: keep it)",
        "Create an API key of the project (--project, else the key's own). The key is "
        "printed this once; only its SHA-256 is stored. With --field key: just the key.",
    )
    sub.add_argument("--role", required=True, choices=["viewer", "member", "admin", "operator"])
    sub.add_argument("--name", required=True, help="what the key is for, e.g. ci")
    sub.add_argument("--expires-days", type=float, help="stop working after this many days")
    command(keys, "revoke", cmd_keys_revoke, "revoke a key (at once)").add_argument(
        "id", help="the key's id (see keys list)"
    )

    sub = command(
        commands,
        "audit",
        cmd_audit,
        "the audit log of state-changing requests, newest first (admins)",
    )
    listing(sub)
    sub.add_argument(
        "--all-projects", action="store_true", help="operators: every project's entries"
    )
    return parser


def float_list(text: str) -> list[float]:
    """``0,0.1,1`` -> [0.0, 0.1, 1.0]."""
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of numbers: {text}") from None


def main(argv: list[str] | None = None) -> int:
    """Run one `p2l` command; the exit code."""
    args = build_parser().parse_args(argv)
    try:
        with Client(
            args.url, args.api_key, timeout=args.timeout, project=args.project,
            retries=args.retries,
        ) as client:  # fmt: skip
            answer = args.handler(client, args)
        if args.field:
            value = pick(answer.value, args.field)
            print(value if isinstance(value, str) else json.dumps(value))
        elif args.json:
            print(json.dumps(answer.value))
        else:
            answer.show(answer.value)
        return int(answer.code)
    except P2LError as error:  # JobFailed too (evaluate, when its job fails)
        print_problem(error, args.json)
        return 1
    except (OSError, ValueError, KeyError) as error:  # a local file, or --field
        message = error.args[0] if isinstance(error, KeyError) else error
        err.print(f"error: {message}", style="red")
        return 1
    except KeyboardInterrupt:
        err.print("interrupted (a job keeps running on the service: p2l jobs cancel ID)")
        return 130


if __name__ == "__main__":
    sys.exit(main())
