"""srel_ray: dataset condensation (SRe2L: squeeze, recover, relabel) distributed with Ray.

The algorithm lives in plain PyTorch (``srel_ray.core``, ``srel_ray.models``, ``srel_ray.data``); Ray lives at the
edge (``srel_ray.distributed``); ``srel_ray.pipeline`` chains the stages and ``srel_ray.cli`` is the command line.
"""

__version__ = "0.1.0"
