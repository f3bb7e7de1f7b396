"""The strict conversion report: every key of the file and of the model is accounted for."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field


class ConversionError(ValueError):
    """A checkpoint that cannot be read or converted; the message is one line.

    ``report`` holds what was found so far (None when the file could not be read).
    """

    def __init__(self, message: str, report: ConversionReport | None = None):
        super().__init__(message)
        self.report = report


@dataclass
class ConversionReport:
    """What a conversion did with each key.

    loaded: our keys filled from the file. missing: keys our model expects that the file
    lacks and the caller did not choose to start new (any makes the conversion fail).
    initialised: our keys left as initialised by the caller's choice (new head, new
    decoder), with the reason. unexpected: file keys no rule uses (fail unless allowed).
    dropped: file keys deliberately not used, with the reason. ``config`` holds the
    ``create_model`` keyword arguments of the model built; ``masking`` the test-time
    masking recorded with it (``masking.json``), ``masking_reason`` why.
    """

    source: str
    format: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    initialised: dict[str, str] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    masking: dict = field(default_factory=dict)
    masking_reason: str = ""

    def lines(self) -> list[str]:
        """The report as text: the counts, then every dropped, unexpected, missing and
        new key (new keys grouped by reason), then the notes."""
        out = [f"{self.source} ({self.format}): loaded {len(self.loaded)}, "
               f"missing {len(self.missing)}, unexpected {len(self.unexpected)}, "
               f"dropped {len(self.dropped)}, new {len(self.initialised)}"]
        if self.dropped:
            out.append("dropped:")
            out += [f"  {key}: {why}" for key, why in self.dropped.items()]
        if self.unexpected:
            out.append("unexpected (in the file, used by no rule):")
            out += [f"  {key}" for key in self.unexpected]
        if self.missing:
            out.append("missing (expected by the model, absent from the file):")
            out += [f"  {key}" for key in self.missing]
        if self.initialised:
            groups: dict[str, list[str]] = defaultdict(list)
            for key, why in self.initialised.items():
                groups[why].append(key)
            out.append("new (initialised, not from the file):")
            for why, keys in groups.items():
                prefixes = sorted({k.split(".")[0] + ".*" for k in keys})
                out.append(f"  {', '.join(prefixes)} ({len(keys)} tensors): {why}")
        if self.notes:
            out.append("notes:")
            out += [f"  {note}" for note in self.notes]
        if self.masking:
            out.append(f"test-time masking: {describe_masking(self.masking)} "
                       f"({self.masking_reason})")
        return out


def describe_masking(masking: dict) -> str:
    """``none (all tokens)`` or e.g. ``cell_running, ratio 0.5``."""
    if masking.get("name") == "none":
        return "none (all tokens)"
    return f"{masking.get('name')}, ratio {masking.get('ratio')}"
