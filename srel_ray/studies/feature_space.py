"""``srel-ray tsne DIR``: where the condensed images lie among real ones in the teacher's feature space (the SRe2L
paper's appendix C): t-SNE (scikit-learn) of the teacher's penultimate features (srel_ray.models.features) of the
condensed images and of real training images of a few classes, drawn from the seed.

Runs in this process on the CPU (a few hundred teacher forward passes and one small t-SNE; no Ray). Writes
DIR/tsne/tsne.json (the 2-D points: kind, class, x, y) and DIR/tsne/tsne.png, and logs both to the run's MLflow run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from srel_ray.config import Config, FeatureSpaceConfig
from srel_ray.core.continual import memory_images
from srel_ray.core.recover import freeze
from srel_ray.core.seeding import STREAM_FEATURE_SPACE, generator
from srel_ray.data.real import RealData, load_dataset
from srel_ray.errors import ConfigError
from srel_ray.inspection import save_figure
from srel_ray.models.features import classifier_layer, penultimate_features
from srel_ray.storage import files, sets
from srel_ray.storage.layout import RunDir
from srel_ray.studies.base import finished_run
from srel_ray.teacher import load_teacher
from srel_ray.tracking import previous_run_id, tracked_run

log = logging.getLogger(__name__)

MAY_SET = ("tracking",)  # the run's sections a feature-space study may override
BATCH = 256


def shown_classes(num_classes: int, count: int, seed: int) -> list[int]:
    """The ``count`` classes shown, drawn from (seed, STREAM_FEATURE_SPACE), ascending."""
    return sorted(torch.randperm(num_classes, generator=generator(seed, STREAM_FEATURE_SPACE))[:count].tolist())


def real_rows(data: RealData, classes: list[int], per_class: int, seed: int) -> torch.Tensor:
    """Up to ``per_class`` training rows of each class, drawn from (seed, STREAM_FEATURE_SPACE, class)."""
    rows = []
    for c in classes:
        members = data.train_index.members(c)
        pick = torch.randperm(len(members), generator=generator(seed, STREAM_FEATURE_SPACE, c))[:per_class]
        rows.append(members[pick.sort().values])
    return torch.cat(rows)


def feature_space(cfg: Config, run: RunDir, f: FeatureSpaceConfig, seed: int, data: RealData) -> dict:
    """The points of tsne.json: the t-SNE of the teacher's features of the condensed and the real images of the
    shown classes."""
    from sklearn.manifold import TSNE

    info = sets.read_set(run.set_dir("condensed"))
    if f.classes > info.num_classes:
        raise ConfigError(f"tsne.classes must be <= the run's {info.num_classes} classes, got {f.classes}")
    classes = shown_classes(info.num_classes, f.classes, seed)
    rows = real_rows(data, classes, f.real_per_class, seed)
    kinds = ["condensed"] * (len(classes) * info.ipc) + ["real"] * len(rows)
    labels = [c for c in classes for _ in range(info.ipc)] + data.labels("train")[rows].tolist()
    if f.perplexity >= len(kinds):
        raise ConfigError(f"tsne.perplexity must be below the number of points ({len(kinds)}: {len(classes)} "
                          f"classes x ({info.ipc} condensed + up to {f.real_per_class} real)), got {f.perplexity}")
    teacher = load_teacher(run.teacher)
    images = torch.cat([sets.read_images_at(info.path, memory_images(classes, info.ipc), info.channels),
                        data.images_at("train", rows)])
    model = freeze(teacher.build())
    features = penultimate_features(model, (teacher.norm.normalize_uint8(x) for x in images.split(BATCH)))
    log.info("tsne: t-SNE of %d teacher features (%d-D, layer %r)", len(features), features.shape[1],
             classifier_layer(model)[0])
    xy = TSNE(n_components=2, perplexity=f.perplexity, init="pca", random_state=seed % 2**32).fit_transform(
        features.double().numpy())
    return {"seed": seed, "classes": classes, "class_names": [info.class_names[c] for c in classes],
            "teacher": teacher.arch, "layer": classifier_layer(model)[0], "perplexity": f.perplexity,
            "ipc": info.ipc, "real_per_class": f.real_per_class,
            "points": [{"kind": k, "class": c, "x": float(x), "y": float(y)}
                       for k, c, (x, y) in zip(kinds, labels, xy.tolist())]}


def run_feature_space_study(out: str | Path, overrides: list[str]) -> tuple[dict, list[str]]:
    """``srel-ray tsne DIR``: the points and the figure in DIR/tsne/, both logged to the run's MLflow run; returns
    the points and the paths written."""
    study = finished_run(out, overrides, "tsne", MAY_SET)
    cfg, run = study.cfg, study.run
    points = feature_space(cfg, run, study.section, study.seed(), load_dataset(cfg.data))
    data, figure = run.feature_space("tsne.json"), run.feature_space("tsne.png")
    files.write_json_atomic(data, points)
    save_figure(lambda: plot_feature_space(points), figure)
    with tracked_run(cfg, "tsne", run.out, run_id=previous_run_id(cfg, run)) as tracker:
        tracker.log_artifact(data, "tsne")
        tracker.log_artifact(figure, "tsne")
    return points, [p for p in (data, figure) if files.exists(p)]


def plot_feature_space(points: dict):
    """Real images as small dots, condensed images as large stars, one colour per class."""
    from srel_ray.inspection import pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5.5))
    colours = plt.get_cmap("tab10")
    for i, (c, name) in enumerate(zip(points["classes"], points["class_names"])):
        for kind, style in (("real", {"marker": ".", "s": 16, "alpha": 0.5}),
                            ("condensed", {"marker": "*", "s": 140, "edgecolors": "black", "linewidths": 0.6})):
            xy = [(p["x"], p["y"]) for p in points["points"] if p["kind"] == kind and p["class"] == c]
            if xy:
                ax.scatter(*zip(*xy), color=colours(i % 10), label=f"{name} ({kind})", **style)
    ax.set(title=f"teacher {points['teacher']} features, t-SNE (stars: condensed, dots: real)",
           xticks=[], yticks=[])
    ax.legend(fontsize="x-small", loc="best", ncol=2)
    return fig
