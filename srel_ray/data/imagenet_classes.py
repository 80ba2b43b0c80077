"""ImageNet classes by WordNet id (wnid, ``n01440764``), in the standard order, from the synset lists timm ships.

ImageNet classifiers (torchvision's, timm's) number their outputs in the sorted-wnid order of these lists; a dataset
that names its classes by wnid (ImageNet's own folders, WebDataset class lists) is matched to a teacher by wnid,
and the human names (``tench``) are kept for messages only. Nothing is typed by hand: the lists are timm's files.
"""

from __future__ import annotations

import functools
import importlib.resources

# timm/data/_info/<file> for each list a config may name (timm.data.imagenet_info uses the same file names).
SYNSET_LISTS = {
    "imagenet1k": "imagenet_synsets.txt",
    "imagenet12k": "imagenet12k_synsets.txt",
    "imagenet21k": "imagenet21k_goog_synsets.txt",  # ImageNet-21K (Google's 21,843 classes)
    "imagenet21k_p": "imagenet21k_miil_synsets.txt",  # ImageNet-21K-P (the MIIL processed release)
    "imagenet22k": "imagenet22k_synsets.txt",
}
LEMMA_FILE = "imagenet_synset_to_lemma.txt"


def _read(file: str) -> str:
    return (importlib.resources.files("timm") / "data" / "_info" / file).read_text(encoding="utf-8")


@functools.cache
def synsets(name: str) -> tuple[str, ...]:
    """The wnids of one of ``SYNSET_LISTS``, in the classifier's output order."""
    return tuple(line.strip() for line in _read(SYNSET_LISTS[name]).splitlines() if line.strip())


@functools.cache
def _lemmas() -> dict[str, str]:
    pairs = (line.split("\t", 1) for line in _read(LEMMA_FILE).splitlines() if "\t" in line)
    return {wnid: lemma.split(",")[0].strip() for wnid, lemma in pairs}


def human_name(wnid: str) -> str | None:
    """The first lemma of a wnid (``tench`` for ``n01440764``), None for a name that is not a known wnid."""
    return _lemmas().get(wnid)


def describe(name: str) -> str:
    """A class for messages: ``'n01440764' (tench)`` for a wnid, the quoted name otherwise."""
    human = human_name(name)
    return f"{name!r} ({human})" if human else repr(name)


def is_wnid(name: str) -> bool:
    return human_name(name) is not None
