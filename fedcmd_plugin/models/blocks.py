"""Networks as an ordered list of named blocks, so FedCMD can score, split and personalise whole blocks."""
from torch import nn

from fedcmd_plugin.errors import ConfigError

CLASSIFIER = "classifier"


class BlockNet(nn.Module):
    """A network applying named blocks in order; the last block is the classifier head.

    State-dict keys look like ``blocks.<block>.<...>``, which lets every parameter and buffer be mapped back to
    the block that owns it.
    """

    def __init__(self, blocks):
        super().__init__()
        blocks = list(blocks)
        if not blocks or blocks[-1][0] != CLASSIFIER:
            raise ValueError(f"the last block must be named {CLASSIFIER!r}")
        self.blocks = nn.ModuleDict(blocks)

    @property
    def block_names(self):
        """Block names in the order the forward pass applies them."""
        return list(self.blocks.keys())

    def forward(self, x, return_blocks=False):
        """Logits, or ``(logits, outputs of each block)`` from the same pass so scoring costs no extra forward."""
        outputs = []
        for block in self.blocks.values():
            x = block(x)
            if return_blocks:
                outputs.append(x)
        return (x, outputs) if return_blocks else x

    def block_of(self, param_name):
        """The block owning a state-dict key (parameter or buffer); a leading wrapper prefix is tolerated."""
        parts = param_name.split(".")
        for i, part in enumerate(parts[:-1]):
            if part == "blocks" and parts[i + 1] in self.blocks:
                return parts[i + 1]
        raise KeyError(f"{param_name!r} belongs to no block of {type(self).__name__} ({', '.join(self.block_names)})")


def pooled_size(size, kernel, padding, ceil=False):
    """Side length after a stride-1 convolution followed by 2x2 max pooling; errors name `image_size`."""
    convolved = size + 2 * padding - kernel + 1
    pooled = -(-convolved // 2) if ceil else convolved // 2
    if pooled < 1:
        raise ConfigError(f"image_size: {size} pixels is too small for this model's convolutions")
    return pooled
