"""CI's tiny stand-in for a VideoMAE checkpoint: the encoder of a random ``vit_nano``
(seed 0; 4 frames of 32x32, patch 8) with VideoMAE's key names, saved as ``{"model": ...}``
to the path given, for ``mar convert`` and ``mar predict`` to run on. Uses the installed
``mar``."""

import sys

import torch

from mar import create_model


def main(out: str) -> None:
    torch.manual_seed(0)
    model = create_model("vit_nano", num_classes=4, num_frames=4, img_size=32, patch_size=8,
                         head="linear")
    encoder = {k.removeprefix("encoder."): v for k, v in model.state_dict().items()
               if k.startswith("encoder.")}
    torch.save({"model": encoder}, out)


if __name__ == "__main__":
    main(sys.argv[1])
