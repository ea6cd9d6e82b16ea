"""``python -m benchmarks.worker SPEC RESULT``: one variant of a benchmark, in this process of its own.

Started by :func:`benchmarks.harness.run_rounds`, not by hand: ``SPEC`` is the JSON of
:meth:`benchmarks.harness.Variant.spec`, and the report is written as JSON to the file ``RESULT``
(see :func:`benchmarks.harness.worker_main`). Nothing of ours is imported before the variant's first
import.
"""

import sys

from benchmarks.harness import worker_main

if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
