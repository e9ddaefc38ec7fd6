"""FedBN, FedPer, FedRep, LG-FedAvg, FedBABU, pFedSim and Local-only: what each keeps on the client, what it
averages and what it trains, on a three-block model and fixed batches in this process. The rounds are the real
ones (selection, dispatch, local training, upload, aggregation) without EasyFL's run around them; expected values
are weighted means, cosines and SGD steps written out here."""
import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from baseline_helpers import CLIENT_CONF, LR, FixedBatches, assert_states_close, batches, dispatch, make_client
from torch import nn

from fedcmd_plugin import ConfigError, algorithms, load_config
from fedcmd_plugin.baselines.fedrep import FedRepClient, FedRepSettings
from fedcmd_plugin.federation.fleet import LocalFleet
from fedcmd_plugin.federation.messages import Upload
from fedcmd_plugin.federation.server import FederatedServer
from fedcmd_plugin.models import BlockNet
from fedcmd_plugin.personalized.client import SignatureSettings

HEAD = ["blocks.classifier.weight", "blocks.classifier.bias"]
FC1 = ["blocks.fc1.0.weight", "blocks.fc1.0.bias"]
FC2 = ["blocks.fc2.0.weight", "blocks.fc2.0.bias"]
BN = [f"blocks.fc1.1.{name}" for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
DATA = [batches(1, seed=1), batches(2, seed=2), batches(3, seed=3)]  # 4, 8 and 12 samples
SAMPLES = [4, 8, 12]


def block_net(batch_norm=False):
    """fc1 -> fc2 -> classifier on 3 features and 2 classes, always the same initial weights (tanh, so that no unit
    is dead and every block learns; BatchNorm in fc1 for FedBN)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        first = [nn.Linear(3, 4), *([nn.BatchNorm1d(4)] if batch_norm else []), nn.Tanh()]
        return BlockNet([("fc1", nn.Sequential(*first)), ("fc2", nn.Sequential(nn.Linear(4, 4), nn.Tanh())),
                         ("classifier", nn.Linear(4, 2))])


def bare_setup(self, model, clients):
    """FederatedServer.setup without the recorder, the data summary and worker processes: the clients are local
    objects sharing one workspace model, as in a standalone run with one worker."""
    self.workspace = model
    self.initial_state = {key: value.detach().clone() for key, value in model.state_dict().items()}
    self.fleet = LocalFleet(clients, model, self.initial_state)
    self.client_order = self.fleet.client_ids()
    self.selected_clients, self.stragglers = [], {}


@pytest.fixture
def federation(monkeypatch):
    """federation(algorithm, data, *overrides, model=None) -> (server, clients): one client per entry of `data`
    (fixed batches), every client in every round, one local epoch unless overridden."""
    monkeypatch.setattr(FederatedServer, "setup", bare_setup)

    def build(algorithm, data, *overrides, model=None):
        entry = algorithms()[algorithm]
        conf = load_config(None, [f"algorithm={algorithm}", f"server.clients_per_round={len(data)}",
                                  "server.random_selection=false", "client.local_epoch=1", *overrides])
        server = entry.server(conf)
        server.rank, server.world = 0, 1
        server.recorder = SimpleNamespace(image=lambda *args: None)  # similarity heat maps go nowhere
        clients = [entry.client(f"c{i:03d}", CLIENT_CONF, FixedBatches(d), None, "cpu") for i, d in enumerate(data)]
        model = model or block_net()
        server.setup(model, clients)
        server._model = copy.deepcopy(model)  # what EasyFL's start does
        return server, clients

    return build


def play(server, round_index):
    """One round of the server's own `train`; {cid: upload}."""
    server._current_round = round_index
    server.train()
    return {upload.cid: upload for upload in server.round_uploads}


def global_state(server):
    return {key: value.clone() for key, value in server._model.state_dict().items()}


def used_model(server, client):
    """The state of the model `client` is tested with now (after any fine-tuning its algorithm asks for)."""
    model = client.personalised_model(server.dispatches([client.cid])[client.cid])
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def weighted_mean(states, weights, key):
    return sum(w * state[key] for w, state in zip(weights, states)) / sum(weights)


def assert_sample_weighted_means(server, uploads, keys, weights=SAMPLES):
    found = global_state(server)
    states = list(uploads.values())
    for key in keys:
        assert torch.allclose(found[key], weighted_mean([u.state for u in states], weights, key), atol=1e-6), key


def assert_unchanged(server, start, keys):
    found = global_state(server)
    assert all(torch.equal(found[key], start[key]) for key in keys)


def sgd_phases(start, data, phases):
    """Plain SGD (lr LR) from `start`, phase after phase: [(parameter names that move, epochs)]."""
    model = block_net()
    model.load_state_dict(start)
    parameters = dict(model.named_parameters())
    for names, epochs in phases:
        for _ in range(epochs):
            for x, y in data:
                model.zero_grad()
                F.cross_entropy(model(x), y).backward()
                with torch.no_grad():
                    for name in names:
                        parameters[name] -= LR * parameters[name].grad
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


# ------------------------------------------------------------------------------------------------------- FedBN
def test_fedbn_keeps_batch_norm_weights_and_statistics_local_and_averages_the_rest(federation):
    server, clients = federation("fedbn", DATA, model=block_net(batch_norm=True))
    assert server.personal_keys() == BN  # the running statistics and the counter as well as weight and bias
    start = global_state(server)
    shared = [key for key in start if key not in BN]
    uploads = play(server, 0)
    assert all(list(upload.state) == shared for upload in uploads.values())
    assert_sample_weighted_means(server, uploads, shared)
    assert_unchanged(server, start, BN)
    means = [client.kept["blocks.fc1.1.running_mean"] for client in clients]
    assert not torch.allclose(means[0], means[1]) and not torch.allclose(means[1], means[2])

    # Each client goes on from its own statistics: one epoch a round over its 1, 2 or 3 batches counts 2, 4, 6
    # batches after two rounds (an average would have mixed the counters).
    uploads = play(server, 1)
    assert [client.kept["blocks.fc1.1.num_batches_tracked"].item() for client in clients] == [2, 4, 6]
    assert_sample_weighted_means(server, uploads, shared)
    for client in clients:
        used, merged = used_model(server, client), global_state(server)
        assert all(torch.equal(used[key], client.kept[key]) for key in BN)
        assert all(torch.equal(used[key], merged[key]) for key in shared)


# ------------------------------------------------------------------------------------------------------ FedPer
def assert_keeps_and_averages(server, clients, kept, shared):
    """One round: uploads carry exactly `shared`, which the server averages by samples; `kept` stays on the
    clients, differs between them and is what each client's model uses, over the averaged rest."""
    start = global_state(server)
    uploads = play(server, 0)
    assert all(sorted(upload.state) == sorted(shared) for upload in uploads.values())
    assert_sample_weighted_means(server, uploads, shared)
    assert_unchanged(server, start, kept)
    assert all(sorted(client.kept) == sorted(kept) for client in clients)
    assert not torch.allclose(clients[0].kept[kept[0]], clients[1].kept[kept[0]])
    for client in clients:
        used, merged = used_model(server, client), global_state(server)
        assert all(torch.equal(used[key], client.kept[key]) for key in kept)
        assert all(torch.equal(used[key], merged[key]) for key in shared)


def test_fedper_keeps_the_head_and_averages_the_body(federation):
    server, clients = federation("fedper", DATA)
    assert server.personal_keys() == HEAD
    assert_keeps_and_averages(server, clients, kept=HEAD, shared=FC1 + FC2)


def test_fedper_personal_blocks_are_configurable_and_the_body_mean_is_sample_weighted(federation):
    server, _ = federation("fedper", DATA[:2], "personalization.personal_blocks=[fc2,classifier]")
    assert server.personal_keys() == FC2 + HEAD
    start = global_state(server)
    uploads = [Upload("c000", 1, {key: torch.full_like(start[key], 1.0) for key in FC1}),
               Upload("c001", 3, {key: torch.full_like(start[key], 5.0) for key in FC1})]
    server.aggregate(uploads)
    merged = global_state(server)
    assert all(torch.equal(merged[key], torch.full_like(start[key], 4.0)) for key in FC1)  # (1 * 1 + 3 * 5) / 4
    assert_unchanged(server, start, FC2 + HEAD)
    unknown, _ = federation("fedper", DATA[:1], "personalization.personal_blocks=[fc9]")
    with pytest.raises(ConfigError, match="personalization.personal_blocks"):
        unknown.personal_keys()


# ------------------------------------------------------------------------------------------------------ FedRep
def test_fedrep_fits_the_head_first_then_the_body_with_the_head_fixed():
    data, model = batches(2, seed=4), block_net()
    start = {key: value.clone() for key, value in model.state_dict().items()}
    client = make_client(FedRepClient, data, model)
    upload = client.run_round(dispatch(start, FedRepSettings(1), local_epoch=3, personal_keys=HEAD))
    expected = sgd_phases(start, data, [(HEAD, 2), (FC1 + FC2, 1)])  # local_epoch - body_epochs head epochs
    assert_states_close(upload.state, {key: expected[key] for key in FC1 + FC2})
    assert_states_close(client.kept, {key: expected[key] for key in HEAD})
    # the other order moves the same parameters to different places: the phases are told apart
    reversed_order = sgd_phases(start, data, [(FC1 + FC2, 1), (HEAD, 2)])
    assert not torch.allclose(reversed_order[HEAD[0]], expected[HEAD[0]], atol=1e-4)


def test_fedrep_server_sends_the_body_epochs_keeps_the_head_and_averages_the_body(federation):
    server, clients = federation("fedrep", DATA[:2], "client.local_epoch=3", "personalization.body_epochs=2")
    start = global_state(server)
    uploads = play(server, 0)
    body = FC1 + FC2
    for client, data in zip(clients, DATA):
        expected = sgd_phases(start, data, [(HEAD, 1), (body, 2)])
        assert_states_close(uploads[client.cid].state, {key: expected[key] for key in body})
        assert_states_close(client.kept, {key: expected[key] for key in HEAD})
    assert_sample_weighted_means(server, uploads, body, SAMPLES[:2])
    assert_unchanged(server, start, HEAD)


# --------------------------------------------------------------------------------------------------- LG-FedAvg
def test_lg_fedavg_keeps_the_body_and_averages_the_head(federation):
    server, clients = federation("lg_fedavg", DATA)
    body = FC1 + FC2
    assert server.personal_keys() == body  # FedPer's split the other way round
    assert_keeps_and_averages(server, clients, kept=body, shared=HEAD)
    configured, _ = federation("lg_fedavg", DATA, "personalization.personal_blocks=[fc1]")
    assert configured.personal_keys() == FC1


# ----------------------------------------------------------------------------------------------------- FedBABU
def test_fedbabu_trains_only_the_body_in_rounds_and_fine_tunes_everything_before_testing(federation):
    server, clients = federation("fedbabu", DATA[:2])
    start = global_state(server)
    body = FC1 + FC2
    for round_index in (0, 1):
        uploads = play(server, round_index)
        for upload in uploads.values():
            assert all(torch.equal(upload.state[key], start[key]) for key in HEAD)  # never trained
            assert not torch.allclose(upload.state[FC1[0]], start[FC1[0]])
        assert_sample_weighted_means(server, uploads, body, SAMPLES[:2])
        assert_unchanged(server, start, HEAD)  # the mean of equal heads: the initial one

    # Tested after at least one epoch of fine-tuning (client.finetune_epoch is 0), on a copy of the model.
    assert server.round_settings().finetune_epoch == 1
    merged = global_state(server)
    every = [name for name, _ in block_net().named_parameters()]
    assert_states_close(used_model(server, clients[0]), sgd_phases(merged, DATA[0], [(every, 1)]))
    assert_states_close(clients[0].model.state_dict(), merged)


# ----------------------------------------------------------------------------------------------------- pFedSim
def test_pfedsim_is_fedavg_while_warming_up_then_sends_the_head_values_as_signature(federation):
    server, clients = federation("pfedsim", DATA[:2], "personalization.warmup_rounds=1")
    start = global_state(server)
    uploads = play(server, 0)
    assert server.personal_keys() == [] and server.algorithm_settings() == SignatureSettings("warmup")
    assert all(sorted(upload.state) == sorted(start) and upload.extra == {} for upload in uploads.values())
    assert_sample_weighted_means(server, uploads, list(start), SAMPLES[:2])  # the head too
    assert server.client_states == {} and all(client.kept == {} for client in clients)

    uploads = play(server, 1)
    body = FC1 + FC2
    assert server.personal_keys() == HEAD
    assert all(sorted(upload.state) == sorted(body) for upload in uploads.values())
    signatures = []
    for client in clients:  # one row per class: [W | b] of the trained head, its value rather than its update
        signature = torch.cat([client.kept[HEAD[0]], client.kept[HEAD[1]][:, None]], dim=1)
        assert torch.allclose(uploads[client.cid].extra["signature"], signature)
        signatures.append(signature.reshape(-1))
    phi = max(0.0, F.cosine_similarity(signatures[0], signatures[1], dim=0).item())
    first, second = (uploads[cid].state for cid in ("c000", "c001"))
    for cid, own, other in (("c000", first, second), ("c001", second, first)):
        received = server.dispatches([cid])[cid].state
        for key in body:  # (own + phi * other) / (1 + phi)
            assert torch.allclose(received[key], (own[key] + phi * other[key]) / (1 + phi), atol=1e-6), key
    assert_sample_weighted_means(server, uploads, body, SAMPLES[:2])  # the global body, for newcomers


def test_pfedsim_weights_the_bodies_by_the_clipped_cosine_of_the_signatures(federation):
    server, _ = federation("pfedsim", DATA, "personalization.warmup_rounds=1")
    server._current_round = 1
    assert server.algorithm_settings() == SignatureSettings("personalised", "value", tuple(HEAD))
    start = global_state(server)
    body = FC1 + FC2
    # a and b are orthogonal, c is at cosine 0.6 from a and 0.8 from b; bodies are constants 1, 2 and 4
    cases = [("c000", 1, [1.0, 0.0], 1.0), ("c001", 1, [0.0, 1.0], 2.0), ("c002", 2, [0.6, 0.8], 4.0)]
    server.aggregate([Upload(cid, samples, {key: torch.full_like(start[key], value) for key in body},
                             extra={"signature": torch.tensor(signature)})
                      for cid, samples, signature, value in cases])
    # rows of Phi = [[1, 0, .6], [0, 1, .8], [.6, .8, 1]], each divided by its sum (sample counts do not weigh)
    expected = {"c000": (1 + 0.6 * 4) / 1.6, "c001": (2 + 0.8 * 4) / 1.8, "c002": (0.6 * 1 + 0.8 * 2 + 4) / 2.4}
    for cid, value in expected.items():
        assert sorted(server.client_states[cid]) == sorted(body)
        received = server.dispatches([cid])[cid].state
        assert all(torch.allclose(received[key], torch.full_like(start[key], value)) for key in body), cid
        assert all(torch.equal(received[key], start[key]) for key in HEAD)
    merged = global_state(server)
    assert all(torch.allclose(merged[key], torch.full_like(start[key], (1 + 2 + 2 * 4) / 4)) for key in body)
    assert_unchanged(server, start, HEAD)
    assert server.similarity.get("c000", "c002") == pytest.approx(0.6)
    assert server.similarity.get("c000", "c001") == 0.0

    # A negative cosine is clipped to 0: c001 at -a contributes nothing to a's body.
    server.client_states = {}
    server.aggregate([Upload("c000", 1, {key: torch.full_like(start[key], 1.0) for key in body},
                             extra={"signature": torch.tensor([1.0, 0.0])}),
                      Upload("c001", 1, {key: torch.full_like(start[key], 9.0) for key in body},
                             extra={"signature": torch.tensor([-1.0, 0.0])})])
    assert all(torch.allclose(server.client_states["c000"][key], torch.full_like(start[key], 1.0)) for key in body)


# -------------------------------------------------------------------------------------------------- Local-only
def final_models(federation, algorithm, data):
    """The models every client is tested with after two rounds, and the server's model then and at the start."""
    server, clients = federation(algorithm, data)
    start = global_state(server)
    rounds = [play(server, round_index) for round_index in (0, 1)]
    return [used_model(server, client) for client in clients], start, global_state(server), rounds


def test_local_only_aggregates_nothing_and_each_model_depends_only_on_its_own_data(federation):
    models, start, end, rounds = final_models(federation, "local", DATA[:2])
    assert all(upload.state == {} for uploads in rounds for upload in uploads.values())  # nothing leaves
    assert all(torch.equal(end[key], start[key]) for key in start)
    assert not torch.allclose(models[0][FC1[0]], start[FC1[0]])  # each client did train

    # Other data at the second client: the first one's model is bit for bit the same, the second's is not.
    other, *_ = final_models(federation, "local", [DATA[0], DATA[2]])
    assert all(torch.equal(other[0][key], models[0][key]) for key in start)
    assert not torch.allclose(other[1][FC1[0]], models[1][FC1[0]])
    # FedAvg with the same change moves the first client's model too: the check above tells the two apart.
    shared, *_ = final_models(federation, "fedavg", DATA[:2])
    changed, *_ = final_models(federation, "fedavg", [DATA[0], DATA[2]])
    assert not torch.allclose(shared[0][FC1[0]], changed[0][FC1[0]])
