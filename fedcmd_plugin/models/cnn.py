"""A deeper BatchNorm CNN: more candidate blocks for FedCMD and real BN statistics for FedBN."""
from torch import nn

from fedcmd_plugin.models.blocks import BlockNet, pooled_size

WIDTHS = (32, 64, 128, 128)
HIDDEN = 256


def conv_block(in_channels, out_channels, batch_norm):
    """3x3 same-size convolution, optional BatchNorm, ReLU, 2x2 max pooling (ceil, so odd sizes keep a row)."""
    layers = [nn.Conv2d(in_channels, out_channels, 3, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2, ceil_mode=True)]
    return nn.Sequential(*layers)


class SmallCNN(BlockNet):
    """Blocks conv1..conv4 (BN by default), fc and classifier; works from 8x8 to 32x32 inputs and beyond."""

    def __init__(self, in_channels=1, num_classes=10, image_size=28, batch_norm=True):
        blocks, side, channels = [], image_size, in_channels
        for i, width in enumerate(WIDTHS, start=1):
            blocks.append((f"conv{i}", conv_block(channels, width, batch_norm)))
            side, channels = pooled_size(side, 3, 1, ceil=True), width
        blocks += [
            ("fc", nn.Sequential(nn.Flatten(), nn.Linear(channels * side * side, HIDDEN), nn.ReLU(inplace=True))),
            ("classifier", nn.Linear(HIDDEN, num_classes)),
        ]
        super().__init__(blocks)
