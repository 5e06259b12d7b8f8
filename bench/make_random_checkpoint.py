"""Save an open_clip model with random weights, for running clipdex where no weights can be downloaded.

    python bench/make_random_checkpoint.py ViT-B-32 vit-b-32-random.pt

The file loads with `clipdex ... --model ViT-B-32 --weights vit-b-32-random.pt`.
Random weights give meaningless rankings but exactly the real model's cost.
"""

from __future__ import annotations

import sys

import open_clip
import torch


def main() -> None:
    arch, out = sys.argv[1], sys.argv[2]
    torch.manual_seed(int(sys.argv[3]) if len(sys.argv) > 3 else 0)
    model = open_clip.create_model(arch, pretrained=None)
    torch.save(model.state_dict(), out)
    print(f"saved {arch} with random weights to {out}")


if __name__ == "__main__":
    main()
