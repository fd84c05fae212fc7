"""spectral_gpt: the Wave GPT model science in plain PyTorch (no Ray).

Researchers import sizes, ablations and models from here; the orchestrator imports the same names
to run them on Ray. Importing this package never imports ``ray``.
"""

from spectral_gpt.config import (
    ABLATIONS,
    MODEL_SIZES,
    ConfigError,
    ExperimentConfig,
    ModelConfig,
    TrainConfig,
)
from spectral_gpt.model import build_model

__all__ = [
    "ABLATIONS",
    "MODEL_SIZES",
    "ConfigError",
    "ExperimentConfig",
    "ModelConfig",
    "TrainConfig",
    "build_model",
]

