"""Debug recorder of DLLM unmasking steps, for equivalence checks between engine runs and the reference.

Activated by ``LMDEPLOY_FOCUS_RECORD_STEPS=<dir>`` when the engine builds its model-agent strategy (a debug hook
the development package registers with the runtime, ``lmdeploy_focus.debug_hooks``, by entry point):
the strategy's ``post_sampling`` (where upstream's unmasker runs) is wrapped on the instance, so
it works for upstream's ``DLLMModelAgentStrategy`` and for our delayed-cache strategy alike.

Every real step (prefill and decode; dummy forwards skipped) is saved as compact CPU data per
block row ``(sequence, position)``: input ids and mask, the top-k logits and their ids, the logits
at a fixed set of probe vocab ids (the same ids every step and every run, so two runs can be
compared row by row), the confidence the unmasker sees (softmax of the sampled token, computed in
the logits' own dtype, as upstream does), the sampled and the unmasked output, and the processed
set when delayed cache is on. A row's sequence is identified by its first KV page, which is
stable for the life of a sequence.

Files: ``meta-<pid>.json`` (probe ids, unmasking config) and ``steps-<pid>-<chunk>.pt`` (a list of
step dicts each). Overhead is irrelevant: this is a debug mode (one host sync per step).
"""
import atexit
import json
import os
from pathlib import Path

import torch

RECORD_ENV = 'LMDEPLOY_FOCUS_RECORD_STEPS'
CHUNK_ENV = 'LMDEPLOY_FOCUS_RECORD_CHUNK'
TOPK = 4  # top-2 decides argmax flips; a few more make the gap to the other run's token exact more often
NUM_PROBES = 64
PROBE_SEED = 0

# Strong references: a recorder must outlive its engine, whose teardown would otherwise drop the
# last unwritten chunk.
_live_recorders: list['StepRecorder'] = []


