"""`pyedge new service NAME`: a user's own service project, outside the framework.

The project is rendered from the Jinja templates in `templates/service/` (Jinja comes with
Flask): a package of the shared service shape, its tests against a real broker with the
SDK's test helpers (`pyedge.testing`), a pyproject.toml with its `pyedge.services` entry
point and lint settings, and a Dockerfile and compose file that put it beside the bundle.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from edge_server.registry import installed_services
from pyedge import __version__
from pyedge.config import SLUG_RE

logger = logging.getLogger(__name__)

TEMPLATES = Path(__file__).resolve().parent / "templates" / "service"
SUFFIX = ".tmpl"
# Templates whose file name is not the output's (dot files would hide in the package).
# Longer slugs make lines of the generated code longer than its line length.
MAX_SLUG = 32
RENAMED = {"dockerignore": ".dockerignore", "gitignore": ".gitignore"}


def project_context(slug: str, title: str | None, description: str | None) -> dict[str, str]:
    """The names the templates use, all derived from the slug."""
    words = slug.replace("-", " ")
    return {
        "slug": slug,
        "folder": slug,
        "package": slug.replace("-", "_"),
        "env": slug.replace("-", "_").upper(),
        "title": title or words.capitalize(),
        "description": description or f"The {words} service.",
        "pyedge_version": __version__,
    }


def output_path(template: Path, context: dict[str, str]) -> Path:
    """Where a template's file goes in the project: `package/` becomes the package's name."""
    parts = list(template.with_suffix("").parts)  # drop .tmpl
    if parts[0] == "package":
        parts[0] = context["package"]
    if parts == ["tests", "test_service.py"]:
        parts[1] = f"test_{context['package']}.py"
    parts[-1] = RENAMED.get(parts[-1], parts[-1])
    return Path(*parts)


def render_project(target: Path, context: dict[str, str]) -> list[Path]:
    """Write the project into `target` (which must not exist yet); the files written."""
    environment = Environment(
        loader=FileSystemLoader(TEMPLATES),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # Python, TOML, YAML and Markdown: never HTML
    )
    written = []
    for template in sorted(TEMPLATES.rglob(f"*{SUFFIX}")):
        relative = template.relative_to(TEMPLATES)
        path = target / output_path(relative, context)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(environment.get_template(relative.as_posix()).render(context))
        written.append(path)
    return written


@click.group()
def new() -> None:
    """Create a project: `pyedge new service NAME`."""


@new.command("service")
@click.argument("slug", metavar="NAME")
@click.option(
    "--dir",
    "parent",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="where the project's folder (NAME) is made; beside the PyEdge checkout for compose",
)
@click.option("--title", help="its title in the dashboard (default: from NAME)")
@click.option("--description", help="one sentence on what it does")
def new_service(slug: str, parent: Path, title: str | None, description: str | None) -> None:
    """Create the project of a new service NAME (lowercase words joined by '-')."""
    if not SLUG_RE.fullmatch(slug):
        raise click.BadParameter(
            "lowercase letters and digits, words joined by '-', starting with a letter "
            "(e.g. weather-station)",
            param_hint="NAME",
        )
    if len(slug) > MAX_SLUG:
        raise click.BadParameter(f"at most {MAX_SLUG} characters", param_hint="NAME")
    if slug in installed_services():
        raise click.BadParameter(f"{slug!r} is a service installed here already", param_hint="NAME")
    target = parent / slug
    if target.exists():
        raise click.ClickException(f"{target} exists already; choose another NAME or --dir")
    context = project_context(slug, title, description)
    written = render_project(target, context)
    click.echo(f"created {target}/ ({len(written)} files): the service {slug!r}")
    click.echo(f"  package  {context['package']}/ (service.py, schemas.py, views.py, config.py)")
    click.echo("next, in the environment PyEdge is installed in:")
    click.echo(f"  cd {target} && pip install -e . && make test && make lint")
    click.echo(f"  pyedge run      (or: pyedge serve {slug})")
