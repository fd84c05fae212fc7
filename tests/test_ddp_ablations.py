"""Every ablation under PyTorch's DistributedDataParallel, as Ray Train's ``prepare_model`` wraps the
model of a run with ``--workers 2`` or more.

DDP refuses a model with a parameter that takes no part in the loss at the second step ("Expected to
have finished reduction in the prior iteration"): ``pure_wave_linear`` once had one and crashed at
step 2 of every multi-worker run, while the multi-worker tests trained only the default ablation.
A one-process gloo group checks the same bookkeeping in seconds, without Ray.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from spectral_gpt.config import ABLATIONS
from spectral_gpt.model import build_model


@pytest.fixture(scope="module")
def process_group(tmp_path_factory):
    """A gloo group of one process, torn down after the module (Ray's workers run elsewhere)."""
    rendezvous = tmp_path_factory.mktemp("ddp") / "rendezvous"
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("ablation", sorted(ABLATIONS))
def test_every_ablation_trains_under_ddp(ablation, process_group):
    torch.manual_seed(0)
    model = DistributedDataParallel(build_model("tiny", ablation))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    idx = torch.randint(0, 1024, (2, 16), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        loss = model(idx, idx)[1]
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]  # the same batch: three real steps were taken
