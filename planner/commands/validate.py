"""`planner validate`: check an instance, or a plan against its instance."""

from __future__ import annotations

from pathlib import Path

import click

from planner.errors import PlannerError


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--instance", type=click.Path(dir_okay=False, path_type=Path),
              help="The instance a plan was made for (required for plans).")
def validate(file: Path, instance: Path | None) -> None:
    """Check an instance file, or a plan against its instance (SPEC rules 1-7).

    \b
    Examples:
      planner validate instances/mixed.json
      planner validate solutions/mixed.json --instance instances/mixed.json
    """
    from planner.service import validate_file

    violations = validate_file(file, instance)
    if violations:
        for v in violations:
            click.echo(f"{file}: {v}", err=True)
        raise PlannerError(f"{file}: {len(violations)} violation(s)")
    click.echo(f"{file}: valid")
