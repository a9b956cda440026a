"""The networks: the six architectures (:mod:`~deepfeat.nets.models`, with the deformable convolution of
:mod:`~deepfeat.nets.deform`), their training (:mod:`~deepfeat.nets.train`), their activations and input
standardisation (:mod:`~deepfeat.nets.activations`), the deep features computed on demand
(:mod:`~deepfeat.nets.features`) and their export (:mod:`~deepfeat.nets.extract`).
Job entry points: :func:`train_model` (rule ``train``) and :func:`extract_features` (rule ``extract``)."""

from deepfeat.nets.activations import layer_activations, standardise_input
from deepfeat.nets.deform import (
    DeformConv2d,
    ReferenceDeformConv2d,
    conv_out_size,
    deform_conv2d,
    deform_conv2d_reference,
)
from deepfeat.nets.extract import extract_features
from deepfeat.nets.features import ModelFeatures
from deepfeat.nets.models import (
    ARCHS,
    CONV_ARCHS,
    CONV_LAYERS,
    LAYERS,
    POINTS,
    build_model,
    cpu_state,
    layer_shapes,
    load_model,
    n_params,
)
from deepfeat.nets.train import train_model

__all__ = [
    "ARCHS",
    "CONV_ARCHS",
    "CONV_LAYERS",
    "LAYERS",
    "POINTS",
    "DeformConv2d",
    "ModelFeatures",
    "ReferenceDeformConv2d",
    "build_model",
    "conv_out_size",
    "cpu_state",
    "deform_conv2d",
    "deform_conv2d_reference",
    "extract_features",
    "layer_activations",
    "layer_shapes",
    "load_model",
    "n_params",
    "standardise_input",
    "train_model",
]
