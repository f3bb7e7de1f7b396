"""Weight conversion: each format's layout, built by hand from its documented key names,
converts strictly and reproduces the outputs of the model the weights came from."""

import argparse
import json
import os
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from transformers import (
    VideoMAEConfig,
    VideoMAEForPreTraining,
    VideoMAEForVideoClassification,
    VideoMAEModel,
)

from mar import create_model, make_masking
from mar.cli.convert import add_parser
from mar.config import ModelConfig
from mar.convert import (
    ConversionError,
    ModelFileError,
    convert_checkpoint,
    load_model_dir,
    read_checkpoint,
    save_model,
)
from mar.convert.architecture import infer_architecture, mlp_ratio_for
from mar.convert.formats import Hints, get_format
from mar.convert.rules import apply_rules
from mar.models import IMAGENET_MEAN, IMAGENET_STD, sinusoid_table
from mar.models.io import load_weights

TINY = dict(num_frames=8, img_size=32, patch_size=8)  # grid (4, 4, 4), 64 tokens
CLIP = dict(num_frames=8, img_size=32)
VIDEO = torch.randn(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(0))
MASK = make_masking("cell_running", 0.5)(2, (4, 4, 4), train=False)


def _perturb(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial biases, norms and tokens, so that a misplaced tensor shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _tiny(**kw):
    model = create_model("vit_nano", **TINY, **kw)
    _perturb(model)
    return model.eval()


def _videomae_pretrain(model) -> dict:
    """VideoMAE pretraining names: encoder.* and decoder.blocks/norm/head are ours;
    encoder_to_decoder and mask_token sit at the top."""
    renames = {"decoder.proj.weight": "encoder_to_decoder.weight",
               "decoder.mask_token": "mask_token"}
    return {renames.get(k, k): v.clone() for k, v in model.state_dict().items()}


def _videomae_finetuned(model) -> dict:
    """VideoMAE fine-tuned names: no encoder prefix, fc_norm and head at the top."""
    out = {}
    for k, v in model.state_dict().items():
        k = k.removeprefix("encoder.")
        out[{"head.fc_norm.weight": "fc_norm.weight", "head.fc_norm.bias": "fc_norm.bias",
             "head.head.weight": "head.weight", "head.head.bias": "head.bias"}.get(k, k)] = v
    return out


def _official_mar(model, k_bias_seed: int = 1) -> dict:
    """The official MAR model's names (models/base/models.py, decoder_head.py,
    transformer.py); the bridging head's to_qkv has a full bias, with a random k part."""
    g = torch.Generator().manual_seed(k_bias_seed)
    sd, out = model.state_dict(), {}
    block = {"norm1": "norm", "attn.qkv": "attn.to_qkv", "attn.proj": "attn.proj",
             "norm2": "norm_ffn", "mlp.fc1": "ffn.net.0", "mlp.fc2": "ffn.net.3"}
    for k, v in sd.items():
        if k.startswith("encoder."):
            out["backbone." + k.removeprefix("encoder.")] = v
        elif k == "head.proj.weight":
            out["encoder_to_cls_decoder.weight"] = v
        elif k.startswith("head.blocks."):
            _, _, i, *rest = k.split(".")
            name, param = ".".join(rest[:-1]), rest[-1]
            if name == "attn" and param == "q_bias":
                k_bias = torch.randn(v.shape, generator=g)
                v_bias = sd[f"head.blocks.{i}.attn.v_bias"]
                out[f"cls_head.blocks.{i}.attn.to_qkv.bias"] = torch.cat((v, k_bias, v_bias))
            elif name != "attn":
                out[f"cls_head.blocks.{i}.{block[name]}.{param}"] = v
        elif k.startswith("head."):
            out["cls_head." + k.removeprefix("head.")] = v
        elif k == "decoder.proj.weight":
            out["encoder_to_decoder.weight"] = v
        elif k == "decoder.mask_token":
            out["mask_token"] = v
        else:
            out[k] = v
    out["cls_head.mask_token"] = torch.zeros(1, 1, 64)
    out["pos_embed"] = sinusoid_table(64, 32)    # the decoder's table, an nn.Parameter there
    out["mean"] = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)
    out["std"] = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1, 1)
    return out