def probe_ids(vocab_size: int, num_probes: int = NUM_PROBES, seed: int = PROBE_SEED) -> torch.Tensor:
    """Seeded, sorted vocab ids whose logits are recorded every step (the same in every run)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(vocab_size, generator=generator)[:min(num_probes, vocab_size)].sort().values


@torch.inference_mode()
def summarize_logits(logits: torch.Tensor, candidates: torch.Tensor, probes: torch.Tensor,
                     topk: int = TOPK) -> dict:
    """Compact per-row view of ``logits [N, V]`` (values fp32, on the CPU).

    ``confidence`` is the softmax probability of ``candidates`` computed in the logits' dtype, i.e.
    the score upstream's low-confidence unmasking ranks (bf16 logits give bf16 scores).
    """
    values, ids = logits.topk(min(topk, logits.size(-1)), dim=-1)
    confidence = logits.softmax(dim=-1).gather(-1, candidates.long().unsqueeze(-1)).squeeze(-1)
    return dict(topk_values=values.float().cpu(),
                topk_ids=ids.cpu(),
                probe_logits=logits.index_select(-1, probes.to(logits.device)).float().cpu(),
                confidence=confidence.float().cpu())


def _block_rows(flat: torch.Tensor, seq_length: torch.Tensor, block_length: int) -> torch.Tensor:
    """``[B, L]``: the last block of every sequence in a flat per-token tensor (decode: all of it)."""
    batch_size = seq_length.numel()
    if flat.numel() == batch_size * block_length:
        return flat.reshape(batch_size, block_length)
    ends = seq_length.to(flat.device).long().cumsum(0)
    index = ends[:, None] - block_length + torch.arange(block_length, device=flat.device)[None, :]
    return flat[index]


def _strategy_name(strategy) -> str | None:
    """'low_confidence_static' etc. (upstream's ``UnmaskingStrategy`` enum, or None)."""
    return None if strategy is None else getattr(strategy, 'name', str(strategy)).lower()


def _processed_mask(strategy):
    """bool [B, L] of the delayed-cache step in flight (read before the runtime ends it), else None."""
    step = getattr(getattr(strategy, 'runtime', None), 'step', None)
    return None if step is None else step.fresh.clone()


class StepRecorder:
    """Wraps one agent strategy's ``post_sampling`` and writes its steps to ``directory``."""

    def __init__(self, directory: str | os.PathLike, chunk_steps: int | None = None):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.chunk_steps = chunk_steps or int(os.environ.get(CHUNK_ENV, '8'))
        self.prefix = f'{os.getpid()}'
        self.buffer: list[dict] = []
        self.num_steps = 0
        self.num_chunks = 0
        self.probes: torch.Tensor | None = None
        self.meta: dict = {}
        _live_recorders.append(self)

    def attach(self, strategy):
        inner = strategy.post_sampling
        block_length = strategy.block_size

        def post_sampling(inputs, logits, next_token_ids, extra_inputs):
            if getattr(inputs, 'is_dummy', False):
                return inner(inputs, logits, next_token_ids, extra_inputs)
            before = self._before(strategy, block_length, inputs, logits, next_token_ids, extra_inputs)
            next_token_ids, extra_inputs = inner(inputs, logits, next_token_ids, extra_inputs)
            self._after(before, block_length, next_token_ids, extra_inputs)
            return next_token_ids, extra_inputs

        strategy.post_sampling = post_sampling
        strategy.step_recorder = self
        strategy.dense_sampling = True  # a delayed-cache step samples B*L rows: the recorder reads them all
        config = strategy.unmasking_processor.dllm_config
        self.meta = dict(strategy_class=f'{type(strategy).__module__}.{type(strategy).__name__}',
                         block_length=block_length,
                         mask_token_id=getattr(strategy, 'dllm_mask_token', None),
                         unmasking_strategy=_strategy_name(config.unmasking_strategy),
                         denoising_steps=config.denoising_steps,
                         confidence_threshold=config.confidence_threshold,
                         topk=TOPK)
        return strategy

    @torch.inference_mode()
    def _before(self, strategy, block_length, inputs, logits, next_token_ids, extra_inputs) -> dict:
        # Everything the wrapped call may change in place (upstream's unmasker writes into the mask).
        if self.probes is None:
            self.probes = probe_ids(logits.size(-1))
            self._write_meta(logits)
        seq_length = inputs.seq_length
        batch_size = seq_length.numel()
        flat_ids = inputs.input_ids.flatten()
        record = dict(step=self.num_steps,
                      kind='decode' if inputs.is_decoding else 'prefill',
                      batch_size=batch_size,
                      logits_dtype=str(logits.dtype).replace('torch.', ''),
                      seq_keys=inputs.block_offsets[:, 0].long().cpu(),
                      history_lengths=inputs.history_lengths.long().cpu(),
                      seq_length=seq_length.long().cpu(),
                      input_ids=_block_rows(flat_ids, seq_length, block_length).cpu(),
                      input_mask=extra_inputs.dllm_mask.reshape(batch_size, block_length).cpu().clone(),
                      candidates=next_token_ids.reshape(batch_size, block_length).cpu().clone(),
                      processed=None,
                      prompt_ids=None)
        processed = _processed_mask(strategy)
        if processed is not None:
            record['processed'] = processed.cpu()
        if not inputs.is_decoding:  # the whole (padded) prompt of every row, to match sequences across runs
            ids = flat_ids.cpu()
            ends = seq_length.long().cumsum(0).tolist()
            record['prompt_ids'] = [ids[end - n:end].tolist() for end, n in zip(ends, seq_length.tolist())]
        summary = summarize_logits(logits, next_token_ids, self.probes)
        record.update({k: v.reshape(batch_size, block_length, *v.shape[1:]) for k, v in summary.items()})
        return record

    def _after(self, record: dict, block_length: int, next_token_ids, extra_inputs) -> None:
        batch_size = record['batch_size']
        record['next_token_ids'] = next_token_ids.reshape(batch_size, block_length).cpu().clone()
        record['next_mask'] = extra_inputs.dllm_mask.reshape(batch_size, block_length).cpu().clone()
        self.buffer.append(record)
        self.num_steps += 1
        if len(self.buffer) >= self.chunk_steps:
            self.flush()

    def _write_meta(self, logits) -> None:
        self.meta.update(vocab_size=logits.size(-1), probe_ids=self.probes.tolist(), pid=os.getpid())
        (self.directory / f'meta-{self.prefix}.json').write_text(json.dumps(self.meta, indent=1))

    def flush(self) -> None:
        if not self.buffer:
            return
        path = self.directory / f'steps-{self.prefix}-{self.num_chunks:05d}.pt'
        torch.save(self.buffer, path)
        self.buffer = []
        self.num_chunks += 1


def maybe_record_steps(strategy):
    """Attach a :class:`StepRecorder` when ``LMDEPLOY_FOCUS_RECORD_STEPS`` names a directory."""
    directory = os.environ.get(RECORD_ENV, '')
    if directory:
        StepRecorder(directory).attach(strategy)
    return strategy


def flush_all(release: bool = False) -> None:
    """Write the pending steps of every recorder of this process (call after a run ends);
    ``release``: also forget them, so the engine's strategies can be freed."""
    for recorder in _live_recorders:
        recorder.flush()
    if release:
        _live_recorders.clear()


atexit.register(flush_all)  # steps of the last chunk survive a process that just exits


def load_meta(directory: str | os.PathLike) -> dict:
    """The recording's meta data (one recorder per directory expected; the first one if several)."""
    paths = sorted(Path(directory).glob('meta-*.json'))
    if not paths:
        raise FileNotFoundError(f'no meta-*.json in {directory}: nothing was recorded')
    return json.loads(paths[0].read_text())


def load_steps(directory: str | os.PathLike) -> list[dict]:
    """Every recorded step of ``directory`` in recording order."""

    def order(path):
        _, pid, chunk = path.stem.split('-')
        return int(pid), int(chunk)

    steps = []
    for path in sorted(Path(directory).glob('steps-*.pt'), key=order):
        steps.extend(torch.load(path, weights_only=True))
    return steps
