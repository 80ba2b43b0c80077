"""Job entry point for the whole pipeline (squeeze, recover, relabel, evaluate): ``srel-ray run``, for Ray jobs.

    ray job submit --working-dir . -- python jobs/run.py --config FILE.yaml --out DIR [--set section.key=value ...]

Inside a submitted job $RAY_ADDRESS names the job's cluster, and the driver joins it (srel_ray.distributed.cluster).
"""

import sys

from srel_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