def _save(obj, path):
    torch.save(obj, path)
    return path


# -- one test per format ------------------------------------------------------------------


def test_videomae_pretraining_checkpoint(tmp_path):
    src = _tiny(head="none", decoder=True)
    state = _videomae_pretrain(src)
    assert {"encoder.blocks.0.attn.q_bias", "encoder_to_decoder.weight", "mask_token"} <= set(state)
    path = _save({"model": state, "optimizer": {}, "epoch": 799,
                  "args": argparse.Namespace(lr=1.5e-4, model="pretrain_videomae")},
                 tmp_path / "checkpoint-799.pth")
    model, report = convert_checkpoint(path, head="none", **CLIP)
    assert report.format == "videomae"
    assert not (report.missing or report.unexpected or report.dropped or report.initialised)
    assert len(report.loaded) == len(src.state_dict())
    with torch.no_grad():
        assert torch.equal(model(VIDEO, MASK).pred, src(VIDEO, MASK).pred)
    # the MAR starting point: encoder + decoder loaded, a new bridging head
    mar, report = convert_checkpoint(path, num_classes=174, decoder=True, **CLIP)
    assert report.config["head"] == "bridging" and report.config["num_classes"] == 174
    assert report.initialised and all(k.startswith("head.") for k in report.initialised)
    assert not (report.missing or report.unexpected)
    with torch.no_grad():
        assert torch.equal(mar(VIDEO, MASK).pred, src(VIDEO, MASK).pred)
        assert mar(VIDEO, MASK).logits.shape == (2, 174)


def test_videomae_finetuned_checkpoint(tmp_path):
    src = _tiny(num_classes=5, head="linear", final_norm=False)
    state = _videomae_finetuned(src)
    assert {"blocks.3.mlp.fc2.bias", "fc_norm.weight", "head.weight"} <= set(state)
    assert not any(k.startswith("norm.") for k in state)
    path = _save({"module": state}, tmp_path / "finetuned.pth")     # DeepSpeed's wrapper
    model, report = convert_checkpoint(path, **CLIP)
    assert report.config["head"] == "linear" and report.config["final_norm"] is False
    assert report.config["num_classes"] == 5
    assert not (report.missing or report.unexpected or report.dropped or report.initialised)
    # VideoMAE fine-tunes and tests on all tokens: that is the masking to record
    assert report.masking == {"name": "none", "ratio": 0.0}
    assert "test-time masking: none (all tokens)" in "\n".join(report.lines())
    with torch.no_grad():
        assert torch.equal(model.classify(VIDEO, MASK), src.classify(VIDEO, MASK))
        assert torch.equal(model.classify(VIDEO), src.classify(VIDEO))


def test_official_mar_checkpoint(tmp_path):
    src = _tiny(num_classes=5, head="bridging", decoder=True)
    state = _official_mar(src)
    path = _save({"epoch": 39, "model_state": state, "optimizer_state": {},
                  "cfg": "MODEL:\n  NAME: vit\n"}, tmp_path / "checkpoint_epoch_00040.pyth")
    model, report = convert_checkpoint(path, **CLIP)
    assert report.format == "mar"
    assert not (report.missing or report.unexpected or report.initialised)
    assert report.config["head"] == "bridging" and report.config["decoder"] is True
    # the official code tests with its cell running mask at 50%
    assert report.masking == {"name": "cell_running", "ratio": 0.5}
    assert "test-time masking: cell_running, ratio 0.5" in "\n".join(report.lines())
    assert tuple(report.config["pixel_mean"]) == pytest.approx(IMAGENET_MEAN)
    assert set(report.dropped) == {"cls_head.blocks.0.attn.to_qkv.bias[64:128]",
                                   "cls_head.mask_token", "pos_embed", "mean", "std"}
    assert "softmax" in report.dropped["cls_head.blocks.0.attn.to_qkv.bias[64:128]"]
    assert not any("learned" in n for n in report.notes)   # the stored table is the sinusoid
    with torch.no_grad():
        ours, theirs = model(VIDEO, MASK), src(VIDEO, MASK)
    assert torch.equal(ours.logits, theirs.logits) and torch.equal(ours.pred, theirs.pred)


