"""orchestrator: everything Ray — runs, the monitoring actor, sweeps, the CLI.

The Ray-free monitoring library lives in :mod:`orchestrator.monitoring`; importing this package
itself does not import ``ray`` so the library stays usable on machines that only analyse runs.
"""
