"""The registry of feature families: a family is one function of a :class:`~deepfeat.features.chunk.Chunk`
returning a list of :class:`Feature`, registered under its config name with :func:`register`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from deepfeat.features.chunk import Chunk


@dataclass
class Feature:
    """One output feature of a chunk: display name, values ``(B, *shape)``, definition text and params."""

    name: str
    values: np.ndarray
    definition: str
    params: dict = field(default_factory=dict)


FeatureFn = Callable[["Chunk"], list[Feature]]
#: family name (as in ``handcrafted.features``) -> function computing that family's features for a chunk
FEATURES: dict[str, FeatureFn] = {}


def register(family: str) -> Callable[[FeatureFn], FeatureFn]:
    """Decorator adding a feature family to :data:`FEATURES` under ``family`` (its config name)."""

    def deco(fn: FeatureFn) -> FeatureFn:
        if family in FEATURES and FEATURES[family] is not fn:
            raise ValueError(f"feature family '{family}' is already registered")
        FEATURES[family] = fn
        return fn

    return deco