def test_image_mae_inflates_and_splits_the_qkv_bias(tmp_path):
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=4, num_heads=2,
                            qkv_bias=True, num_classes=0, global_pool="token",
                            norm_layer=partial(nn.LayerNorm, eps=1e-6)).eval()
    _perturb(vit)
    state = vit.state_dict()
    assert state["patch_embed.proj.weight"].shape == (64, 3, 8, 8)
    assert state["blocks.0.attn.qkv.bias"].shape == (192,)
    path = _save({"model": state}, tmp_path / "mae_pretrain_vit_nano.pth")
    model, report = convert_checkpoint(path, head="none", **CLIP)
    assert report.format == "mae" and not (report.missing or report.unexpected)
    assert {"cls_token", "pos_embed", "blocks.0.attn.qkv.bias[64:128]"} <= set(report.dropped)
    assert any("inflated" in n for n in report.notes)
    enc = model.encoder
    assert enc.patch_embed.proj.weight.shape == (64, 3, 2, 8, 8)
    # a clip of identical frames embeds as the image, in every tubelet
    frame = torch.randn(1, 3, 32, 32)
    clip = frame.unsqueeze(2).repeat(1, 1, 8, 1, 1)
    image = F.conv2d(frame, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"],
                     stride=8).flatten(2).transpose(1, 2)                 # (1, 16, D)
    video = enc.patch_embed(clip).view(1, 4, 16, 64)
    assert torch.allclose(video, image.unsqueeze(1).expand_as(video), atol=1e-5)
    # each block gives timm's output: dropping the k bias changes nothing
    tokens = torch.randn(2, 10, 64)
    with torch.no_grad():
        for ours, theirs in zip(enc.blocks, vit.blocks, strict=True):
            assert torch.allclose(ours(tokens), theirs(tokens), atol=1e-5)
        assert torch.allclose(enc.norm(tokens), vit.norm(tokens))


# -- transformers' classes ----------------------------------------------------------------


def _hf_config(**kw):
    return VideoMAEConfig(image_size=32, patch_size=8, num_frames=8, tubelet_size=2,
                          hidden_size=64, num_hidden_layers=4, num_attention_heads=2,
                          intermediate_size=256, layer_norm_eps=1e-6, decoder_hidden_size=32,
                          decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
                          decoder_intermediate_size=128, attn_implementation="eager", **kw)


def test_transformers_pretraining_decoder(tmp_path):
    torch.manual_seed(0)
    hf = VideoMAEForPreTraining(_hf_config(use_mean_pooling=False)).eval()
    _perturb(hf)
    hf.save_pretrained(tmp_path / "hf")
    model, report = convert_checkpoint(tmp_path / "hf", head="none")
    assert report.format == "hf" and report.config["decoder"] is True
    assert not (report.missing or report.unexpected or report.initialised)
    assert report.config["num_frames"] == 8 and report.config["img_size"] == 32
    model.decoder.norm.eps = hf.decoder.norm.eps      # transformers' 1e-5 (VideoMAE: 1e-6)
    with torch.no_grad():
        theirs = hf(VIDEO.transpose(1, 2), bool_masked_pos=MASK.bool()).logits
        assert torch.allclose(model(VIDEO, MASK).pred, theirs, atol=1e-5)


