"""The four stages of a run, each a unit with one module: ``plan`` (what it needs and makes), ``is_done`` (its
outputs are complete), ``run`` (does the missing work through an executor, returns a typed result) and
``record`` (the result as DIR/stages/<stage>.json holds it).

    squeeze    the teacher (and teacher.extra's teachers)
    recover    the condensed set's images (per-class statistics first, for EDC's matching)
    relabel    the soft labels of the condensed set; with evaluate.baselines also the random-real set
               (srel_ray.stages.baselines makes its images) and its labels
    evaluate   the students, trained on the sets and tested on real data

The orchestrator (srel_ray.pipeline, with srel_ray.stage_loop) runs them in order. An executor does the heavy
work: on Ray (srel_ray.distributed.executor: actors, Ray Data, Ray Train) or in this process (srel_ray.stages.local:
the plain PyTorch loops of srel_ray.core, used by tuning trials and tests).
"""
