"""A multilayer perceptron in named blocks, for feature vectors (data.dataset: synthetic).

FedProx trained multinomial logistic regression on synthetic(alpha, beta); a single linear block would leave the
personalised algorithms nothing to split (FedPer would keep the whole model, FedCMD would have one candidate), so the
model here has two hidden blocks before the same linear classifier.
"""
from torch import nn

from fedcmd_plugin.models.blocks import BlockNet

HIDDEN = (64, 32)


class MLP(BlockNet):
    """Blocks fc1 (flatten, linear, ReLU), fc2 (linear, ReLU) and classifier (linear). Inputs are flattened, so it
    takes feature vectors (in_channels features and image_size 1, as data sets of vectors describe themselves) and
    small images alike."""

    def __init__(self, in_channels=60, num_classes=10, image_size=1, hidden=HIDDEN):
        first, second = hidden
        super().__init__([
            ("fc1", nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * image_size, first),
                                  nn.ReLU(inplace=True))),
            ("fc2", nn.Sequential(nn.Linear(first, second), nn.ReLU(inplace=True))),
            ("classifier", nn.Linear(second, num_classes)),
        ])