def test_transformers_classification(tmp_path):
    torch.manual_seed(0)
    hf = VideoMAEForVideoClassification(_hf_config(use_mean_pooling=True, num_labels=5)).eval()
    _perturb(hf)
    hf.save_pretrained(tmp_path / "hf")
    # the saved directory, and the in-memory state dict (transformers 5 bias names)
    torch.save(hf.state_dict(), tmp_path / "hf.bin")
    with torch.no_grad():
        theirs = hf(VIDEO.transpose(1, 2)).logits
    for src in (tmp_path / "hf", tmp_path / "hf.bin"):
        model, report = convert_checkpoint(src, num_frames=8, img_size=32)
        assert report.config["head"] == "linear" and report.config["num_classes"] == 5
        assert report.config["final_norm"] is False
        assert not (report.missing or report.unexpected or report.initialised)
        assert any("fc_norm with eps 1e-5" in n for n in report.notes)
        with torch.no_grad():
            # within the eps difference: transformers' fc_norm uses 1e-5, VideoMAE's 1e-6
            assert torch.allclose(model.classify(VIDEO), theirs, atol=1e-4)
            model.head.fc_norm.eps = hf.fc_norm.eps
            assert torch.allclose(model.classify(VIDEO), theirs, atol=1e-5)


def test_transformers_first_token_classifier_needs_drop_head(tmp_path):
    hf = VideoMAEForVideoClassification(_hf_config(use_mean_pooling=False, num_labels=5))
    hf.save_pretrained(tmp_path / "hf")
    with pytest.raises(ConversionError, match="first token.*drop_head"):
        convert_checkpoint(tmp_path / "hf")
    model, report = convert_checkpoint(tmp_path / "hf", drop_head=True, head="bridging")
    assert report.config["final_norm"] is True
    assert "classifier.weight" in report.dropped and not report.missing


# -- strictness ---------------------------------------------------------------------------


@pytest.mark.parametrize("wrapper", [None, "model", "module", "model_state", "state_dict"])
@pytest.mark.parametrize("ddp", [False, True])
def test_wrappers_and_ddp_prefix(tmp_path, wrapper, ddp):
    src = _tiny(num_classes=5, head="linear", final_norm=False)
    state = {("module." if ddp else "") + k: v for k, v in _videomae_finetuned(src).items()}
    path = _save(state if wrapper is None else {wrapper: state, "epoch": 1}, tmp_path / "w.pth")
    model, report = convert_checkpoint(path, **CLIP)
    assert not (report.missing or report.unexpected)
    assert any("'module.'" in n for n in report.notes) == ddp
    with torch.no_grad():
        assert torch.equal(model.classify(VIDEO), src.classify(VIDEO))


def test_a_missing_key_fails_loudly(tmp_path):
    state = _videomae_pretrain(_tiny(head="none", decoder=True))
    del state["encoder.blocks.1.mlp.fc2.weight"]
    with pytest.raises(ConversionError, match=r"encoder\.blocks\.1\.mlp\.fc2\.weight") as e:
        convert_checkpoint(_save({"model": state}, tmp_path / "m.pth"), head="none", **CLIP)
    assert e.value.report.missing == ["encoder.blocks.1.mlp.fc2.weight"]
    assert "\n" not in str(e.value)


def test_an_extra_key_is_unexpected(tmp_path):
    state = _videomae_finetuned(_tiny(num_classes=5, head="linear", final_norm=False))
    state["blocks.0.gamma_1"] = torch.ones(64)                 # layer scale: not in mar's blocks
    path = _save(state, tmp_path / "x.pth")
    with pytest.raises(ConversionError, match=r"blocks\.0\.gamma_1"):
        convert_checkpoint(path, **CLIP)
    model, report = convert_checkpoint(path, allow_unexpected=True, **CLIP)
    assert report.unexpected == ["blocks.0.gamma_1"] and not report.missing


def test_class_count_mismatch_needs_drop_head(tmp_path):
    src = _tiny(num_classes=5, head="linear", final_norm=False)
    path = _save(_videomae_finetuned(src), tmp_path / "ft.pth")
    with pytest.raises(ConversionError, match=r"5 classes but num_classes=7.*drop_head"):
        convert_checkpoint(path, num_classes=7, **CLIP)
    model, report = convert_checkpoint(path, num_classes=7, drop_head=True, **CLIP)
    assert model.head.head.out_features == 7
    assert {"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"} == set(report.dropped)
    assert set(report.initialised) == {"head.fc_norm.weight", "head.fc_norm.bias",
                                       "head.head.weight", "head.head.bias"}
    with torch.no_grad():
        assert torch.equal(model.forward_features(VIDEO, MASK), src.forward_features(VIDEO, MASK))


