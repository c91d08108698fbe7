"""Model architectures and the name registry (opening and saving checkpoints is :mod:`amc.io`)."""
from .registry import ModelSpec, available_models, build_model, default_input_shape, default_num_classes, model_arguments

__all__ = ["ModelSpec", "available_models", "build_model", "default_input_shape", "default_num_classes", "model_arguments"]
