"""LeNet-5, the model of FedCMD's label-skew benchmarks, split into the five blocks FedCMD votes on."""
from torch import nn

from fedcmd_plugin.models.blocks import BlockNet, pooled_size

SMALL_IMAGE = 28  # below this the convolutions are padded, so 8x8 digits still leave a feature map


def conv_block(in_channels, out_channels, padding, batch_norm):
    """5x5 convolution, optional BatchNorm, ReLU, 2x2 max pooling."""
    layers = [nn.Conv2d(in_channels, out_channels, 5, padding=padding)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
    return nn.Sequential(*layers)


class LeNet5(BlockNet):
    """LeNet-5 with blocks conv1, conv2, fc1, fc2, classifier; `batch_norm` adds BN after each convolution."""

    def __init__(self, in_channels=1, num_classes=10, image_size=28, batch_norm=False):
        padding = 2 if image_size < SMALL_IMAGE else 0
        side = pooled_size(pooled_size(image_size, 5, padding), 5, padding)
        super().__init__([
            ("conv1", conv_block(in_channels, 6, padding, batch_norm)),
            ("conv2", conv_block(6, 16, padding, batch_norm)),
            ("fc1", nn.Sequential(nn.Flatten(), nn.Linear(16 * side * side, 120), nn.ReLU(inplace=True))),
            ("fc2", nn.Sequential(nn.Linear(120, 84), nn.ReLU(inplace=True))),
            ("classifier", nn.Linear(84, num_classes)),
        ])