def test_other_clip_sizes_rebuild_the_tables_and_learned_tables_are_reported(tmp_path):
    state = _videomae_finetuned(_tiny(num_classes=5, head="linear", final_norm=False))
    state["pos_embed"] = torch.randn(1, 64, 64)                # a learned table
    model, report = convert_checkpoint(_save(state, tmp_path / "p.pth"), num_frames=16,
                                       img_size=64)
    assert model.grid == (8, 8, 8) and not report.missing
    assert "pos_embed" in report.dropped
    assert any(n.startswith("pos_embed is a learned position table") for n in report.notes)
    model(torch.randn(1, 3, 16, 64, 64))


# -- reading files safely -----------------------------------------------------------------


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_the_pth_loader_never_runs_code(tmp_path):
    marker = tmp_path / "payload-ran"
    path = _save({"model": {"w": torch.ones(1)}, "extra": _Payload(str(marker))},
                 tmp_path / "evil.pth")
    # os.mkdir pickles as posix.mkdir (nt.mkdir on Windows): the file, the refusal, what
    # it would have run and why
    with pytest.raises(ConversionError, match=r"evil\.pth: refused: the file would construct "
                       r"(posix|nt)\.mkdir, and mar only loads weights \(torch\.load "
                       r"weights_only=True\)"):
        read_checkpoint(path)
    assert not marker.exists()


def test_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(ConversionError, match=r"nope\.pth: no such file"):
        convert_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(ConversionError, match=r"notes\.pth: not a PyTorch checkpoint"):
        convert_checkpoint(tmp_path / "notes.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(ConversionError, match=r"bad\.safetensors: not a safetensors file"):
        convert_checkpoint(tmp_path / "bad.safetensors")
    with pytest.raises(ConversionError, match=r"lst\.pth: no weights found"):
        convert_checkpoint(_save([1, 2, 3], tmp_path / "lst.pth"))
    save_file({"foo.weight": torch.ones(2)}, str(tmp_path / "foo.safetensors"))
    with pytest.raises(ConversionError, match=r"foo\.safetensors: unknown checkpoint layout"):
        convert_checkpoint(tmp_path / "foo.safetensors")


# -- mar's own format ---------------------------------------------------------------------


def test_save_and_load_model_round_trip(tmp_path):
    src = _tiny(head="none", decoder=True)
    model, report = convert_checkpoint(_save({"model": _videomae_pretrain(src)},
                                             tmp_path / "c.pth"), num_classes=7, **CLIP)
    out = tmp_path / "models" / "mar-nano"
    assert report.masking == {"name": "none", "ratio": 0.0}     # a VideoMAE pretraining file
    save_model(model, report.config, out, masking=report.masking, report=report)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "conversion.json",
                                                     "masking.json", "model.safetensors"]
    assert json.loads((out / "masking.json").read_text()) == report.masking
    assert json.loads((out / "conversion.json").read_text())["masking"] == report.masking
    loaded, config = load_model_dir(out)
    assert config == report.config
    assert ModelConfig(**config).name == "vit_nano"     # the training config accepts it
    with torch.no_grad():
        a, b = loaded(VIDEO, MASK), model(VIDEO, MASK)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.pred, b.pred)
    with pytest.raises(ModelFileError, match="already exists"):
        save_model(model, report.config, out, masking=report.masking)
    save_model(model, report.config, out, masking=report.masking, overwrite=True)
    assert sorted(p.name for p in out.parent.iterdir()) == ["mar-nano"]   # no temporary left
    with pytest.raises(ModelFileError, match="does not describe this model"):
        save_model(model, report.config | {"decoder": False}, tmp_path / "wrong",
                   masking=report.masking)
    assert not (tmp_path / "wrong").exists()


# -- the command --------------------------------------------------------------------------


