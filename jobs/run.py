"""Thin entry point for ``ray job submit --working-dir . -- python jobs/run.py <stage> --config ... --out ...``.

Same arguments as the ``srel-ray`` command; the job joins the cluster it was submitted to.
"""

import sys

from srel_ray.cli import main

if __name__ == "__main__":
    sys.exit(main())
