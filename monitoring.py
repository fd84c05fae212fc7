"""The seed's import name: ``from monitoring import MetricsLogger`` (MONITORING_QUICK_START.md) works as written.

The original library was a single ``monitoring`` module beside the training scripts, so users'
analysis code imports it by that name. Every name here is looked up in :mod:`orchestrator.monitoring`
when asked for: the same objects, not copies, and ``VisualizationManager`` (matplotlib) is still
imported only on first use. Like the seed's module it has no submodules.
"""

import orchestrator.monitoring as _library

__all__ = _library.__all__


def __getattr__(name: str) -> object:
    """The library's object of that name (AttributeError, as for any module, when it has none). Module
    attributes such as ``__path__`` stay this module's own: with the library's, Python would load its
    submodules a second time under this name."""
    if not name.startswith("__") and hasattr(_library, name):
        return getattr(_library, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    """The library's public names, for completion in a notebook."""
    return sorted(__all__)
