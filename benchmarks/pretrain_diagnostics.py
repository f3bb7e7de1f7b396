"""Why pretraining does not help on the synthetic benchmark (docs/results.md, Table IX(b)).

Needs the study's cache (``benchmarks/study.py --tables IXb ... --pretrain-set
model.init=trunc_normal model.norm_target=true --out study``: the pretraining measured
there, std-0.02 init and normalised pixels, which this script also uses) and prints:
1. the reconstruction loss of the cached `mar pretrain` run (first and last 300 steps);
2. short pretraining probes with other masks and targets (first and last epoch's loss);
3. the encoder before and after pretraining: attention entropy per block and how much the
   pooled features vary across clips;
4. a control: the Table V bridging setting fine-tuned from an untrained `mar pretrain`
   checkpoint (one step at lr 1e-12), to compare with training from scratch.

    python benchmarks/pretrain_diagnostics.py --out study --seed 0
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from safetensors.torch import load_file
from study import pretrain_config, run_one, suffix, table_v

from mar.demo import DemoConfig
from mar.engine.trainer import train
from mar.masking import make_masking
from mar.models.layers import Attention


def losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").open()) if "loss" in r]


@torch.no_grad()
def encoder_stats(model, video) -> tuple[list[float], float]:
    """Mean attention entropy per block, and the std of pooled features across clips."""
    entropies = []

    def hook(mod, inp, out):
        q, k, _ = mod.qkv_heads(inp[0])
        p = (q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5).softmax(-1)
        entropies.append(-(p * p.clamp_min(1e-12).log()).sum(-1).mean().item())

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, Attention)]
    model.eval()
    mask = make_masking("none", 0.0)(video.shape[0], model.grid, train=False)
    tokens = model.forward_features(video, mask)
    for h in hooks:
        h.remove()
    return entropies, tokens.mean(1).std(0).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="study")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-epochs", type=int, default=100)
    parser.add_argument("--probe-epochs", type=int, default=15)
    args = parser.parse_args()
    out, seed = Path(args.out), args.seed
    demo = DemoConfig(out=str(out), epochs=30, num_frames=16, patch_size=16,
                      norm_target=True)  # as measured
    measured = {"model.init": "trunc_normal", "model.norm_target": "true"}
    data = out / "data"
    work = out / "diagnostics"
    lines = []

    run = out / "pretrain" / f"seed{seed}-epochs{args.pretrain_epochs}{suffix(measured)}"
    loss = losses(run)  # logged every 10 steps
    lines.append(f"1. cached pretraining (tube 90 %, normalised pixels): loss "
                 f"{statistics.mean(loss[:30]):.4f} (first 300 steps) -> "
                 f"{statistics.mean(loss[-30:]):.4f} (last 300 steps); 1.0 = predicting 0")

    lines.append(f"2. probes, {args.probe_epochs} epochs (mean loss of the first -> last epoch):")
    for name, mask, ratio, norm in (("tube 75 %, normalised", "tube", 0.75, True),
                                    ("random 90 %, normalised", "random", 0.9, True),
                                    ("tube 90 %, raw pixels", "tube", 0.9, False)):
        cfg = pretrain_config(demo, data, **{**measured,
                                             "masking.name": mask, "masking.ratio": ratio,
                                             "model.norm_target": norm, "train.seed": seed,
                                             "train.epochs": args.probe_epochs})
        train(cfg, work / "probe", overwrite=True)
        loss = losses(work / "probe")
        per_epoch = len(loss) // args.probe_epochs
        lines.append(f"   {name}: {statistics.mean(loss[:per_epoch]):.4f} -> "
                     f"{statistics.mean(loss[-per_epoch:]):.4f}")

    cfg = pretrain_config(demo, data, **{**measured, "train.seed": seed, "train.epochs": 1,
                                         "train.max_steps": 1, "train.base_lr": 1e-12,
                                         "train.min_lr": 0.0})
    train(cfg, work / "untrained", overwrite=True)
    untrained = sorted((work / "untrained").glob("checkpoint-*"))[-1]
    pretrained = sorted(run.glob("checkpoint-*"))[-1]

    data_set = cfg.dataset("val")
    video = torch.stack([data_set[i]["video"] for i in range(0, len(data_set), 9)])
    lines.append("3. encoder (attention entropy per block; uniform is ln 128 = 4.85; "
                 "std of pooled features across clips):")
    for name, ckpt in (("untrained", untrained), ("pretrained", pretrained)):
        model = cfg.model.model_copy(update={"head": "none", "decoder": True}).build()
        model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
        ent, spread = encoder_stats(model, video)
        lines.append(f"   {name}: entropy {' / '.join(f'{e:.2f}' for e in ent)}; "
                     f"feature std {spread:.3f}")

    result = run_one(demo, data, table_v("bridging", 0.0), seed, work, str(untrained))
    lines.append(f"4. control: bridging, 0 %, fine-tuned from the untrained checkpoint: "
                 f"{result['top1']['0.0']:.1f} % (tested with all tokens)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
