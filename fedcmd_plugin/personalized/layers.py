"""Splitting a model's state-dict keys by block: before / personalized / after, and BatchNorm keys for FedBN."""
from torch import nn

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _state_keys(model_or_state_keys):
    """State-dict keys of a module, or the given keys as a list."""
    if isinstance(model_or_state_keys, nn.Module):
        return list(model_or_state_keys.state_dict().keys())
    return list(model_or_state_keys)


def keys_of_blocks(keys, block_of, blocks):
    """The keys (in block order, then key order) owned by any of `blocks`."""
    order = {name: i for i, name in enumerate(blocks)}
    owned = [key for key in keys if block_of(key) in order]
    return sorted(owned, key=lambda key: order[block_of(key)])


def split_keys(model_or_state_keys, block_of, block_names, personalized_block):
    """Keys of the blocks before, of, and after the personalized block (each list in block order)."""
    block_names = list(block_names)
    if personalized_block not in block_names:
        raise ValueError(f"personalized block {personalized_block!r} is not one of {', '.join(block_names)}")
    keys = _state_keys(model_or_state_keys)
    position = block_names.index(personalized_block)
    return (
        keys_of_blocks(keys, block_of, block_names[:position]),
        keys_of_blocks(keys, block_of, [personalized_block]),
        keys_of_blocks(keys, block_of, block_names[position + 1:]),
    )


def bn_keys(model):
    """State-dict keys of every BatchNorm parameter and buffer (the keys FedBN keeps local)."""
    owned = set()
    for name, module in model.named_modules():
        if isinstance(module, BATCH_NORMS):
            owned.update(f"{name}.{key}" if name else key for key in module.state_dict())
    return [key for key in model.state_dict() if key in owned]
