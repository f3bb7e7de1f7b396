"""The one training loop: MAR fine-tuning, standard fine-tuning and MAE pretraining.

They differ only in the model (head or none, decoder or none), the mask strategy and
the loss weight: pretraining is reconstruction only (lambda = 1, no classifier),
standard training is ratio 0 with a linear head, MAR is cell running masking with the
bridging classifier and lambda * L_rec + L_cls.
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
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import Config, save_config
from ..data import collate
from ..data.mixup import VideoMixup
from ..losses import mar_loss
from .checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    prepare_run_dir,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from .distributed import (
    DistInfo,
    ShardSampler,
    all_gather_objects,
    barrier,
    init_distributed,
    mean_across_ranks,
)
from .evaluate import evaluate
from .optim import build_optimizer, scaled_lr, set_lr
from .schedule import lr_at
from .weights import load_weights

AMP = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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


def train(cfg: Config, out_dir: str | Path, *, resume: bool = False,
          overwrite: bool = False) -> dict:
    """Train as ``cfg`` says; returns the end-of-run summary (also in ``summary.json``)."""
    info = init_distributed(cfg.train.device)
    tc, dc = cfg.train, cfg.data
    seed_everything(tc.seed * 1000 + info.rank)
    if tc.deterministic:
        torch.use_deterministic_algorithms(True)
    run_dir = Path(out_dir)
    if info.is_main:
        prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
        save_config(cfg, run_dir / "config.yaml")
        print(f"resolved config (saved as {run_dir / 'config.yaml'}):\n"
              + (run_dir / "config.yaml").read_text())
    barrier(info)
    start_time = time.perf_counter()

    model = build_model(cfg, info)
    mean, std = cfg.model.pixel_mean, cfg.model.pixel_std
    train_set = dc.dataset("train", mean=mean, std=std, seed=tc.seed)
    sampler = ShardSampler(len(train_set), info.rank, info.world_size, shuffle=True,
                           seed=tc.seed, batch_size=tc.batch_size)
    loader = DataLoader(train_set, tc.batch_size, sampler=sampler, num_workers=dc.num_workers,
                        collate_fn=collate, drop_last=True,
                        pin_memory=info.device.type == "cuda")
    micro_per_epoch = len(sampler) // tc.batch_size
    steps_per_epoch = micro_per_epoch // tc.accum_steps
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_set)} training videos make no full batch of "
                         f"{tc.batch_size} x {tc.accum_steps} accumulation x "
                         f"{info.world_size} processes")
    total_steps = tc.epochs * steps_per_epoch
    effective = tc.batch_size * tc.accum_steps * info.world_size * dc.repeats
    lr = scaled_lr(tc.base_lr, effective) if tc.lr_scaling else tc.base_lr
    optimizer = build_optimizer(model, lr, tc.weight_decay, tc.layer_decay, tc.betas,
                                policy=tc.layer_decay_policy)
    scaler = torch.amp.GradScaler(info.device.type, enabled=tc.amp == "fp16")
    net = (DistributedDataParallel(model, device_ids=[info.local_rank]
                                   if info.device.type == "cuda" else None)
           if info.world_size > 1 else model)
    finetune = tc.task == "finetune"
    mixup = (VideoMixup(cfg.model.num_classes, dc.mixup, dc.cutmix, dc.mixup_prob,
                        dc.mixup_switch_prob, dc.label_smoothing)
             if finetune and (dc.mixup > 0 or dc.cutmix > 0) else None)
    masking = cfg.masking.build()
    mask_generator = torch.Generator().manual_seed(tc.seed * 1000 + info.rank)
    rec_weight = 1.0 if not finetune else tc.rec_weight
    amp_dtype = AMP[tc.amp]

    step, best, values = 0, None, {"loss": float("nan")}
    if resume and (ckpt := latest_checkpoint(run_dir)) is not None:
        state = load_checkpoint(ckpt, model, optimizer, scaler, map_location=info.device)
        step = state["step"]
        best = state.get("best")
        restore_rng(state["rngs"][info.rank])
        mask_generator.set_state(state["mask_generators"][info.rank])
        if info.is_main:
            print(f"resumed from {ckpt} at step {step}")
    if info.is_main:
        print(f"effective batch {effective} (batch {tc.batch_size} x accumulation "
              f"{tc.accum_steps} x {info.world_size} processes x {dc.repeats} repeats); "
              f"lr {lr:.3g}" + (f" = {tc.base_lr:g} x {effective}/256" if tc.lr_scaling
                                else " (not scaled)") + f"; {total_steps} steps")
    logger = Logger(run_dir, info.is_main)
    skipped = []
    warmup_steps = round(tc.warmup_epochs * steps_per_epoch)

    def checkpoint(epoch: int, metrics: dict) -> None:
        nonlocal best
        states = _gather_states(mask_generator, info)
        if not info.is_main:
            return
        score = metrics.get("val_top1")
        if score is not None and (best is None or score > best):
            best = score
        save_checkpoint(run_dir, step, model, optimizer, scaler, epoch=epoch,
                        sampler_epoch=epoch, config=cfg.model_dump(mode="json"),
                        metrics={**metrics, "best": best}, keep_last=tc.keep_last,
                        best_metric=score, extra=states)

    model.train()
    done = step >= total_steps or (tc.max_steps is not None and step >= tc.max_steps)
    while not done:
        epoch = step // steps_per_epoch
        offset = (step % steps_per_epoch) * tc.accum_steps * tc.batch_size
        train_set.set_epoch(epoch)
        sampler.set_epoch(epoch, start=offset)
        bar = tqdm(total=steps_per_epoch, initial=step % steps_per_epoch,
                   desc=f"epoch {epoch + 1}/{tc.epochs}", disable=not info.is_main,
                   dynamic_ncols=True)
        tick, clips, micro = time.perf_counter(), 0, 0
        for batch in loader:
            video = batch["video"].to(info.device, non_blocking=True)
            target = batch["label"].to(info.device)
            skipped += batch["skipped"]
            if mixup is not None:
                video, target = mixup(video, target)
            mask = masking(video.shape[0], model.grid, train=True,
                           generator=mask_generator).to(info.device)
            micro += 1
            sync = micro % tc.accum_steps == 0
            ctx = net.no_sync() if (not sync and info.world_size > 1) else nullcontext()
            with ctx, torch.autocast(info.device.type, dtype=amp_dtype,
                                     enabled=amp_dtype is not None):
                loss = mar_loss(net(video, mask), target, rec_weight,
                                0.0 if mixup is not None else dc.label_smoothing)
                scaler.scale(loss.total / tc.accum_steps).backward()
            clips += video.shape[0]
            if not sync:
                continue
            lr_now = lr_at(step, total_steps=total_steps, warmup_steps=warmup_steps,
                           base_lr=lr, min_lr=tc.min_lr, warmup_start_lr=tc.warmup_start_lr)
            set_lr(optimizer, lr_now)
            if tc.clip_grad is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            values = {"loss": loss.total.item(), "loss_cls": loss.cls.item(),
                      "loss_rec": loss.rec.item(), "lr": lr_now}
            if not math.isfinite(values["loss"]):
                raise FloatingPointError(f"loss is {values['loss']} at step {step}")
            rate = clips * info.world_size / (time.perf_counter() - tick)
            bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{lr_now:.2e}",
                            clips_s=f"{rate:.1f}")
            bar.update(1)
            if step % tc.log_every == 0 or step == 1:
                logger.log(step, epoch=epoch, clips_per_s=rate, **values)
            if tc.save_every and step % tc.save_every == 0:
                checkpoint(epoch, {"train_loss": values["loss"]})
            if step >= total_steps or (tc.max_steps is not None and step >= tc.max_steps):
                done = True
                break
            if step % steps_per_epoch == 0:
                break
        bar.close()
        metrics = {"train_loss": mean_across_ranks(values["loss"], info)}
        epoch_done = step % steps_per_epoch == 0
        if finetune and dc.val_list and (
                done or (epoch_done and (epoch + 1) % tc.eval_every == 0)):
            result = run_eval(cfg, model, "val", info)
            metrics |= {"val_top1": result.video_top1, "val_top5": result.video_top5}
            model.train()
        logger.log(step, epoch=epoch, **metrics)
        checkpoint(epoch, metrics)

    summary = _summary(cfg, model, info, start_time, skipped, best)
    if dc.test_list and finetune:
        result = run_eval(cfg, model, "test", info, out_dir=run_dir)
        summary |= {f"test_{k}": v for k, v in result.summary().items()}
    if info.is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        print_summary(summary)
    logger.close()
    return summary


def _gather_states(mask_generator, info: DistInfo) -> dict:
    """Every process's RNG and mask-generator state, for an exact resume."""
    return {"rngs": all_gather_objects(rng_state(), info),
            "mask_generators": all_gather_objects(mask_generator.get_state(), info)}


