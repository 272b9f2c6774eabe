"""Training loop of the tiny SDAR block-diffusion model.

AdamW (betas 0.9/0.95, weight decay on matrices only), linear warm-up then cosine decay to 10% of
the peak rate, gradient clipping at 1.0, bf16 autocast on CUDA (fp32 master weights), fp32 on CPU.

Determinism: initial weights, every batch and every noise draw come from CPU generators seeded by
``(seed, step)``, so a run is fixed by its seed and step count on any device (CUDA kernels may still
round differently from run to run). ``steps=None`` ("auto") picks the step count from the measured
speed during warm-up, where the learning rate does not yet depend on the total: the run is then
identical to one started with that count, which the log records for reproduction.

``max_minutes`` is a safety cap: training stops early by wall clock (``stopped_by_time_cap`` in the
log) rather than overrun the GPU command's limit.
"""
import math
import time
from dataclasses import asdict, dataclass, field

import torch

from .data import SEQ_LEN, TextCorpus, TrainingData
from .model import TinySDAR
from .objective import DEFAULT_EPS, block_diffusion_mask, diffusion_loss, sample_noise
from .sizes import ModelShape
from .tokenizer import MASK_ID

AUTO_CALIBRATE = (20, 60)  # steps timed to plan an "auto" run (both inside the warm-up)
AUTO_ROUND = 100
AUTO_BUDGET_SHARE = 0.97  # margin for log syncs and speed drift: the time cap should not cut the schedule


@dataclass
class TrainConfig:
    shape: ModelShape
    steps: int | None  # None: plan from measured speed ("auto")
    batch_size: int
    lr: float
    seed: int = 0
    seq_len: int = SEQ_LEN
    block_length: int = 32
    task_fraction: float = 0.5
    eps: float = DEFAULT_EPS
    warmup_steps: int = 200
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    max_minutes: float = 6.5
    log_every: int = 50
    compile: bool = False


@dataclass
class TrainLog:
    config: dict
    device: str
    planned_steps: int = 0
    steps_done: int = 0
    stopped_by_time_cap: bool = False
    train_seconds: float = 0.0
    curve: list[dict] = field(default_factory=list)  # one entry per log interval

    def summary(self) -> dict:
        tail = self.curve[-max(1, len(self.curve) // 10):]
        return {
            'steps_done': self.steps_done,
            'planned_steps': self.planned_steps,
            'stopped_by_time_cap': self.stopped_by_time_cap,
            'train_seconds': round(self.train_seconds, 1),
            'first_loss': self.curve[0]['loss'] if self.curve else None,
            'final_loss': sum(e['loss'] for e in tail) / len(tail) if tail else None,
            'final_masked_ce': sum(e['masked_ce'] for e in tail) / len(tail) if tail else None,
        }


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Warm-up (independent of ``total``), then cosine to ``min_lr_ratio * lr`` at ``total``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def plan_steps(seconds_per_step: float, elapsed: float, done: int, budget_seconds: float, warmup: int) -> int:
    """Largest multiple of ``AUTO_ROUND`` steps that fits the budget (at least past the warm-up)."""
    fit = done + int(max(0.0, AUTO_BUDGET_SHARE * budget_seconds - elapsed) / seconds_per_step)
    return max(warmup + AUTO_ROUND, fit // AUTO_ROUND * AUTO_ROUND)


def _optimizer(model: TinySDAR, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{'params': decay, 'weight_decay': cfg.weight_decay}, {'params': no_decay, 'weight_decay': 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == 'cuda')


def build_model(cfg: TrainConfig, device: torch.device) -> TinySDAR:
    model = TinySDAR(cfg.shape)
    model.init_weights(torch.Generator().manual_seed(cfg.seed))
    return model.to(device)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    # pinned + non_blocking: a copy from pageable memory would wait for the GPU to drain, so the next
    # batch could not be prepared on the host while the current step runs
    return t.pin_memory().to(device, non_blocking=True) if device.type == 'cuda' else t


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def train(cfg: TrainConfig, corpus: TextCorpus, device: str | torch.device = 'cpu',
          log=print) -> tuple[TinySDAR, TrainLog]:
    device = torch.device(device)
    # an auto run equals a fixed-count run only if the count is chosen while the rate ignores it
    assert cfg.steps is not None or cfg.warmup_steps >= AUTO_CALIBRATE[1], 'auto steps need a longer warm-up'
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, device)
    forward_model = torch.compile(model) if cfg.compile else model
    optimizer = _optimizer(model, cfg, device)
    data = TrainingData(corpus, cfg.seed, cfg.seq_len, cfg.block_length, cfg.task_fraction)
    attn_mask = block_diffusion_mask(cfg.seq_len, cfg.block_length, device)
    autocast = torch.autocast('cuda', dtype=torch.bfloat16, enabled=device.type == 'cuda')
    record = TrainLog(config={k: v for k, v in asdict(cfg).items()}, device=str(device))
    total = cfg.steps if cfg.steps is not None else cfg.warmup_steps + AUTO_ROUND  # refined at calibration
    budget = cfg.max_minutes * 60.0

    start = time.perf_counter()
    calibrate_start = None
    sums = torch.zeros(2, device=device)  # loss, masked CE over the current log interval
    interval = 0
    step = 0
    while step < total:
        batch = data.batch(step, cfg.batch_size)
        noise = sample_noise(batch.trained, cfg.block_length, torch.Generator().manual_seed(cfg.seed * 7919 + step),
                             cfg.eps)
        ids, trained, noise.masked, noise.level = (_to_device(t, device) for t in
                                                   (batch.ids, batch.trained, noise.masked, noise.level))
        for group in optimizer.param_groups:
            group['lr'] = lr_at(step, total, cfg)
        with autocast:
            parts = diffusion_loss(forward_model, ids, trained, noise, MASK_ID, cfg.block_length, attn_mask)
        optimizer.zero_grad(set_to_none=True)
        parts.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        sums += torch.stack([parts.loss.detach(), parts.masked_ce.detach()])
        interval += 1
        step += 1

        if cfg.steps is None and step == AUTO_CALIBRATE[0]:
            _sync(device)
            calibrate_start = time.perf_counter()
        if cfg.steps is None and step == AUTO_CALIBRATE[1]:
            _sync(device)
            per_step = (time.perf_counter() - calibrate_start) / (AUTO_CALIBRATE[1] - AUTO_CALIBRATE[0])
            total = plan_steps(per_step, time.perf_counter() - start, step, budget, cfg.warmup_steps)
            log(f'auto steps: {per_step * 1000:.1f} ms/step -> {total} steps in {cfg.max_minutes} min')
        capped = time.perf_counter() - start > budget and step < total
        if step % cfg.log_every == 0 or step == total or capped:
            loss, masked_ce = (sums / interval).tolist()
            elapsed = time.perf_counter() - start
            record.curve.append({'step': step, 'loss': round(loss, 5), 'masked_ce': round(masked_ce, 5),
                                 'lr': lr_at(step - 1, total, cfg), 'seconds': round(elapsed, 2)})
            log(f'step {step}/{total} loss {loss:.4f} masked_ce {masked_ce:.4f} {elapsed:.0f}s '
                f'({elapsed / step * 1000:.0f} ms/step)')
            sums.zero_()
            interval = 0
        if capped:
            log(f'time cap of {cfg.max_minutes} min reached at step {step} of {total}')
            record.stopped_by_time_cap = True
            break
    _sync(device)
    record.planned_steps, record.steps_done = total, step
    record.train_seconds = time.perf_counter() - start
    model.eval()
    return model, record
