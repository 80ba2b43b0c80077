"""The stages in the order a run runs them."""

from __future__ import annotations

from srel_ray.stages import evaluate, recover, relabel, squeeze

UNITS = {unit.NAME: unit for unit in (squeeze, recover, relabel, evaluate)}
STAGES = tuple(UNITS)
