"""The one training loop: MAR fine-tuning, standard fine-tuning and MAE pretraining.

They differ only in the model (head or none, decoder or none), the mask strategy and
the loss weight: pretraining is reconstruction only (lambda = 1, no classifier),
standard training is ratio 0 with a linear head, MAR is cell running masking with the
bridging classifier and lambda * L_rec + L_cls.

The pieces: :func:`build_model`, the loader (:mod:`mar.engine.loader`), :class:`TrainStep`
(mask, mixup, autocast, accumulation with ``no_sync``, clipping), :class:`Checkpointer`
(checkpoints, ``best/`` and exact resume) and :func:`train`, the loop that strings them
together.
"""

from __future__ import annotations

import json
import math
import random
import resource
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from ..config import Config, save_config
from ..constants import IMAGENET_MEAN, IMAGENET_STD
from ..data.mixup import VideoMixup
from ..data.transforms import finish
from ..errors import ConfigError
from ..losses import LossTerms, mar_loss
from ..masking import MaskingStrategy
from ..models.io import load_weights
from ..runtime.device import amp_dtype, make_deterministic, to_device
from ..runtime.distributed import (
    DistInfo,
    all_gather_objects,
    barrier,
    init_distributed,
    mean_across_ranks,
    shutdown,
)
from .budget import REFERENCE_BATCH, plan
from .checkpoint import (
    best_metric,
    check_run_dir,
    latest_checkpoint,
    load_checkpoint,
    prepare_run_dir,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from .evaluate import class_names, eval_loader, print_summary, run_eval
from .loader import build_loader
from .optim import build_optimizer, set_lr
from .schedule import lr_at


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(cfg: Config, info: DistInfo):
    """The training model: a decoder whenever there is something to reconstruct."""
    model_cfg = cfg.model.model_copy()
    if cfg.train.task == "pretrain":
        model_cfg = model_cfg.model_copy(update={"head": "none", "decoder": True})
    elif cfg.train.rec_weight > 0 and cfg.masking.ratio > 0:
        model_cfg = model_cfg.model_copy(update={"decoder": True})
    model = model_cfg.build()
    if cfg.train.init:
        fresh = load_weights(model, cfg.train.init, allow_missing=("head.", "decoder."),
                             allow_unused=("decoder.",))
        if info.is_main and fresh:
            print(f"initialised from {cfg.train.init}; new: "
                  f"{sorted({k.split('.')[0] + '.' + k.split('.')[1] for k in fresh})}")
    model.encoder.grad_checkpointing = cfg.train.grad_checkpointing
    return model.to(info.device)


def wrap_ddp(model, info: DistInfo):
    """The model under DistributedDataParallel in a world of several processes (itself in
    a world of one), on this process's GPU. Its only buffers are fixed position tables,
    the same on every rank: nothing to broadcast each step."""
    if info.world_size == 1:
        return model
    return DistributedDataParallel(model, device_ids=[info.device.index]
                                   if info.device.type == "cuda" else None,
                                   broadcast_buffers=False)


class TrainStep:
    """Forward and backward of one micro-batch (the clips finished on the device:
    normalised and erased; mixup, a fresh training mask, autocast),
    and, every ``accum_steps`` micro-batches, the optimizer update (LR, unscale, clipping,
    step). Gradients of the micro-batches in between are not all-reduced (``no_sync``)."""

    def __init__(self, model, net, optimizer, scaler, masking: MaskingStrategy,
                 mask_generator: torch.Generator, mixup, *, rec_weight: float,
                 label_smoothing: float, accum_steps: int, clip_grad: float | None,
                 amp_dtype, info: DistInfo, pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD):
        self.model, self.net, self.optimizer, self.scaler = model, net, optimizer, scaler
        self.masking, self.mask_generator, self.mixup = masking, mask_generator, mixup
        self.rec_weight = rec_weight
        self.label_smoothing = 0.0 if mixup is not None else label_smoothing
        self.accum_steps, self.clip_grad, self.amp_dtype = accum_steps, clip_grad, amp_dtype
        self.info = info
        self.pixel_mean, self.pixel_std = pixel_mean, pixel_std
        self.micro = 0

    def forward_backward(self, batch: dict) -> tuple[LossTerms, bool]:
        """Accumulate this micro-batch's gradient; True when an update is due."""
        device = self.info.device
        video, target = to_device(batch["video"], device), to_device(batch["label"], device)
        # uint8 clips from the loader, normalised and erased here, on the training device
        video = finish(video, batch["erase"], self.pixel_mean, self.pixel_std)
        if self.mixup is not None:
            video, target = self.mixup(video, target)
        mask = to_device(self.masking(video.shape[0], self.model.grid, train=True,
                                      generator=self.mask_generator), device)
        self.micro += 1
        update = self.micro % self.accum_steps == 0
        sync = update or self.info.world_size == 1
        try:
            with (nullcontext() if sync else self.net.no_sync()), torch.autocast(
                    device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                loss = mar_loss(self.net(video, mask), target, self.rec_weight,
                                self.label_smoothing)
                self.scaler.scale(loss.total / self.accum_steps).backward()
        except RuntimeError as e:
            if "deterministic" not in str(e):
                raise
            raise ConfigError(f"train.deterministic: {str(e).split('. ')[0]} on "
                              f"{device.type}; set train.deterministic=false") from None
        return loss, update

    def update(self, lr: float) -> None:
        set_lr(self.optimizer, lr)
        if self.clip_grad is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)


class Checkpointer:
    """Writes ``checkpoint-<step>`` (with every rank's RNG and mask-generator state) and
    ``best/`` (:mod:`mar.engine.checkpoint` keeps the best score, in ``best/state.pt``),
    and restores all of it for ``--resume auto``."""

    def __init__(self, run_dir: Path, cfg: Config, info: DistInfo, model, optimizer, scaler,
                 mask_generator: torch.Generator):
        self.run_dir, self.cfg, self.info = run_dir, cfg, info
        self.model, self.optimizer, self.scaler = model, optimizer, scaler
        self.mask_generator = mask_generator

    def resume(self) -> int:
        """Restore the newest checkpoint, if any; returns its step (0 without one)."""
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            return 0
        state = load_checkpoint(ckpt, self.model, self.optimizer, self.scaler,
                                map_location=self.info.device)
        restore_rng(state["rngs"][self.info.rank])
        self.mask_generator.set_state(state["mask_generators"][self.info.rank])
        if self.info.is_main:
            print(f"resumed from {ckpt} at step {state['step']}")
        return state["step"]

    def save(self, step: int, epoch: int, metrics: dict) -> None:
        states = {"rngs": all_gather_objects(rng_state(), self.info),
                  "mask_generators": all_gather_objects(self.mask_generator.get_state(),
                                                        self.info)}
        if self.info.is_main:
            save_checkpoint(self.run_dir, step, self.model, self.optimizer, self.scaler,
                            epoch=epoch, sampler_epoch=epoch,
                            config=self.cfg.model_dump(mode="json"), metrics=metrics,
                            keep_last=self.cfg.train.keep_last,
                            best_metric=metrics.get("val_top1"), extra=states)

    @property
    def best(self) -> float | None:
        return best_metric(self.run_dir)


class Logger:
    """metrics.jsonl and TensorBoard events, written by the main process only."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, step: int, **values) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        for key, value in values.items():
            if isinstance(value, int | float) and key not in ("epoch",):
                self.writer.add_scalar(key, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def effective_batch(cfg: Config, world_size: int) -> int:
    """Clips per optimizer step: batch x accumulation x processes x repeats
    (:func:`mar.engine.budget.effective_batch`)."""
    return plan(cfg, world_size).effective_batch


def train(cfg: Config, out_dir: str | Path, *, resume: bool = False,
          overwrite: bool = False) -> dict:
    """Train as ``cfg`` says; returns the end-of-run summary (also in ``summary.json``)."""
    info = init_distributed(cfg.train.device)
    try:
        return _train(cfg, Path(out_dir), info, resume=resume, overwrite=overwrite)
    finally:
        shutdown()


def _train(cfg: Config, run_dir: Path, info: DistInfo, *, resume: bool,
           overwrite: bool) -> dict:
    tc, dc = cfg.train, cfg.data
    seed_everything(tc.seed * 1000 + info.rank)
    if tc.deterministic:
        make_deterministic(info.device)
    if info.is_main:
        check_run_dir(run_dir, resume=resume, overwrite=overwrite)
    start_time = time.perf_counter()

    # everything that can refuse the inputs (weights, lists, batch) before the run
    # directory is written: a failed start leaves nothing behind
    finetune = tc.task == "finetune"
    model = build_model(cfg, info)
    train_set = cfg.dataset("train")
    loader = build_loader(train_set, tc.batch_size, info, workers=dc.num_workers,
                          seed=tc.seed)
    # effective batch, LR, steps and lambda: mar.engine.budget (also what `mar recipe` shows)
    budget = plan(cfg, info.world_size, videos_per_process=loader.videos_per_process)
    steps_per_epoch = budget.steps_per_epoch
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_set)} training videos make no full batch of "
                         f"{tc.batch_size} x {tc.accum_steps} accumulation x "
                         f"{info.world_size} processes")
    val_loader = eval_loader(cfg, "val", info) if finetune and dc.has_split("val") else None
    if finetune and dc.has_split("test"):
        cfg.dataset("test")
    class_names(cfg)
    if info.is_main:
        prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
        save_config(cfg, run_dir / "config.yaml")
        print(f"resolved config (saved as {run_dir / 'config.yaml'}):\n"
              + (run_dir / "config.yaml").read_text())
    barrier(info)
    total_steps = budget.total_steps
    effective, lr = budget.effective_batch, budget.lr
    # fused AdamW on a GPU: one kernel per step, and fp16's inf check without a host sync
    optimizer = build_optimizer(model, lr, tc.weight_decay, tc.layer_decay, tc.betas,
                                policy=tc.layer_decay_policy,
                                fused=info.device.type == "cuda")
    scaler = torch.amp.GradScaler(info.device.type, enabled=tc.amp == "fp16")
    net = wrap_ddp(model, info)
    mixup = (VideoMixup(cfg.model.num_classes, dc.mixup, dc.cutmix, dc.mixup_prob,
                        dc.mixup_switch_prob, dc.label_smoothing)
             if finetune and (dc.mixup > 0 or dc.cutmix > 0) else None)
    mask_generator = torch.Generator().manual_seed(tc.seed * 1000 + info.rank)
    step_fn = TrainStep(model, net, optimizer, scaler, cfg.masking.build(), mask_generator,
                        mixup, rec_weight=budget.rec_weight,
                        label_smoothing=dc.label_smoothing, accum_steps=tc.accum_steps,
                        clip_grad=tc.clip_grad, amp_dtype=amp_dtype(tc.amp, info.device), info=info,
                        pixel_mean=cfg.model.pixel_mean, pixel_std=cfg.model.pixel_std)
    checkpointer = Checkpointer(run_dir, cfg, info, model, optimizer, scaler, mask_generator)
    step = checkpointer.resume() if resume else 0
    if info.is_main:
        print(f"effective batch {effective} (batch {tc.batch_size} x accumulation "
              f"{tc.accum_steps} x {info.world_size} processes x {dc.repeats} repeats); "
              f"lr {lr:.3g}" + (f" = {tc.base_lr:g} x {effective}/{REFERENCE_BATCH}"
                                if tc.lr_scaling else " (not scaled)") + f"; {total_steps} steps")
        if tc.num_gpus is not None and tc.num_gpus != info.world_size:
            print(f"note: this recipe is written for {tc.num_gpus} processes; with "
                  f"{info.world_size} the effective batch and the LR differ from it "
                  "(`mar recipe` shows both)")
    logger = Logger(run_dir, info.is_main)
    skipped = []
    warmup_steps = budget.warmup_steps
    stop = min(total_steps, tc.max_steps or total_steps)
    values = {"loss": float("nan")}

    model.train()
    while step < stop:
        epoch = step // steps_per_epoch
        loader.set_epoch(epoch, start=(step % steps_per_epoch) * tc.accum_steps
                         * tc.batch_size)
        bar = tqdm(total=steps_per_epoch, initial=step % steps_per_epoch,
                   desc=f"epoch {epoch + 1}/{tc.epochs}", disable=not info.is_main,
                   dynamic_ncols=True)
        tick, clips = time.perf_counter(), 0
        for batch in loader:
            skipped += batch["skipped"]
            loss, update = step_fn.forward_backward(batch)
            clips += batch["video"].shape[0]
            if not update:
                continue
            lr_now = lr_at(step, total_steps=total_steps, warmup_steps=warmup_steps,
                           base_lr=lr, min_lr=tc.min_lr, warmup_start_lr=tc.warmup_start_lr)
            step_fn.update(lr_now)
            step += 1
            log = step % tc.log_every == 0 or step == 1
            save = bool(tc.save_every and step % tc.save_every == 0 and step % steps_per_epoch)
            end = step >= stop or step % steps_per_epoch == 0
            if log or save or end:  # the losses reach the host here only: one sync
                values = read_losses(loss, step) | {"lr": lr_now}
                rate = clips * info.world_size / (time.perf_counter() - tick)
                bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr_now:.2e}",
                                clips_s=f"{rate:.1f}")
            bar.update(1)
            if log:
                logger.log(step, epoch=epoch, clips_per_s=rate, **values)
            if save:
                checkpointer.save(step, epoch, {"train_loss": values["loss"]})
            if end:
                break
        bar.close()
        metrics = {"train_loss": mean_across_ranks(values["loss"], info)}
        epoch_done = step % steps_per_epoch == 0
        if finetune and dc.has_split("val") and (
                step >= stop or (epoch_done and (epoch + 1) % tc.eval_every == 0)):
            result = run_eval(cfg, model, "val", info, loader=val_loader)  # workers persist
            metrics |= {"val_top1": result.video_top1, "val_top5": result.video_top5}
            model.train()
        logger.log(step, epoch=epoch, **metrics)
        checkpointer.save(step, epoch, metrics)

    summary = _summary(cfg, model, info, start_time, skipped, checkpointer.best)
    if dc.has_split("test") and finetune:
        result = run_eval(cfg, model, "test", info, out_dir=run_dir)
        summary |= {f"test_{k}": v for k, v in result.summary().items()}
    if info.is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        print_summary(summary)
    logger.close()
    return summary


def read_losses(loss: LossTerms, step: int) -> dict[str, float]:
    """The step's losses on the host, in one transfer (the training loop's only host
    sync, every ``log_every`` steps); a loss that is not finite stops the run."""
    total, cls, rec = torch.stack([loss.total.detach(), loss.cls.detach(),
                                   loss.rec.detach()]).float().tolist()
    if not math.isfinite(total):
        raise FloatingPointError(f"loss is {total} at step {step} (losses are read every "
                                 "train.log_every steps)")
    return {"loss": total, "loss_cls": cls, "loss_rec": rec}


def _summary(cfg: Config, model, info: DistInfo, start: float, skipped: list, best) -> dict:
    from ..flops import formula_flops

    mask = cfg.test_masking()(1, model.grid, train=False)
    views = cfg.data.test_clips * cfg.data.test_crops
    params = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("decoder."))
    if info.device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(info.device) / 2**30, "gpu"
    else:  # the process's peak resident memory (Linux reports KiB)
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "cpu_rss"
    return {"gflops_per_view": formula_flops(model, mask.num_visible) / 1e9,
            "views": views, "params_m": params / 1e6, f"peak_memory_{kind}_gib": peak,
            "wall_time_s": time.perf_counter() - start,
            "skipped_videos": len(skipped), "skipped_files": sorted(set(skipped))[:20],
            "best_val_top1": best}
