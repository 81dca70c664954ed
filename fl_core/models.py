"""The paper's EMNIST CNN (Sun et al. 2019 §3; the reference code's `create_keras_model`,
the same layer stack as pytorch/examples' mnist `Net`). Model only: no training code."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

#: Parameter count the paper's model has; a test pins it.
NUM_PARAMS = 1_199_882


class CNN(nn.Module):
    """conv3×3×32+ReLU → conv3×3×64+ReLU → maxpool 2×2 → dropout .25 → dense 128+ReLU →
    dropout .5 → dense 10. Input: (B, 1, 28, 28) float pixels, TFF convention (white 1.0)."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.dropout1 = nn.Dropout(0.25)
        self.fc1 = nn.Linear(9216, 128)
        self.dropout2 = nn.Dropout(0.5)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        x = self.dropout1(torch.flatten(x, 1))
        x = F.relu(self.fc1(x))
        return self.fc2(self.dropout2(x))
