"""The paper's 3D U-Net (PyTorch; training only, inference uses the ONNX export)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["UNet3D", "ARCHITECTURE"]

#: Description recorded in the weights manifest.
ARCHITECTURE = {
    "name": "UNet3D",
    "levels": 4,
    "initial_filters": 16,
    "filters": [16, 32, 64, 128],
    "block": "residual: conv3 -> BN -> ELU -> conv3 -> BN, + (1x1 conv) skip, ELU",
    "down": "max-pool 2",
    "up": "transposed conv 2 (stride 2)",
    "outputs": ["background", "LM", "LAD", "LCX", "RCA"],
    "input": "1 channel, preprocessed (cacnet.preprocess), spatial dims multiples of 8",
}


class ResBlock(nn.Module):
    """Residual block: two 3x3x3 convolutions with batch norm and ELU."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv3d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(cout)
        self.conv2 = nn.Conv3d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(cout)
        self.skip = nn.Identity() if cin == cout else nn.Conv3d(cin, cout, 1, bias=False)
        self.act = nn.ELU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act(y + self.skip(x))


class UNet3D(nn.Module):
    """4-level 3D U-Net, 16 initial filters doubling per level, 5 output classes."""

    def __init__(self, in_channels: int = 1, n_classes: int = 5, base: int = 16, prior_bias: float = -4.0):
        super().__init__()
        f = [base, base * 2, base * 4, base * 8]
        self.enc = nn.ModuleList([ResBlock(in_channels, f[0]), ResBlock(f[0], f[1]), ResBlock(f[1], f[2])])
        self.bottom = ResBlock(f[2], f[3])
        self.pool = nn.MaxPool3d(2)
        self.up = nn.ModuleList([nn.ConvTranspose3d(f[i + 1], f[i], 2, stride=2) for i in (2, 1, 0)])
        self.dec = nn.ModuleList([ResBlock(2 * f[i], f[i]) for i in (2, 1, 0)])
        self.head = nn.Conv3d(f[0], n_classes, 1)
        with torch.no_grad():  # start near the class prior: calcium is rare
            self.head.bias.fill_(prior_bias)
            self.head.bias[0] = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for block in self.enc:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = dec(torch.cat([up(x), skip], dim=1))
        return self.head(x)
