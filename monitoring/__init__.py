"""The seed's import name: ``from monitoring import MetricsLogger`` (MONITORING_QUICK_START.md) works as written.

The original library was a ``monitoring`` module beside the training scripts, so users' analysis code
imports it by that name. This name is :mod:`orchestrator.monitoring` itself, not a copy: the classes,
their identity and the lazy plotting import are the same, and importing it does not import Ray.
"""

import sys

import orchestrator.monitoring

sys.modules[__name__] = orchestrator.monitoring
