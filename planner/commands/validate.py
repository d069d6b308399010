"""`planner validate`: check an instance, or a plan against its instance."""

from __future__ import annotations

from pathlib import Path

import click

from planner.commands.common import plan_instance_options
from planner.errors import PlannerError


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@plan_instance_options
def validate(file: Path, instance: Path | None, force: bool) -> None:
    """Check an instance file, or a plan against its instance (SPEC rules 1-7).

    \b
    Examples:
      planner validate instances/mixed.json
      planner validate solutions/mixed.json
      planner validate /tmp/plan.json --instance instances/mixed.json
    """
    from planner.plan_files import validate_file

    warnings: list[str] = []
    violations = validate_file(file, instance, force=force, warnings=warnings)
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    if violations:
        for v in violations:
            click.echo(f"{file}: {v}", err=True)
        raise PlannerError(f"{file}: {len(violations)} violation(s)")
    click.echo(f"{file}: valid")
