"""`python tests/another_device.py SAMPLES_PER_SECOND_JSON imgfit-batch-args...`: the job, with
its device calibration answered by the given numbers instead of measured.

A stand-in for what cannot run here -- a GPU's measurement (a mock, named as such): the
numbers say what "another device" measured, e.g. '{"65536": 17.3e6, "262144": 64.1e6}'
(an H100's, docs/performance.md). Everything else is the real job on this CPU.
"""

from __future__ import annotations

import json
import sys

from imgfit_batch import recipe


def main() -> None:
    numbers = {int(b): float(s) for b, s in json.loads(sys.argv[1]).items()}

    def fed(step, batches, seconds, device, device_name):  # the signature of recipe.calibrate
        return recipe.Calibration("another device (numbers fed by the test)", {b: numbers[b] for b in batches})

    recipe.calibrate = fed
    sys.argv = ["imgfit-batch", *sys.argv[2:]]
    from imgfit_batch.cli import entry

    entry()


if __name__ == "__main__":
    main()
