"""The documentation: a short README, a site whose figures match the committed results, and
references generated from the code (scripts/docs_site.py; `mkdocs build --strict` in the
README's test command builds the site itself)."""

import re
from pathlib import Path

import pytest

from app.config import Settings
from scripts import docs_site

pytestmark = pytest.mark.unit

ROOT = Path(__file__).parents[2]
README = ROOT / "README.md"
PAGES = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]


def test_the_readme_is_a_two_minute_read() -> None:
    assert len(README.read_text().splitlines()) <= 200


def test_every_relative_link_of_the_readme_and_changelog_exists() -> None:
    for page in (README, ROOT / "CHANGELOG.md"):
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_every_quoted_figure_matches_its_result_file() -> None:
    problems = []
    quoted = 0
    for page in PAGES:
        text = page.read_text()
        quoted += len(docs_site.FIGURE.findall(text))
        problems += docs_site.check_figures(text, str(page.relative_to(ROOT)))
    assert not problems, "\n".join(map(str, problems))
    assert quoted >= 50  # the benchmarks page quotes its figures with their sources


@pytest.mark.parametrize(
    ("quoted", "problem"),
    [
        ("mean regret 0.035<!-- fig selection#/methods/all/leep/regret -->", "says 0.054"),
        ("8.9 %<!-- fig estimates#/median_abs_error_percent_measured *100 -->", "says 890.0"),
        ("0.029<!-- fig selection#/methods/all/leep/regrets -->", "no number at that pointer"),
        ("0.029<!-- fig selections#/methods/all/leep/regret -->", "no such result file"),
        ("a marker with no figure <!-- fig selection#/methods -->", "not read"),
    ],
)
def test_a_figure_that_differs_from_its_result_file_is_reported(quoted: str, problem: str) -> None:
    (found,) = docs_site.check_figures(quoted, "page.md")
    assert problem in str(found)


def test_figures_round_half_up_to_their_own_decimals() -> None:
    # 5.25 s is quoted as 5.3 s (not 5.2, as Python's round would give), 1,463 as 1,463.
    assert not docs_site.check_figures("5.3 s<!-- fig capacity#/measured/job/seconds -->", "p")
    assert not docs_site.check_figures(
        "1,463 images/s<!-- fig capacity#/measured/signature_images_per_s -->", "p"
    )
    assert docs_site.check_figures("5.2 s<!-- fig capacity#/measured/job/seconds -->", "p")


def test_the_configuration_page_documents_every_setting() -> None:
    page = docs_site.configuration_page()
    for name, field in Settings.model_fields.items():
        assert field.description, f"P2L_{name.upper()} has no description"
        assert f"| `P2L_{name.upper()}` |" in page


def test_the_api_page_lists_every_operation() -> None:
    from app.main import app

    document = app.openapi()
    page = docs_site.api_page(document)
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert f"### `{method.upper()} {path}`" in page
            assert f"(operation `{operation['operationId']}`)" in page
