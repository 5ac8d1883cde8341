"""The command line: parse, call the library, turn domain errors into one line
and the contract's exit code (in `main`, the one place that does so)."""

from __future__ import annotations

import json
import sys
from typing import List, Optional

import typer

from imgfit_batch.errors import EXIT_FAILURE, EXIT_USAGE, ImgfitError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Train a coordinate network to recreate an image, film it learning, resume exactly after preemption.",
)
_state = {"debug": False}


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    _state["debug"] = debug


@app.command()
def run(
    spec: str = typer.Argument(..., metavar="SPEC", help="Job spec: a path, - for stdin, or s3://bucket/key."),
    set_: Optional[List[str]] = typer.Option(None, "--set", metavar="FIELD=VALUE", help="Override a spec field, e.g. --set train.epochs=5 (repeatable)."),
    index: Optional[int] = typer.Option(None, "--index", min=0, help="Which image of a list to train (default: JOB_COMPLETION_INDEX, then SLURM_ARRAY_TASK_ID)."),
    restart: bool = typer.Option(False, "--restart", help="Discard earlier progress at the output and start over."),
) -> None:
    """Run the whole job: train, film, checkpoint, publish the outputs.

    Running it again on the same spec is safe: it resumes from the newest
    complete checkpoint, or does nothing if the job already completed.
    Exit codes: 0 done, 2 bad spec, 3 input/environment unavailable,
    75 stopped by a signal after a checkpoint (rerun to resume), 1 unexpected.

    Example:
        imgfit-batch run examples/quickstart.yaml --set train.epochs=5
    """
    from imgfit_batch.job import Job, resolve_task
    from imgfit_batch.progress import Reporter
    from imgfit_batch.spec import load_spec

    job_spec = load_spec(spec, set_ or [])
    task = resolve_task(job_spec, index)
    Job(job_spec, task, Reporter(job_spec.log.every_seconds), restart=restart).run()


@app.command()
def validate(
    spec: str = typer.Argument(..., metavar="SPEC", help="Job spec: a path, - for stdin, or s3://bucket/key."),
    set_: Optional[List[str]] = typer.Option(None, "--set", metavar="FIELD=VALUE", help="Override a spec field (repeatable)."),
) -> None:
    """Check a spec and print it resolved (every default filled in) as YAML.

    Example:
        imgfit-batch validate examples/seed.yaml --set model.kind=hashgrid
    """
    import yaml

    from imgfit_batch.spec import load_spec, resolved_dict

    typer.echo(yaml.safe_dump(resolved_dict(load_spec(spec, set_ or [])), sort_keys=False), nl=False)


@app.command()
def schema() -> None:
    """Print the spec's JSON Schema (every field, its type, range and description).

    Example:
        imgfit-batch schema > imgfit-spec.schema.json
    """
    from imgfit_batch.spec import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


def main() -> None:
    """Console entry point: every domain error becomes one line and its exit code."""
    from imgfit_batch import signals

    signals.install()
    try:
        app(standalone_mode=False)
    except ImgfitError as exc:
        if _state["debug"]:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(EXIT_USAGE if isinstance(exc, click.UsageError) else exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            print("error: aborted", file=sys.stderr)
            sys.exit(EXIT_FAILURE)
        if _state["debug"]:
            raise
        print(f"error: unexpected failure: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", file=sys.stderr)
        sys.exit(EXIT_FAILURE)
    sys.exit(0)


if __name__ == "__main__":
    main()
