"""What every command shares: option groups, the override syntax and the exit codes.

Exit codes, the same for every command: 0 ok; 1 some inputs failed (a video that cannot
be decoded, a conversion that does not fit), the rest done; 2 a usage or config error
(a bad option, a missing file, a device this machine lacks), nothing done.

Overrides: ``--set KEY=VALUE`` (repeatable) on every command that reads a config; bare
``key=value`` items after a command's positional arguments are the same (an alias).

Nothing here imports torch: ``mar --help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError

OK, INPUTS_FAILED, USAGE = 0, 1, 2
EXIT_CODES = ("exit codes: 0 ok; 1 some inputs failed (the rest done); 2 usage or config "
              "error (nothing done)")
DEVICES = "auto|cpu|cuda[:N]"
AMP_CHOICES = ("none", "bf16", "fp16")
REDUCTIONS = ("random", "tome", "rlt", "rlt+mar")
RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")  # mar.inference.runtime.CHOICES


def add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, repeatable, e.g. --set data.test_clips=2 (a bare "
                   "KEY=VALUE item is the same)")


def add_device(p: argparse.ArgumentParser, device_default: str | None = "auto",
               amp_default: str | None = "none") -> None:
    """``--device`` and ``--amp``, honoured through :mod:`mar.runtime.device`; a default
    of None leaves the config's ``train.device`` / ``train.amp``."""
    where = {"auto": "auto, the GPU if there is one",
             None: "the config's train.device"}.get(device_default, device_default)
    p.add_argument("--device", default=device_default, metavar=DEVICES,
                   help=f"where the model runs (default: {where}); a device this machine "
                   "lacks is an error")
    p.add_argument("--amp", choices=AMP_CHOICES, default=amp_default,
                   help="autocast dtype of the model's compute (default: "
                   + (amp_default or "the config's train.amp") + ")")


def add_model(p: argparse.ArgumentParser, *, required: bool = True,
              amp_default: str | None = "none") -> None:
    """The options of a command that runs a trained model: ``--checkpoint``,
    ``--config``, ``--set``, ``--device``, ``--amp``."""
    p.add_argument("--checkpoint", required=required, metavar="PATH",
                   help="a run (its best/, else its newest checkpoint), a checkpoint or model "
                   "directory, or a .safetensors file")
    p.add_argument("--config", help="the run's config (default: the one beside the weights)")
    add_set(p)
    add_device(p, amp_default=amp_default)


def add_runtime(p: argparse.ArgumentParser) -> None:
    """``--runtime`` and ``--int8`` (:mod:`mar.inference.runtime`)."""
    p.add_argument("--runtime", choices=RUNTIMES, default="auto",
                   help="what runs the model: torch (any device), or on the CPU the masked "
                   "graph exported to ONNX Runtime or OpenVINO, cached beside the weights; "
                   "auto: the fastest of those installed, measured once per machine and "
                   "model shape (torch on a GPU) (default: %(default)s; docs/deploy.md)")
    p.add_argument("--int8", action="store_true",
                   help="int8 weights per channel, on the CPU: ONNX Runtime (activations "
                   "quantised at run time), OpenVINO (NNCF weight compression) or, on CPUs "
                   "with VNNI or AMX, torch (torchao); with auto, the fastest of those")


def add_mask_ratio(p: argparse.ArgumentParser | argparse._ActionsContainer) -> None:
    p.add_argument("--mask-ratio", type=float, metavar="R",
                   help="test with cell running masking at this ratio (default: the "
                   "config's test-time masking)")


def add_reduce(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reduce", choices=REDUCTIONS,
                   help="training-free token reduction at test time, instead of the test "
                   "mask (docs/token_reduction.md)")
    p.add_argument("--reduce-ratio", type=float, default=0.5,
                   help="random: fraction of tokens dropped; rlt+mar: the cell running "
                   "ratio (default: %(default)s)")
    p.add_argument("--tome-r", type=int, default=8,
                   help="tome: tokens merged in each encoder block (default: %(default)s)")
    p.add_argument("--rlt-threshold", type=float, default=0.1,
                   help="rlt: drop a tubelet whose mean absolute change from the previous "
                   "one, in normalised pixels, is below this (default: %(default)s)")


