"""The command line: parse, call the library, turn domain errors into one line
and the contract's exit code (in `main`, the one place that does so)."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from imgfit_batch.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_RETRYABLE, EXIT_USAGE, ImgfitError, is_node_local

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="Train a coordinate network to recreate an image, film it learning, resume exactly after preemption.",
)
_state = {"debug": False}


@app.callback()
def _root(
    debug: bool = typer.Option(
        False, "--debug", help="Show full tracebacks on errors, and the libraries' own log lines and warnings."
    ),
) -> None:
    _state["debug"] = debug
    if debug:
        from imgfit_batch import stderr

        stderr.hold(debug=True)  # main's restore undoes this too


# the arguments and options more than one command takes, declared once
SpecArg = Annotated[
    str,
    typer.Argument(
        metavar="SPEC", help="Job spec: a path, - for stdin, or a store URI (s3://, gs://, az://bucket/key)."
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="FIELD=VALUE", help="Override a spec field, e.g. --set train.epochs=5 (repeatable)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object, for scripts.")]
OutputArg = Annotated[
    str, typer.Argument(metavar="OUTPUT", help="A job's output location (folder, or s3:// gs:// az:// prefix).")
]


@app.command()
def run(
    spec: SpecArg,
    set_: SetOpt = None,
    index: int | None = typer.Option(
        None,
        "--index",
        min=0,
        help="Which task to run: an image of a list and/or a sweep's combination, as `plan` numbers them "
        "(default: JOB_COMPLETION_INDEX, then SLURM_ARRAY_TASK_ID).",
    ),
    restart: bool = typer.Option(False, "--restart", help="Discard earlier progress at the output and start over."),
) -> None:
    """Run the whole job: train, film, checkpoint, publish the outputs.

    Running it again on the same spec is safe: it resumes from the newest
    complete checkpoint, or does nothing if the job already completed.
    Exit codes: 0 done, 2 bad spec, 3 input permanently unavailable,
    69 transient or node-local fault (retry), 75 stopped by a signal after a
    checkpoint (rerun to resume), 1 unexpected.

    \b
    Example:
        imgfit-batch run examples/quickstart.yaml --set train.epochs=5
    """
    from imgfit_batch import api

    api.run(spec, index=index, restart=restart, overrides=set_ or [])


@app.command()
def validate(spec: SpecArg, set_: SetOpt = None) -> None:
    """Check a spec and print it resolved (every default filled in) as YAML.

    Values that follow the image's size (e.g. hashgrid's grid and batch) are
    filled in when the image is a local file; otherwise a comment names them.

    \b
    Example:
        imgfit-batch validate examples/seed.yaml --set model.kind=hashgrid
    """
    from imgfit_batch import api

    typer.echo(api.validate(spec, overrides=set_ or []).text(), nl=False)


@app.command()
def plan(spec: SpecArg, set_: SetOpt = None, as_json: JsonOpt = False) -> None:
    """List a spec's tasks (its images x its sweep's combinations) and the array size.

    Task i is what `run --index i` (or JOB_COMPLETION_INDEX / SLURM_ARRAY_TASK_ID = i)
    runs: the image varies slowest, then the sweep's fields in the order written,
    the last one fastest. Every value was validated; nothing is run or written.
    --json prints {"count", "array", "output", "tasks": [{"index", "image",
    "label", "overrides", "output"}]} ("output": the spec's, where `report` looks).

    \b
    Example:
        imgfit-batch plan examples/study.yaml
        imgfit-batch plan examples/quickstart.yaml --set 'sweep={train.lr: [0.001, 0.004], train.seed: [0, 1]}'
        imgfit-batch plan examples/study.yaml --json | jq .count
    """
    from imgfit_batch import api

    planned = api.plan(spec, overrides=set_ or [])
    typer.echo(json.dumps(planned.as_json(), default=str) if as_json else planned.text(), nl=as_json)


@app.command()
def schema() -> None:
    """Print the spec's JSON Schema (every field, its type, range and description).

    \b
    Example:
        imgfit-batch schema > imgfit-spec.schema.json
    """
    from imgfit_batch import api

    typer.echo(json.dumps(api.schema(), indent=2))


@app.command()
def render(
    source: str = typer.Argument(
        ...,
        metavar="OUTPUT_OR_MODEL",
        help="A job's output location (folder, or s3:// gs:// az:// prefix) or a model.pt.",
    ),
    scale: float | None = typer.Option(
        None, "--scale", min=0.01, max=64, help="Render at K times the input's resolution."
    ),
    width: int | None = typer.Option(
        None, "--width", min=1, help="Exact width (height follows the aspect ratio unless given)."
    ),
    height: int | None = typer.Option(None, "--height", min=1, help="Exact height."),
    output: str = typer.Option(
        ..., "-o", "--output", metavar="FILE", help="PNG to write (path, or s3:// gs:// az:// URI)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
) -> None:
    """Render the trained image at any resolution (the network is a continuous field).

    \b
    Example:
        imgfit-batch render runs/quickstart --scale 4 -o big.png
    """
    from imgfit_batch import api

    if device not in ("auto", "cpu", "cuda"):
        raise typer.BadParameter("must be auto, cpu or cuda", param_hint="--device")
    rendered = api.render(source, output, scale=scale, width=width, height=height, device=device)
    typer.echo(f"wrote {output} ({rendered.width}x{rendered.height})")


@app.command()
def status(output: OutputArg, as_json: JsonOpt = False) -> None:
    """Show a job's state from its output: running / interrupted / completed,
    step of total, loss, PSNR, resumes, newest checkpoint's age, the video.

    \b
    Example:
        imgfit-batch status s3://my-bucket/runs/pattern --json
    """
    from imgfit_batch import api

    found = api.status(output)
    typer.echo(json.dumps(found.fields) if as_json else found.text())


@app.command()
def report(
    output: str = typer.Argument(
        ...,
        metavar="OUTPUT",
        help="A study's output location (folder, or s3:// gs:// az:// prefix): the spec's output.",
    ),
) -> None:
    """Compare every task under OUTPUT: write OUTPUT/results.csv and OUTPUT/index.html.

    One row per task found in OUTPUT, OUTPUT/<image> or OUTPUT/<image>/<label>: its
    image, swept settings, model, status (completed / running / interrupted, with
    step of total), steps, PSNR, SSIM, seconds, device, resumes, a thumbnail of
    final.png and links to video.mp4, progress.png and summary.json; the best run
    of each image is marked. The page stands alone (no network; relative links),
    so it works from the folder, a bucket served as a static site, or downloaded. Safe to run
    while tasks still train: it only reads them.
    Exit codes: 0 written, 2 bad OUTPUT, 3 no job under OUTPUT (or unreadable),
    69 transient store fault (run again).

    \b
    Example:
        imgfit-batch report runs/study    # then open runs/study/index.html
        imgfit-batch report s3://my-bucket/study
    """
    from imgfit_batch import api

    typer.echo(api.report(output).text(), nl=False)


@app.command()
def compare(
    outs: list[str] = typer.Argument(
        ..., metavar="OUT", help="2 to 16 completed jobs' output locations (folders, or s3:// gs:// az:// prefixes)."
    ),
    output: str = typer.Option(
        ...,
        "-o",
        "--output",
        metavar="FILE.mp4",
        help="The video to write (path, or s3:// gs:// az:// URI), ending in .mp4.",
    ),
    height: int | None = typer.Option(
        None, "--height", min=16, max=2160, help="Tile height in pixels (default: the smallest input's, at most 480)."
    ),
    frames: int | None = typer.Option(
        None, "--frames", min=1, max=100_000, help="Frames of the output (default: the most any input has)."
    ),
    fps: float | None = typer.Option(None, "--fps", min=0.1, max=240, help="Frame rate (default: the first input's)."),
) -> None:
    """The films of several finished jobs side by side in one video, each
    labelled with its model kind, settings and final PSNR, aligned by fraction
    of training: output frame j of N shows, of an input with n frames, frame
    round(j*(n-1)/(N-1)), so all start together and end on their final frames.
    Settings come from each summary.json's task record (a sweep's label), else
    the output's folder name. Exit codes: 0 written, 2 bad usage, 3 an output
    missing, not completed or damaged, 69 ffmpeg or the node failed (retry),
    75 stopped by a signal (nothing written; run it again).

    \b
    Geometry (W x H of the video):
      h = --height, default min(smallest input frame height, 480), rounded down to even
      tile k: h high, w_k = input width * h / input height, to the nearest even (halves up)
      columns c = n for n <= 4 inputs, else ceil(sqrt(n)); rows r = ceil(n / c); filled row by row
      column width = max(200, widest tile in the column); a 40-pixel label strip above each tile
      W = sum of column widths + 4*(c-1);  H = r*(h + 40) + 4*(r-1)

    \b
    Example:
        imgfit-batch compare runs/study/pattern/* -o runs/study/compare.mp4
        imgfit-batch compare runs/fourier s3://bucket/runs/siren -o compare.mp4
    """
    from imgfit_batch import api

    made = api.compare(outs, output, height=height, frames=frames, fps=fps)
    typer.echo(f"wrote {output} ({made.width}x{made.height}, {made.frames} frames)")


MAX_LINE = 1000  # characters of an error line; the cut keeps the head (what) and the tail (what to do)


def _one_line(exc: BaseException, room: int = MAX_LINE) -> str:
    """Messages may quote a tool's multi-line output (ffmpeg's stderr) or a hostile
    spec's values; the contract promises one line, and credentials never show."""
    from imgfit_batch.redact import redact

    text = redact(" ".join(str(exc).split()))
    if len(text) > room:
        text = f"{text[: room * 2 // 3]} ... {text[-(room // 3 - 5) :]}"
    return text


def _say(head: str, exc: BaseException, tail: str = "") -> None:
    """The one stderr line of every failing exit: head, the redacted message, tail,
    at most MAX_LINE characters in all."""
    print(f"{head}{_one_line(exc, MAX_LINE - len(head) - len(tail))}{tail}", file=sys.stderr)


def _usage_message(exc: Exception) -> str:
    """click's message, with the command it concerns and where its help is, as one
    sentence (click's own `show()` prints four lines and the argument unredacted)."""
    ctx = getattr(exc, "ctx", None)
    if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
        print(ctx.get_help())  # no arguments at all: the help, and an exit 2 that says why
        return "no command given; `imgfit-batch --help` lists them"
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    names: list[str] = []
    while ctx is not None and ctx.parent is not None:  # the root's name is however we were started
        names.insert(0, ctx.info_name or "")
        ctx = ctx.parent
    if ctx is None:  # some parser errors carry no context: the first command word named
        known = {c.name or getattr(c.callback, "__name__", "") for c in app.registered_commands}
        names = [next((a for a in sys.argv[1:] if a in known), "")]
    command = " ".join(n for n in names if n)
    where = f"imgfit-batch {command} --help" if command else "imgfit-batch --help"
    return f"{command + ': ' if command else ''}{message} (see `{where}`)"


def main() -> None:
    """Console entry point: every domain error becomes one line and its exit code."""
    from imgfit_batch import signals, stderr

    signals.install()
    restore = stderr.hold()  # only our lines on stderr (--debug lets the libraries speak)
    try:
        _main()
    finally:
        restore()


def _main() -> None:
    try:
        app(standalone_mode=False)
    except ImgfitError as exc:
        if _state["debug"]:
            raise
        prefix = "stopped" if exc.exit_code == EXIT_INTERRUPTED else "error"
        _say(f"{prefix}: ", exc)
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        # Typer ships its own copy of click, so its exceptions are recognised by shape
        names = {cls.__name__ for cls in type(exc).__mro__}
        if "ClickException" in names:  # usage errors: the same one redacted, capped line as any other
            _say("error: ", Exception(_usage_message(exc)))
            sys.exit(EXIT_USAGE if "UsageError" in names else getattr(exc, "exit_code", EXIT_FAILURE))
        if "Abort" in names:
            print("error: aborted", file=sys.stderr)
            sys.exit(EXIT_FAILURE)
        if _state["debug"]:
            raise
        if is_node_local(exc):  # disk or inodes full wherever it struck: another try can pass
            _say("error: ", exc, " (a fault of this node; run again, it resumes)")
            sys.exit(EXIT_RETRYABLE)
        _say(f"error: unexpected failure: {type(exc).__name__}: ", exc, " (rerun with --debug for the traceback)")
        sys.exit(EXIT_FAILURE)
    sys.exit(0)


def entry() -> None:
    """The console script (and `python -m imgfit_batch`): main, with the stop watchdog
    armed, which ends a stopped process within its grace period whatever it waits on."""
    from imgfit_batch import signals, stderr

    signals.install()
    stderr.hold()  # never undone: the libraries stay quiet through the interpreter's exit too
    signals.arm_watchdog()
    main()


if __name__ == "__main__":
    entry()
