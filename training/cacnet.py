"""The bundled 2.5D CAC segmentation network (PyTorch side: definition, MAC count, ONNX export).

Why this shape: the published model's bar is < 2 s per CTAC volume on a CPU. Calcium scoring itself
is exact and done at full resolution by ``connector.infer.agatston``; the network only has to say,
for each region, whether HU >= 130 voxels there are coronary calcium, other calcium (aorta, valves,
bone) or noise, and where the heart is. That needs context more than fine detail, so the network
pools the three adjacent input slices 4x (average *and* max, so a 1-pixel calcium speck survives)
and runs a small U-Net on the 128x128 grid: about 0.1 GMAC per slice.

Input:  (N, 3, 512, 512) float32, the slice and its neighbours, HU windowed to [0, 1].
Output: ``heart`` (N, 1, 128, 128) sigmoid; ``calcium`` (N, 3, 128, 128) softmax over
        (none, coronary, noncoronary). Output stride 4.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

STRIDE = 4
SIZE_MULTIPLE = 16  # stem 4x, then two 2x poolings
WIDTHS = (8, 16, 32)
DILATIONS_V1 = {"e3a": 1, "e3b": 2, "d2": 1}
DILATIONS_WIDE_CONTEXT = {"e3a": 2, "e3b": 4, "d2": 2}  # same parameters, about 3x the receptive field

# Two-window stem: the runtime feeds the full CT range, the graph makes a calcium window (the v1
# model's only one) and a dense window in which metal (stents, wires: 1500-3071 HU) stands apart
# from calcium; v1's single window clips both to 1 at 1200 HU, so no model can tell them apart.
FULL_RANGE = (-1024.0, 3071.0)
STEM_WINDOWS = ((-300.0, 1200.0), (1000.0, 3000.0))


class Stem(nn.Module):
    """Parameter-free 4x reduction: average and max pooling of every input slice (6 channels), or,
    with ``windows``, of every slice in each window computed from the full-range input (12)."""

    def __init__(self, windows: tuple[tuple[float, float], ...] | None = None) -> None:
        super().__init__()
        self.windows = windows

    @property
    def channels(self) -> int:
        return 6 * (len(self.windows) if self.windows else 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.windows:
            return stem(x)
        lo, hi = FULL_RANGE
        hu = x * (hi - lo) + lo
        out = []
        for wlo, whi in self.windows:
            w = ((hu - wlo) / (whi - wlo)).clamp(0.0, 1.0)
            out += [F.avg_pool2d(w, STRIDE), F.max_pool2d(w, STRIDE)]
        return torch.cat(out, dim=1)


def stem(x: torch.Tensor) -> torch.Tensor:
    """The v1 stem: one window, 6 channels."""
    return torch.cat([F.avg_pool2d(x, STRIDE), F.max_pool2d(x, STRIDE)], dim=1)


class CacBody(nn.Module):
    """A three-level U-Net on the pooled grid; trained on precomputed stem features."""

    def __init__(self, widths: tuple[int, int, int] = WIDTHS, in_channels: int = 6,
                 dilations: dict[str, int] | None = None) -> None:
        super().__init__()
        c1, c2, c3 = widths
        d = dilations or DILATIONS_V1

        def conv(i: int, o: int, d: int = 1) -> nn.Conv2d:
            return nn.Conv2d(i, o, 3, padding=d, dilation=d)

        self.e1a, self.e1b = conv(in_channels, c1), conv(c1, c1)
        self.e2a, self.e2b = conv(c1, c2), conv(c2, c2)
        self.e3a, self.e3b = conv(c2, c3, d["e3a"]), conv(c3, c3, d["e3b"])
        self.d2 = conv(c3 + c2, c2, d["d2"])
        self.d1 = conv(c2 + c1, c1)
        self.head = nn.Conv2d(c1, 4, 1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        """Logits (N, 4, h, w): channel 0 heart, channels 1-3 calcium classes."""
        f = (f - 0.25) * 4.0  # fixed centring of the [0, 1] windowed input
        e1 = F.relu(self.e1b(F.relu(self.e1a(f))))
        e2 = F.relu(self.e2b(F.relu(self.e2a(F.max_pool2d(e1, 2)))))
        e3 = F.relu(self.e3b(F.relu(self.e3a(F.max_pool2d(e2, 2)))))
        d2 = F.relu(self.d2(torch.cat([F.interpolate(e3, scale_factor=2.0, mode="nearest"), e2], 1)))
        d1 = F.relu(self.d1(torch.cat([F.interpolate(d2, scale_factor=2.0, mode="nearest"), e1], 1)))
        return self.head(d1)


class CacNet(nn.Module):
    """Stem + body + output activations: the graph that is exported to ONNX."""

    def __init__(self, body: CacBody, stem_module: Stem | None = None) -> None:
        super().__init__()
        self.body = body
        self.stem = stem_module or Stem()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The v1 graph calls the plain function, so its exported node names (and bytes) stay the same.
        logits = self.body(self.stem(x) if self.stem.windows else stem(x))
        return torch.sigmoid(logits[:, :1]), torch.softmax(logits[:, 1:], dim=1)


def macs_per_slice(body: CacBody, size: int = 512) -> int:
    """Multiply-accumulates for one sample, counted from the convolutions' shapes."""
    total = 0
    h = size // STRIDE
    scale = {"e1a": 1, "e1b": 1, "e2a": 2, "e2b": 2, "e3a": 4, "e3b": 4, "d2": 2, "d1": 1, "head": 1}
    for name, div in scale.items():
        conv: nn.Conv2d = getattr(body, name)
        k = conv.kernel_size[0] * conv.kernel_size[1]
        total += (h // div) ** 2 * conv.in_channels * conv.out_channels * k
    return total


def export_onnx(body: CacBody, path: Path, size: int = 512, stem_module: Stem | None = None) -> None:
    """Write the full network (stem included) as ONNX; batch, height and width are dynamic (any
    multiple of SIZE_MULTIPLE), so the runtime can crop the air around the patient."""
    net = CacNet(body, stem_module).eval()
    example = torch.zeros(1, 3, size, size)
    torch.onnx.export(
        net,
        (example,),
        str(path),
        input_names=["slices"],
        output_names=["heart", "calcium"],
        dynamic_axes={name: {0: "batch", 2: "height", 3: "width"} for name in ("slices", "heart", "calcium")},
        opset_version=17,
        dynamo=False,
    )