def run_eval(cfg: Config, model, split: str, info: DistInfo, out_dir: Path | None = None):
    """Evaluate ``model`` on the ``val`` (one view) or ``test`` (multi-view) split."""
    from .evaluate import save_confusion

    data = cfg.data.dataset(split, mean=cfg.model.pixel_mean, std=cfg.model.pixel_std,
                            seed=cfg.train.seed)
    sampler = ShardSampler(len(data), info.rank, info.world_size, shuffle=False)
    loader = DataLoader(data, cfg.eval.batch_size, sampler=sampler, collate_fn=collate,
                        num_workers=cfg.data.num_workers)
    bar = tqdm(total=len(sampler), desc=f"{split} views", disable=not info.is_main,
               dynamic_ncols=True, leave=False)
    result = evaluate(model, loader, cfg.test_masking(), info, cfg.model.num_classes,
                      cfg.eval.merge, AMP[cfg.train.amp], progress=bar.update)
    bar.close()
    if out_dir is not None and info.is_main:
        names = None
        if cfg.data.class_names:
            from ..data import read_class_names

            names = read_class_names(cfg.data.class_names)
        save_confusion(result, out_dir, names)
        per_class = out_dir / "per_class.json"
        per_class.write_text(json.dumps(result.per_class))
    return result


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


def print_summary(summary: dict) -> None:
    print("\nrun summary")
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        print(f"  {key:>22}: {value}")
