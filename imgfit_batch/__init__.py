"""imgfit-batch: train a coordinate network to recreate an image and film it learning.

The Python API is imgfit_batch.api; its functions whose names no module of the package
takes are here too, imported on first use so that `import imgfit_batch` (and the CLI's
start-up) stays light. render, report and compare are modules of the package as well:
call them as imgfit_batch.api.render, .report, .compare.

    import imgfit_batch
    summary = imgfit_batch.run("examples/quickstart.yaml")
"""

from __future__ import annotations

from imgfit_batch.version import __version__

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy reads the name alike)

# the API's names, from imgfit_batch.api
API = ("run", "validate", "plan", "schema", "status", "load")
__all__ = ["__version__", "load", "plan", "run", "schema", "status", "validate"]

if TYPE_CHECKING:
    from imgfit_batch.api import load, plan, run, schema, status, validate


def __getattr__(name: str) -> object:
    if name in API:
        from imgfit_batch import api

        return getattr(api, name)
    raise AttributeError(f"module 'imgfit_batch' has no attribute {name!r}")
