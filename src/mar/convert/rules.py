"""Declarative rename tables and the one function that applies them.

A table is a list of ``(source, target)`` rules tried in order against each file key
(after an optional prefix is removed). ``source`` is a key pattern where ``{i}`` matches
a block index, ``{p}`` ``weight`` or ``bias`` and ``{rest}`` anything; the target is our
key with the same fields, a :class:`Drop` with its reason, or a :class:`SplitQKV` for a
full q/k/v bias. A target ending in ``[q]``, ``[k]`` or ``[v]`` is one third of a fused
``qkv`` weight: the three are concatenated in q, k, v row order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache

import torch
from torch import Tensor

from .report import ConversionError

KEY_BIAS = ("key bias: it adds the same value to every attention score of a query, "
            "which the softmax cancels, so it cannot change the output")
POS_TABLE = ("position table: mar rebuilds the fixed sinusoid table from num_frames and "
             "img_size, so a stored table is never used (a learned one is lost)")


@dataclass(frozen=True)
class Drop:
    """Do not use this key, for ``reason``."""

    reason: str


@dataclass(frozen=True)
class SplitQKV:
    """A full (3D,) q/k/v bias: the q and v thirds go to these keys, the k third is dropped."""

    q: str
    v: str


Target = str | Drop | SplitQKV
Rule = tuple[str, Target]

_FIELDS = {"i": r"\d+", "p": r"weight|bias", "rest": r".+"}
_PART = re.compile(r"(.+)\[([qkv])\]")


@cache
def _pattern(source: str) -> re.Pattern:
    pieces = re.split(r"\{(\w+)\}", source)
    return re.compile("".join(re.escape(s) if n % 2 == 0 else f"(?P<{s}>{_FIELDS[s]})"
                              for n, s in enumerate(pieces)))


def vit_block_rules(src: str, dst: str) -> list[Rule]:
    """timm/VideoMAE block names (``norm1``, ``attn.qkv``, ``attn.q_bias``, ``mlp.fc1``...),
    which are also ours, from the blocks under ``src`` to those under ``dst``.

    A full ``attn.qkv.bias`` (timm, image MAE) is split into q_bias and v_bias.
    """
    rules: list[Rule] = [(f"{src}.{{i}}.{name}.{{p}}", f"{dst}.{{i}}.{name}.{{p}}")
                         for name in ("norm1", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")]
    return rules + [
        (f"{src}.{{i}}.attn.qkv.weight", f"{dst}.{{i}}.attn.qkv.weight"),
        (f"{src}.{{i}}.attn.q_bias", f"{dst}.{{i}}.attn.q_bias"),
        (f"{src}.{{i}}.attn.v_bias", f"{dst}.{{i}}.attn.v_bias"),
        (f"{src}.{{i}}.attn.qkv.bias",
         SplitQKV(f"{dst}.{{i}}.attn.q_bias", f"{dst}.{{i}}.attn.v_bias")),
    ]


@dataclass
class Mapped:
    """A state dict under our names. ``sources`` maps each of our keys to its file key."""

    state: dict[str, Tensor] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)

    def put(self, key: str, value: Tensor, source: str) -> None:
        if key in self.state:
            raise ConversionError(f"{self.sources[key]} and {source} both give {key}")
        self.state[key] = value
        self.sources[key] = source

    def pop(self, key: str, reason: str) -> None:
        """Take ``key`` out of the state and record its file key as dropped."""
        del self.state[key]
        self.dropped[self.sources.pop(key)] = reason


def _match(name: str, rules: Sequence[Rule]) -> tuple[dict[str, str], Target] | None:
    """The fields and target of the first rule matching ``name``."""
    for source, target in rules:
        m = _pattern(source).fullmatch(name)
        if m:
            return m.groupdict(), target
    return None


def apply_rules(state: Mapping[str, Tensor], rules: Sequence[Rule],
                strip: tuple[str, ...] = ()) -> Mapped:
    """Rename ``state`` by ``rules``; keys matching no rule are listed as unexpected.

    ``strip``: prefixes removed from a key before matching (e.g. ``videomae.``).
    """
    out, parts = Mapped(), {}
    for key, value in state.items():
        name = next((key[len(p):] for p in strip if key.startswith(p)), key)
        found = _match(name, rules)
        if found is None:
            out.unexpected.append(key)
            continue
        fields, target = found
        if isinstance(target, Drop):
            out.dropped[key] = target.reason
        elif isinstance(target, SplitQKV):
            if value.ndim != 1 or value.shape[0] % 3:
                raise ConversionError(f"{key}: a q/k/v bias of shape {tuple(value.shape)} "
                                      "does not split in three")
            q, k, v = value.chunk(3)
            out.put(target.q.format(**fields), q, key)
            out.put(target.v.format(**fields), v, key)
            out.dropped[f"{key}[{k.shape[0]}:{2 * k.shape[0]}]"] = KEY_BIAS
        elif part := _PART.fullmatch(target.format(**fields)):
            got = parts.setdefault(part[1], {})
            if part[2] in got:
                raise ConversionError(f"{got[part[2]][0]} and {key} both give {part[0]}")
            got[part[2]] = (key, value)
        else:
            out.put(target.format(**fields), value, key)
    for fused, got in parts.items():
        if set(got) == {"q", "k", "v"}:
            out.put(fused, torch.cat([got[c][1] for c in "qkv"]),
                    " + ".join(got[c][0] for c in "qkv"))
        else:
            for key, _ in got.values():
                out.dropped[key] = f"incomplete q/k/v set: {fused} needs all three"
    return out
