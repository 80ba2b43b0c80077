"""Job entry point for the relabel stage: ``srel-ray relabel``, for Ray job submission.

    ray job submit --working-dir . -- python jobs/relabel.py --config FILE.yaml --out DIR [--set section.key=value ...]

Inside a submitted job $RAY_ADDRESS names the job's cluster, and the driver joins it (srel_ray.distributed.cluster).
"""

import sys

from srel_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["relabel", *sys.argv[1:]]))
