"""Client machinery shared by the personalised algorithms: a signature of the personal layers for the server's
similarity weights (their update in the round, or their values, one row per output unit) without the layers
themselves leaving."""
from dataclasses import dataclass

import torch

from fedcmd_plugin import aggregate as agg
from fedcmd_plugin.federation.client import FederatedClient
from fedcmd_plugin.federation.messages import Settings

SIGNATURES = ("update", "value")


@dataclass(frozen=True)
class SignatureSettings(Settings):
    """The settings of algorithms that weigh clients by similarity: the round's phase and, when similarity is
    measured, which signature (`update` of the layers in the round, or their `value`) of which keys to report."""
    phase: str
    signature: str | None = None
    signature_keys: tuple[str, ...] = ()

    def expected_extras(self, layout):
        if self.signature not in SIGNATURES or not self.signature_keys:
            return {}, {}
        shapes = [layout[key][1] for key in self.signature_keys if layout[key][0].startswith(("float", "bfloat"))]
        return {"signature": ("float32", agg.row_matrix_shape(shapes))}, {}


def signature_request(dispatch):
    """(kind, keys) of the signature the dispatch asks for; (None, []) when it asks for none."""
    settings = dispatch.algorithm
    if isinstance(settings, SignatureSettings) and settings.signature in SIGNATURES:
        return settings.signature, list(settings.signature_keys)
    return None, []


class PersonalizedClient(FederatedClient):
    def download(self, dispatch):
        super().download(dispatch)
        keys = self.signature_keys(dispatch)
        self.signature_start = agg.row_matrix(self.model.state_dict(), keys).clone() if keys else None

    def release(self):
        super().release()
        self.signature_start = None

    def signature_keys(self, dispatch):
        return signature_request(dispatch)[1]

    def make_upload(self, dispatch):
        upload = super().make_upload(dispatch)
        kind, keys = signature_request(dispatch)
        if keys:
            now = agg.row_matrix(self.model.state_dict(), keys)
            upload.extra["signature"] = (now - self.signature_start if kind == "update" else now).to(torch.float32)
        return upload

    def parameters_of(self, keys):
        """The model's parameters among `keys` (buffers excluded)."""
        wanted = set(keys)
        return [p for name, p in self.model.named_parameters() if name in wanted]

    def parameters_except(self, keys):
        excluded = set(keys)
        return [p for name, p in self.model.named_parameters() if name not in excluded]
