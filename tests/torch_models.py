"""Small torch modules shared by the torch-route tests (loaded by path, see ``conftest._load``)."""

from __future__ import annotations

import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return x + self.act(self.conv(x))  # a functional residual


class ResidualCNN(nn.Module):
    """ReLU CNN whose ``block`` is called twice, with in-place ReLUs and functional residuals."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.block = Block(8)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        h = self.block(self.block(self.relu(self.stem(x))))
        return self.head(torch.flatten(self.pool(h), 1))