def add_views_per_call(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=positive_int, metavar="N",
                   help="views per model call (default: 4 on a CPU, 16 on a GPU)")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def split_items(items: list[str]) -> tuple[list[str], list[str]]:
    """Positional items: ``key=value`` overrides and the rest (files, folders)."""
    return [i for i in items if "=" not in i], [i for i in items if "=" in i]


def config_and_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """The config file (``--config`` or the one positional item without '=') and every
    override (``key=value`` items, then ``--set``)."""
    files, overrides = split_items(getattr(args, "items", []) or [])
    config = getattr(args, "config", None)
    if config is not None:
        files = [config, *files]
    if len(files) > 1:
        raise ConfigError(f"expected at most one config file, got {', '.join(files)}")
    return (files[0] if files else None), [*overrides, *getattr(args, "set", [])]


def load_for_command(args: argparse.Namespace, views_per_call=None, info=None):
    """The model of ``--checkpoint`` on ``--device``, its config with the overrides, and
    the test-time masking (``--mask-ratio``, else the config's); on ``--runtime``, whose
    ``auto`` is measured at ``views_per_call(cfg)`` views per call (default:
    ``--batch-size``, else the device's default). Under torchrun (``info``) the main
    process chooses and the others run its choice."""
    from ..inference.load import eval_masking, load_model
    from ..inference.runtime import runtime_device, runtime_model

    config, overrides = config_and_overrides(args)
    runtime, int8 = getattr(args, "runtime", "torch"), getattr(args, "int8", False)
    if getattr(args, "reduce", None):
        if runtime not in ("torch", "auto") or int8:
            raise ConfigError(f"--reduce runs on --runtime torch in float32, not "
                              f"{'--int8' if int8 else runtime}")
        runtime = "torch"                          # the reduction is a torch module
    model, cfg = load_model(args.checkpoint, config, overrides,
                            device=runtime_device(args.device, runtime, int8))
    masking = eval_masking(cfg, getattr(args, "mask_ratio", None))
    if runtime == "torch" and not int8:
        return model, cfg, masking
    amp = args.amp
    if runtime == "auto" and amp is None:
        amp = cfg.train.amp                        # mar eval's default: the config's
    per_call = views_per_call(cfg) if views_per_call else getattr(args, "batch_size", None)
    if runtime == "auto" and info is not None and info.world_size > 1:
        from ..inference.runtime import choose_runtime
        from ..runtime.distributed import all_gather_objects

        mine = None
        if info.is_main:
            try:
                choice = choose_runtime(model, masking, args.checkpoint, int8=int8, amp=amp,
                                        views_per_call=per_call)
                print(choice.line(), file=sys.stderr)
                mine = choice.runtime
            except ConfigError as e:              # every process stops, not only this one
                mine = e
        runtime = all_gather_objects(mine, info)[0]
        if isinstance(runtime, ConfigError):
            raise runtime
    model = runtime_model(model, masking, args.checkpoint, runtime, int8=int8, amp=amp,
                          views_per_call=per_call)
    if args.runtime != "auto":
        print(model.describe(), file=sys.stderr)
    return model, cfg, masking


def reduced(model, args: argparse.Namespace):
    """The model wrapped in ``--reduce``'s token reduction, and the masking to run it with
    (none: the reduction chooses the tokens)."""
    from ..masking import make_masking
    from ..models.token_reduction import TokenReduction

    reducer = TokenReduction(model, args.reduce, ratio=args.reduce_ratio, tome_r=args.tome_r,
                             rlt_threshold=args.rlt_threshold).eval()
    return reducer, make_masking("none")
