"""What the baselines share: the flat form of per-client server state and the client machinery of the regularised
objectives."""
from contextlib import contextmanager

from fedcmd_plugin import aggregate as agg
from fedcmd_plugin.errors import PluginError
from fedcmd_plugin.federation.client import FederatedClient

PERSONAL = "personal."  # kept-state names of a client's own model beside the global one (Ditto, APFL)


def flatten_states(states):
    """{cid: {key: tensor}} as one {"cid/key": tensor} dict: the shape `algorithm_state` hands to checkpoints."""
    return {f"{cid}/{key}": value for cid, state in states.items() for key, value in state.items()}


def nested_states(flat, clients):
    """`flatten_states` undone (tensors cloned); PluginError for a client that is not one of `clients`."""
    states = {}
    for name, value in flat.items():
        cid, _, key = name.partition("/")
        if cid not in clients:
            raise PluginError(f"the saved algorithm state names client {cid!r}, which is not in this run")
        states.setdefault(cid, {})[key] = value.clone()
    return states


def personal_model(kept):
    """The state dict of the client's own model held in `kept` ({} before it has trained one)."""
    return {key[len(PERSONAL):]: value for key, value in kept.items() if key.startswith(PERSONAL)}


def as_kept(state):
    """A state dict as kept entries of the client's own model (detached copies)."""
    return {PERSONAL + key: value.detach().clone() for key, value in state.items()}


def parameters_of(model):
    """Detached copies of the model's parameters by name (an anchor the training is pulled towards)."""
    return {name: p.detach().clone() for name, p in model.named_parameters()}


class RegularisedClient(FederatedClient):
    """A client whose batch loss gains weight/2 ||theta - anchor||^2 - <linear, theta> over the model's parameters
    while `regularised(...)` is active: FedProx and Ditto's personal model use the proximal term, FedDyn both."""
    regulariser = None

    @contextmanager
    def regularised(self, weight, anchor, linear=None):
        self.regulariser = (weight, anchor, linear or {})
        try:
            yield
        finally:
            self.regulariser = None  # fine-tuning before a test trains on the plain loss

    def train_batch(self, x, y, epoch, batch_index):
        loss = super().train_batch(x, y, epoch, batch_index)
        if self.regulariser is None:
            return loss
        weight, anchor, linear = self.regulariser
        parameters = dict(self.model.named_parameters())
        return loss + weight / 2 * agg.squared_distance(parameters, anchor) - agg.inner_product(parameters, linear)
