"""imgfit-batch: train a coordinate network to recreate an image and film it learning.

The Python API is imgfit_batch.api; its functions are here too (run, validate, plan,
schema, status, render, report, compare, load), imported on first use so that
`import imgfit_batch` (and the CLI's start-up) stays light. No module of the package takes
one of these names (the modules behind them are rendering, reporting and comparing), so
`imgfit_batch.render` is always the function.

    import imgfit_batch
    summary = imgfit_batch.run("examples/quickstart.yaml")
"""

from __future__ import annotations

from imgfit_batch.version import __version__

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name alike)

# the API's names, from imgfit_batch.api
API = ("run", "validate", "plan", "schema", "status", "render", "report", "compare", "load")
__all__ = ["__version__", "compare", "load", "plan", "render", "report", "run", "schema", "status", "validate"]

if TYPE_CHECKING:
    from imgfit_batch.api import compare, load, plan, render, report, run, schema, status, validate


def __getattr__(name: str) -> object:
    if name in API:
        from imgfit_batch import api

        return getattr(api, name)
    raise AttributeError(f"module 'imgfit_batch' has no attribute {name!r}")