def _run(argv):
    argv = [*argv, "--num-frames", "8", "--img-size", "32"]
    parser = argparse.ArgumentParser(prog="mar")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_mar_convert_command(tmp_path, capsys):
    state = _official_mar(_tiny(num_classes=5, head="bridging", decoder=True))
    src = _save({"model_state": state}, tmp_path / "mar.pth")
    assert _run(["convert", str(src), str(tmp_path / "out"), "--no-decoder"]) == 0
    out = capsys.readouterr().out
    assert "(mar): loaded" in out and "decoder.blocks.0.norm1.weight: reconstruction decoder" \
        in out and "cls_head.mask_token: created by the official model" in out
    assert "test-time masking cell_running, ratio 0.5" in out.splitlines()[-1]
    model, config = load_model_dir(tmp_path / "out")
    assert config["decoder"] is False and model.decoder is None
    assert _masking(tmp_path / "out") == {"name": "cell_running", "ratio": 0.5}
    assert _run(["convert", str(src), str(tmp_path / "out")]) == 2          # exists
    assert _run(["convert", str(src), str(tmp_path / "o2"), "--num-classes", "9"]) == 2
    captured = capsys.readouterr()
    assert "5 classes but num_classes=9" in captured.err
    assert len(captured.err.strip().splitlines()) == 2                    # one line per failure
    assert _run(["convert", str(tmp_path / "none.pth"), str(tmp_path / "o3")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mar convert: error:") and "none.pth: no such file" in err
    assert "\n" not in err


def _masking(folder):
    return json.loads((folder / "masking.json").read_text())


def test_mar_convert_test_masking_override(tmp_path, capsys):
    official = _save({"model_state": _official_mar(_tiny(num_classes=5, decoder=True))},
                     tmp_path / "mar.pth")
    videomae = _save(_videomae_finetuned(_tiny(num_classes=5, head="linear", final_norm=False)),
                     tmp_path / "ft.pth")
    assert _run(["convert", str(official), str(tmp_path / "a"), "--test-masking", "none"]) == 0
    assert _masking(tmp_path / "a") == {"name": "none", "ratio": 0.0}
    assert "test-time masking none (all tokens)" in capsys.readouterr().out
    assert _run(["convert", str(official), str(tmp_path / "b"), "--mask-ratio", "0.75"]) == 0
    assert _masking(tmp_path / "b") == {"name": "cell_running", "ratio": 0.75}
    assert _masking(tmp_path / "b") == json.loads(
        (tmp_path / "b" / "conversion.json").read_text())["masking"]
    assert _run(["convert", str(videomae), str(tmp_path / "c"), "--test-masking",
                 "cell_running"]) == 0
    assert _masking(tmp_path / "c") == {"name": "cell_running", "ratio": 0.5}
    assert _run(["convert", str(videomae), str(tmp_path / "d")]) == 0
    assert _masking(tmp_path / "d") == {"name": "none", "ratio": 0.0}
    capsys.readouterr()
    # a ratio for a model run on all tokens, or an impossible ratio: one-line errors
    assert _run(["convert", str(videomae), str(tmp_path / "e"), "--mask-ratio", "0.5"]) == 2
    assert _run(["convert", str(official), str(tmp_path / "f"), "--mask-ratio", "1.0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "--test-masking cell_running" in err[0]
    assert "cell_running, ratio 1.0" in err[1] and "--mask-ratio" in err[1]
    assert not (tmp_path / "e").exists() and not (tmp_path / "f").exists()
    # the official mask on a 3x3 token frame, which 2x2 cells do not tile: say so
    with pytest.raises(ConversionError, match="test-time masking cell_running.*--test-masking"):
        convert_checkpoint(official, num_frames=8, img_size=24)
    _, report = convert_checkpoint(official, num_frames=8, img_size=24, test_masking="none")
    assert report.masking == {"name": "none", "ratio": 0.0}


# -- any architecture ---------------------------------------------------------------------


def _odd_hf_config(**kw):
    """Width 96, 3 layers, 4 heads, MLP 200: no mar size, a non-integer MLP ratio."""
    return VideoMAEConfig(image_size=32, patch_size=8, num_frames=8, tubelet_size=2,
                          hidden_size=96, num_hidden_layers=3, num_attention_heads=4,
                          intermediate_size=200, layer_norm_eps=1e-6,
                          attn_implementation="eager", **kw)


def _rebuild(folder):
    """The model of a model directory through the training config, weights loaded."""
    config = json.loads((folder / "config.json").read_text())
    model = ModelConfig(**config).build()
    load_weights(model, folder)                       # strict
    return model.eval()


def test_transformers_model_of_any_shape(tmp_path):
    torch.manual_seed(0)
    hf = VideoMAEModel(_odd_hf_config(use_mean_pooling=False)).eval()
    _perturb(hf)
    hf.save_pretrained(tmp_path / "hf")
    model, report = convert_checkpoint(tmp_path / "hf", head="none")
    cfg = report.config
    assert cfg["name"] == "custom" and not (report.missing or report.unexpected)
    assert (cfg["embed_dim"], cfg["depth"], cfg["num_heads"]) == (96, 3, 4)
    assert int(96 * cfg["mlp_ratio"]) == 200 and cfg["mlp_ratio"] != 2.0
    assert model.encoder.blocks[0].attn.num_heads == 4
    with torch.no_grad():
        theirs = hf(VIDEO.transpose(1, 2), bool_masked_pos=MASK.bool()).last_hidden_state
        assert torch.allclose(model.encoder(VIDEO, MASK), theirs, atol=1e-5)
    save_model(model, cfg, tmp_path / "mar", masking=report.masking, report=report)
    assert _masking(tmp_path / "mar") == {"name": "none", "ratio": 0.0}
    with torch.no_grad():
        assert torch.allclose(_rebuild(tmp_path / "mar").encoder(VIDEO, MASK), theirs,
                              atol=1e-5)


def test_transformers_classifier_of_any_shape(tmp_path):
    torch.manual_seed(0)
    hf = VideoMAEForVideoClassification(_odd_hf_config(use_mean_pooling=True,
                                                       num_labels=6)).eval()
    _perturb(hf)
    hf.save_pretrained(tmp_path / "hf")
    model, report = convert_checkpoint(tmp_path / "hf")
    cfg = report.config
    assert (cfg["name"], cfg["head"], cfg["num_classes"]) == ("custom", "linear", 6)
    assert (cfg["embed_dim"], cfg["depth"], cfg["num_heads"]) == (96, 3, 4)
    assert [b.mlp.fc1.out_features for b in model.encoder.blocks] == [200] * 3
    assert not (report.missing or report.unexpected or report.initialised)
    assert report.masking == {"name": "none", "ratio": 0.0}
    model.head.fc_norm.eps = hf.fc_norm.eps          # transformers' 1e-5 (VideoMAE: 1e-6)
    with torch.no_grad():
        theirs = hf(VIDEO.transpose(1, 2)).logits
        assert torch.allclose(model.classify(VIDEO), theirs, atol=1e-5)
    save_model(model, cfg, tmp_path / "mar", masking=report.masking, report=report)
    assert _masking(tmp_path / "mar") == {"name": "none", "ratio": 0.0}
    loaded, config = load_model_dir(tmp_path / "mar")
    assert config == cfg
    rebuilt = _rebuild(tmp_path / "mar")
    for m in (loaded, rebuilt):
        m.head.fc_norm.eps = hf.fc_norm.eps
        with torch.no_grad():
            assert torch.allclose(m.classify(VIDEO), theirs, atol=1e-5)


def _official_finetuned_state(**kw) -> dict:
    """An official VideoMAE / V2 fine-tuned state dict (meta tensors: shapes only)."""
    with torch.device("meta"):
        model = create_model(head="linear", final_norm=False, decoder=False, **kw)
    return _videomae_finetuned(model)


def test_videomae_v2_giant_shapes_give_vit_giant():
    # the full ViT-g/14 (1408 wide, 40 deep, MLP 6144), on the meta device: no memory used
    state = _official_finetuned_state(name="vit_giant", patch_size=14, num_classes=710)
    assert state["blocks.39.mlp.fc1.weight"].shape == (6144, 1408)
    assert state["patch_embed.proj.weight"].shape == (1408, 3, 2, 14, 14)
    fmt = get_format("videomae")
    mapped = apply_rules(state, fmt.rules, fmt.strip)
    arch = infer_architecture(mapped.state, Hints())
    assert (arch.name, arch.embed_dim, arch.depth, arch.num_heads) == ("vit_giant", 1408, 40, 16)
    assert int(1408 * arch.mlp_ratio) == 6144 and arch.patch_size == 14
    assert (arch.head, arch.num_classes, arch.final_norm) == ("linear", 710, False)


def test_official_giant_width_checkpoint_converts(tmp_path):
    # real weights at ViT-g width, 1 block deep (about 100 MB), a tiny clip
    kw = dict(num_frames=2, img_size=28, patch_size=14)
    torch.manual_seed(0)
    src = create_model("vit_g1", embed_dim=1408, depth=1, num_heads=16, mlp_ratio=48 / 11,
                       head="linear", num_classes=3, final_norm=False, **kw).eval()
    path = _save({"module": _videomae_finetuned(src)}, tmp_path / "vit_g_1block.pth")
    model, report = convert_checkpoint(path, num_frames=2, img_size=28)
    cfg = report.config
    assert (cfg["name"], cfg["embed_dim"], cfg["depth"], cfg["num_heads"]) == \
        ("custom", 1408, 1, 16)
    assert int(1408 * cfg["mlp_ratio"]) == 6144 and cfg["patch_size"] == 14
    assert any("16 attention heads, as mar's vit_giant" in n for n in report.notes)
    assert report.masking == {"name": "none", "ratio": 0.0}
    video = torch.randn(1, 3, 2, 28, 28)
    with torch.no_grad():
        expected = src.classify(video)
        assert torch.equal(model.classify(video), expected)
    save_model(model, cfg, tmp_path / "mar", masking=report.masking)
    del model, src
    with torch.no_grad():
        assert torch.equal(_rebuild(tmp_path / "mar").classify(video), expected)


def test_mlp_ratio_gives_the_file_mlp_width_for_every_width():
    # hidden / dim times dim can round below hidden (7 * (61 / 7) < 61): int() would lose one
    assert int(7 * (61 / 7)) == 60
    for dim in range(1, 129):
        for hidden in range(1, 5 * dim):
            ratio = mlp_ratio_for(dim, hidden)
            assert int(dim * ratio) == hidden, (dim, hidden)
            assert int(dim * json.loads(json.dumps(ratio))) == hidden       # via config.json


def test_unknown_width_needs_num_heads(tmp_path):
    src = create_model("w48", embed_dim=48, depth=2, num_heads=3, head="linear", num_classes=4,
                       final_norm=False, **TINY)
    _perturb(src)
    path = _save(_videomae_finetuned(src.eval()), tmp_path / "w48.pth")
    with pytest.raises(ConversionError, match=r"width 48 .*--num-heads") as e:
        convert_checkpoint(path, **CLIP)
    assert "\n" not in str(e.value)
    model, report = convert_checkpoint(path, num_heads=3, **CLIP)
    assert report.config["num_heads"] == 3 and report.config["mlp_ratio"] == 4.0
    with torch.no_grad():
        assert torch.equal(model.classify(VIDEO, MASK), src.classify(VIDEO, MASK))
    assert _run(["convert", str(path), str(tmp_path / "x")]) == 2
    assert _run(["convert", str(path), str(tmp_path / "y"), "--num-heads", "3"]) == 0
    assert load_model_dir(tmp_path / "y")[1]["num_heads"] == 3


def test_heads_of_a_known_size_from_the_config_must_agree(tmp_path):
    # vit_nano is 64 wide, 4 deep, 2 heads; a config with 4 heads needs --num-heads
    config = _hf_config()
    config.num_attention_heads = 4
    hf = VideoMAEModel(config)
    hf.save_pretrained(tmp_path / "hf")
    with pytest.raises(ConversionError, match="gives 4 attention heads.*vit_nano has 2"):
        convert_checkpoint(tmp_path / "hf", head="none")
    model, report = convert_checkpoint(tmp_path / "hf", head="none", num_heads=4)
    assert report.config["name"] == "custom" and report.config["num_heads"] == 4

