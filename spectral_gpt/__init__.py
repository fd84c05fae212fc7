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

__all__ = [
    "ABLATIONS",
    "MODEL_SIZES",
    "ConfigError",
    "ExperimentConfig",
    "ModelConfig",
    "TrainConfig",
    "build_model",
]


def build_model(size: str, ablation: str, vocab_size: int | None = None):
    """The ``torch.nn.Module`` of ``ablation`` at ``size`` (standard GPT or WaveGPT), freshly initialised."""
    from spectral_gpt.model import build_model as _build

    return _build(size, ablation, vocab_size)
