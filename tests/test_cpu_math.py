"""oneMKL's first-call race (pytorch/pytorch#188792) is settled in every process that builds a model.

The race itself cannot be started on demand: it needs a quiet fresh process whose first VML call
is split over threads, and then hits about one such process in five here. What catches it is
``tests/test_training.py::test_resume_in_a_fresh_process_is_exact[pure_wave_linear]``, which
failed in about a third of its runs before the settling and in none of the dozen after it. This
file checks that the settling is wired in where every process passes.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

FRESH_PROCESS = textwrap.dedent("""
    from spectral_gpt.cpu_math import settle_vml_dispatch
    from spectral_gpt.model import build_model
    before = settle_vml_dispatch.cache_info().currsize
    build_model("tiny", "wave_baseline")
    print(before, settle_vml_dispatch.cache_info().currsize)
""")


def test_building_a_model_settles_mkl_first_in_a_fresh_process():
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "1"]
