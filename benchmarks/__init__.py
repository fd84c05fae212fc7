"""Measured speed and overhead of spectral-gpt; each benchmark prints one JSON object (DESIGN.md)."""
