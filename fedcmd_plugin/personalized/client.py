"""Client machinery shared by the personalised algorithms: a signature of the personal layers for the server's
similarity weights (their update in the round, or their values, one row per output unit) without the layers
themselves leaving."""
import torch

from fedcmd_plugin import aggregate as agg
from fedcmd_plugin.federation.client import FederatedClient

SIGNATURES = ("update", "value")


class PersonalizedClient(FederatedClient):
    def download(self, dispatch):
        super().download(dispatch)
        keys = self.signature_keys(dispatch)
        self.signature_start = agg.row_matrix(self.model.state_dict(), keys).clone() if keys else None

    def release(self):
        super().release()
        self.signature_start = None

    def signature_keys(self, dispatch):
        return list(dispatch.meta.get("signature_keys", []))

    def make_upload(self, dispatch):
        upload = super().make_upload(dispatch)
        keys = self.signature_keys(dispatch)
        kind = dispatch.meta.get("signature")
        if keys and kind in SIGNATURES:
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
