"""``train_loop_per_worker``: what every Ray Train worker runs.

Resume is the normal path: each worker first asks the monitoring actor for the latest committed
state, then trains. Rank 0 alone talks to the actor (rows fire-and-forget, checkpoints through the
object store, at most one save in flight); every rank evaluates the same fixed windows, so every
rank reaches the same early-stopping decision without a collective.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import ray
import ray.train
import ray.train.torch
import torch

from orchestrator.monitoring import collect_hardware_info
from orchestrator.settings import RunSettings
from orchestrator.snapshot import CopiesLanded, Snapshot, snapshot
from orchestrator.wire import to_wire
from spectral_gpt.data import BatchSampler, TokenDataset, validation_batches
from spectral_gpt.training import NonFiniteLossError, StepResult, TrainState, compiled, evaluate, train_step

GENERATION_PROMPT = "The theory of quantum mechanics suggests"
MAX_ROWS_IN_FLIGHT = 64
"""Unacknowledged rows rank 0 may have outstanding before it waits (bounded memory)."""


@dataclass
class _Sink:
    """Rank 0's connection to the monitoring actor, with back-pressure on rows and checkpoints.

    A checkpoint costs the training loop only a copy into CPU buffers that are reused from save to
    save (already-mapped memory, no page faults); that snapshot goes to the object store as NumPy
    arrays (:mod:`orchestrator.wire`, copied without the GIL) from a background thread while
    training goes on.
    """

    actor: Any
    attempt: int
    inflight_rows: list[Any] = field(default_factory=list)
    inflight_save: Future | None = None
    buffers: Snapshot | None = None
    """The last snapshot: the CPU buffers the next one is copied into."""
    handoff: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-handoff"))

    def send(self, row: dict[str, Any]) -> None:
        self.inflight_rows.append(self.actor.log.remote(self.attempt, [row]))
        if len(self.inflight_rows) > MAX_ROWS_IN_FLIGHT:
            ray.wait(self.inflight_rows[:1])
            self.inflight_rows = self.inflight_rows[1:]

    def prepare(self, state: dict[str, Any]) -> None:
        """Allocate the snapshot buffers now (after the first step, when the optimiser state exists),
        and have the object store fault in the memory a checkpoint of this size takes, in the
        background, so the first checkpoint costs no more than the later ones (the first put of a
        177 MB state took 160-180 ms on 2 cores, the next ones 25-55 ms)."""
        self.buffers = snapshot(state)
        CopiesLanded(state).synchronize()
        self.handoff.submit(_touch_object_store, to_wire(self.buffers))

    def save(self, step: int, state: dict[str, Any], val_loss: float | None) -> None:
        if self.inflight_save is not None:
            ray.get(self.inflight_save.result())  # one checkpoint in flight; then its buffers are free again
        self.buffers = snapshot(state, into=self.buffers)
        self.inflight_save = self.handoff.submit(self._hand_off, CopiesLanded(state), step,
                                                 to_wire(self.buffers), val_loss)

    def _hand_off(self, copied: CopiesLanded, step: int, wire_state: Any, val_loss: float | None) -> Any:
        copied.synchronize()  # the GPU-to-host copies have landed; the training thread never waited
        return self.actor.save_checkpoint.remote(self.attempt, step, wire_state, val_loss)

    def drain(self) -> None:
        saves = [self.inflight_save.result()] if self.inflight_save is not None else []
        ray.get([*self.inflight_rows, *saves])
        self.inflight_rows, self.inflight_save = [], None
        self.handoff.shutdown()


def _touch_object_store(wire_state: Any) -> None:
    ray.put(wire_state)  # dropped at once: the store keeps the memory it faulted in for the next object


def _metric_row(result: StepResult, started: float, tokens_since_start: int, step_time: float) -> dict[str, Any]:
    """``step_time`` is the wall time of the whole loop iteration up to this row (the step, any
    evaluation, and the previous iteration's hand-offs to the actor), so checkpoint stalls show up."""
    elapsed = max(time.perf_counter() - started, 1e-9)
    row: dict[str, Any] = {
        "step": result.step, "loss": result.loss, "ce_loss": result.ce, "learning_rate": result.lr,
        "tokens_per_sec": tokens_since_start / elapsed, "perplexity": math.exp(min(result.ce, 50.0)),
        "grad_norm": result.grad_norm, "memory_mb": _memory_mb(), "step_time_s": step_time,
    }
    if result.wave_ratio is not None:
        row["wave_ratio"] = result.wave_ratio
    if result.coherence is not None:
        row["coherence_loss"] = result.coherence
    if result.standard_embed_ratio is not None:
        row["standard_embed_ratio"] = result.standard_embed_ratio
    return row


def _memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_memory_mb(device: torch.device) -> float:
    """Rank 0's peak memory in this attempt, as the seed's benchmark reports it: CUDA memory allocated
    on a GPU, else this worker process's peak resident set (KiB on Linux, bytes on macOS)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Restore the latest committed state, train to the end (or early stop), report the outcome."""
    settings = RunSettings.from_dict(config["settings"])
    spec, mon = settings.spec, settings.monitoring
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    actor = config["monitor"]
    restored_ref = actor.latest_state.remote()  # fetched while the model and optimiser are built
    dataset = TokenDataset.prepare(settings.data.dataset, settings.data.cache_dir, settings.data.vocab_size)
    state = TrainState(spec, device=ray.train.torch.get_device())
    restored = ray.get(restored_ref)
    if restored is not None:
        state.load_state_dict(restored)
    if world > 1:
        ddp = ray.train.torch.prepare_model(state.model, move_to_device=False)
        state.forward_module = compiled(ddp, spec.train)
    sampler = BatchSampler(dataset.train, spec.model.block_size, spec.train.batch_size, spec.train.seed)
    val = validation_batches(dataset.val, spec.model.block_size, spec.train.batch_size, spec.train.eval_batches)
    sink = None
    if rank == 0:
        sink = _Sink(actor, ray.get(actor.begin_attempt.remote(state.step, collect_hardware_info())))
    actor.register_worker.remote(rank, os.getpid())

    started, start_tokens = time.perf_counter(), state.tokens_seen
    iteration_mark = started  # where the previous iteration would build its row: step_time_s spans one loop
    error, last_val = None, None
    while not state.finished:
        try:
            result = train_step(state, sampler.batch, rank=rank, world_size=world)
        except NonFiniteLossError as exc:
            error = str(exc)
            break
        s = result.step
        last = state.step >= spec.train.steps
        val_loss = None
        if (s > 0 and s % spec.train.eval_interval == 0) or last:
            val_loss = last_val = evaluate(state, val)
            improved = state.early_stopping.update(val_loss, s)
            last = last or state.early_stopping.should_stop
        else:
            improved = False
        if sink is not None:
            if sink.buffers is None:
                sink.prepare(state.state_dict())
            now = time.perf_counter()
            if mon.row_due(s, val_loss is not None, last):  # the row is built only when sent
                row = _metric_row(result, started, state.tokens_seen - start_tokens, now - iteration_mark)
                if val_loss is not None:
                    row.update(val_loss=val_loss, val_perplexity=math.exp(min(val_loss, 50.0)))
                sink.send(row)
            iteration_mark = now
            if mon.checkpoint_due(s, improved, last):
                sink.save(s, state.state_dict(), val_loss)
            if mon.plots_due(s, last):
                weights = state.model.state_dict()
                copy = snapshot(weights)
                CopiesLanded(weights).synchronize()
                actor.visualize.remote(sink.attempt, s, to_wire(copy))
        if val_loss is not None and config["report"]:
            ray.train.report({"step": s, "val_loss": val_loss, "best_val_loss": state.early_stopping.best})
    if last_val is None and error is None:  # restored a finished state: the driver died before results.json
        last_val = evaluate(state, val)
    _finish(state, sink, dataset, error, last_val, time.perf_counter() - started, start_tokens)


def _finish(state: TrainState, sink: _Sink | None, dataset: TokenDataset, error: str | None,
            val_loss: float | None, seconds: float, start_tokens: int) -> None:
    if sink is None:
        return
    sink.drain()
    es = state.early_stopping
    final: dict[str, Any] = {
        "total_steps": state.step, "best_val_loss": es.best if math.isfinite(es.best) else None,
        "best_step": es.best_step, "tokens_seen": state.tokens_seen, "total_time_seconds": seconds,
        "tokens_per_second": (state.tokens_seen - start_tokens) / max(seconds, 1e-9),
        "num_parameters": sum(p.numel() for p in state.model.parameters()),
        "early_stopped": es.should_stop, "torch_threads": torch.get_num_threads(),
        "peak_memory_mb": _peak_memory_mb(state.device),
    }
    if error is not None:
        ray.get(sink.actor.finish.remote("failed", final, None, error))
        return
    final["val_loss"] = val_loss
    final["perplexity"] = math.exp(min(val_loss, 50.0)) if val_loss is not None else None
    samples = [_sample(state, dataset)]
    ray.get(sink.actor.finish.remote("completed", final, samples, None))


def _sample(state: TrainState, dataset: TokenDataset) -> str:
    tok = dataset.tokenizer
    idx = torch.tensor([tok.encode(GENERATION_PROMPT)], dtype=torch.long, device=state.device)
    gen = torch.Generator(device=state.device).manual_seed(state.spec.train.seed)
    out = state.model.generate(idx, max_new_tokens=100, temperature=0.8, generator=gen)
    return tok.decode(out[0].tolist())
