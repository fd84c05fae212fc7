"""Pictures of a WaveGPT's embedding spectrum: frequencies, phases, harmonics, wave packets, temperatures.

All of them are functions of the embedding tables only (spec 5.4/5.10), so they cost no forward
pass. A model without a wave embedding (the standard GPT) has no tables and gets no such plots.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from orchestrator.monitoring.figures import style_axes

HEATMAP_TOKENS = 100
"""Rows shown in the per-token heatmaps; enough to see structure, few enough to read."""

PACKET_TOKENS = (0, 1, 10, 50, 100, 500)
"""Token ids whose wave packets are drawn (the original's choice; clipped to the vocabulary)."""

PACKET_WAVES = 8
"""Waves summed into one packet curve."""


def wave_tables(model: Any) -> dict[str, np.ndarray] | None:
    """The embedding tables as float arrays, or ``None`` for a model without a wave embedding.

    Keys: ``base_freqs`` (V, W), ``phases`` (V, W), ``harmonic_amps`` (V, W, K), and ``pos_freq``
    (W,) when present. A DDP/DataParallel wrapper is looked through.
    """
    core = getattr(model, "module", model)
    embedding = getattr(core, "embedding", None)
    names = ("base_freqs", "phases", "harmonic_amps")
    if embedding is None or not all(hasattr(embedding, n) for n in names):
        return None
    tables = {n: _array(getattr(embedding, n)) for n in (*names, "pos_freq") if hasattr(embedding, n)}
    return tables


def attention_temperatures(model: Any) -> list[float]:
    """Learned per-layer attention temperatures, or ``[]`` when the model has none."""
    core = getattr(model, "module", model)
    get = getattr(core, "attention_temperatures", None)
    return [float(t) for t in get()] if callable(get) else []


def draw_frequencies(fig: Figure, tables: dict[str, np.ndarray]) -> None:
    """Heatmap of the first tokens' base frequencies, and the histogram of all of them."""
    freqs = tables["base_freqs"]
    left, right = fig.subplots(1, 2)
    image = left.imshow(freqs[:HEATMAP_TOKENS], aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=left, label="frequency")
    style_axes(left, "Base frequencies (first tokens)", xlabel="wave", ylabel="token id", grid=False)
    right.hist(freqs.ravel(), bins=50, color="tab:green", alpha=0.8)
    right.axvline(float(freqs.mean()), color="black", linestyle="--", label=f"mean {freqs.mean():.3f}")
    right.legend()
    style_axes(right, "Distribution of all base frequencies", xlabel="frequency", ylabel="count")


def draw_phases(fig: Figure, tables: dict[str, np.ndarray]) -> None:
    """Heatmap of phases and the first wave's phase of each token on the unit circle."""
    phases = tables["phases"]
    left = fig.add_subplot(1, 2, 1)
    polar = fig.add_subplot(1, 2, 2, projection="polar")
    image = left.imshow(phases[:HEATMAP_TOKENS], aspect="auto", cmap="twilight", interpolation="nearest")
    fig.colorbar(image, ax=left, label="phase (rad)")
    style_axes(left, "Phases (first tokens)", xlabel="wave", ylabel="token id", grid=False)
    shown = phases[:HEATMAP_TOKENS, 0]
    polar.scatter(shown, np.ones_like(shown), c=np.arange(len(shown)), cmap="viridis", s=12)
    polar.set_title("First-wave phase by token id")


def draw_harmonics(fig: Figure, tables: dict[str, np.ndarray]) -> None:
    """Token-mean |A| per (wave, harmonic), and mean |A| per harmonic against a 1/n law."""
    magnitude = np.abs(tables["harmonic_amps"])
    n = np.arange(1, magnitude.shape[2] + 1)
    left, right = fig.subplots(1, 2)
    image = left.imshow(magnitude.mean(axis=0), aspect="auto", cmap="plasma", interpolation="nearest")
    fig.colorbar(image, ax=left, label="mean |A|")
    left.set_xticks(range(len(n)), [str(k) for k in n])
    style_axes(left, "Mean |A| per wave and harmonic", xlabel="harmonic n", ylabel="wave", grid=False)
    per_harmonic = magnitude.mean(axis=(0, 1))
    right.bar(n, per_harmonic, color="tab:purple", alpha=0.8, label="mean |A|")
    right.plot(n, per_harmonic[0] / n, color="black", linestyle="--", marker="o", label="1/n reference")
    right.set_xticks(n)
    right.legend()
    style_axes(right, "Amplitude per harmonic", xlabel="harmonic n", ylabel="mean |A|")


def draw_wave_packets(fig: Figure, tables: dict[str, np.ndarray]) -> None:
    """Each chosen token's packet sum_w sum_n A(w,n) cos(n f_w t + phi_w) over one period of t."""
    freqs, phases, amps = tables["base_freqs"], tables["phases"], tables["harmonic_amps"]
    vocab = freqs.shape[0]
    tokens = sorted({min(t, vocab - 1) for t in PACKET_TOKENS})
    t = np.linspace(0.0, 2.0 * math.pi, 200)
    harmonics = np.arange(1, amps.shape[2] + 1)
    axes = fig.subplots(2, 3).ravel()
    for ax, token in zip(axes, tokens, strict=False):
        w = min(PACKET_WAVES, freqs.shape[1])
        f, phi, a = freqs[token, :w], phases[token, :w], amps[token, :w]
        angle = harmonics[None, :, None] * f[:, None, None] * t[None, None, :] + phi[:, None, None]
        packet = (a[:, :, None] * np.cos(angle)).sum(axis=(0, 1))
        ax.plot(t, packet, color="tab:blue")
        style_axes(ax, f"Token {token}", xlabel="t", ylabel="amplitude")
    for ax in axes[len(tokens):]:
        ax.set_visible(False)
    fig.suptitle("Wave packets")


def draw_attention_temperatures(fig: Figure, temps: list[float], num_waves: int) -> None:
    """Each layer's learned temperature beside the sqrt(W) scale of a dot product of W waves."""
    ax = fig.subplots()
    ax.bar(range(len(temps)), temps, color="tab:orange", alpha=0.8)
    scale = math.sqrt(num_waves)
    ax.axhline(scale, color="black", linestyle="--", label=f"sqrt(W) = {scale:.2f}")
    ax.set_xticks(range(len(temps)))
    ax.legend()
    style_axes(ax, "Attention temperature per layer", xlabel="layer", ylabel="temperature")


def _array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float64)
