"""Remote mode: the server and every client are separate gRPC services speaking EasyFL's own protos.

Roles (each is `fedcmd-plugin remote <role> CONFIG.yaml [key=value ...]`, all with the same config):

* **server** (`server.py`): EasyFL's ServerService (Run, Upload, Stop) plus small JSON status and stop methods.
  `Run` checks the request, builds the model and the algorithm's server from the server's own config, hands
  that server a `RemoteFleet` of the configured client services and starts the run in a background thread;
  it *returns at once* with the run id (EasyFL's behaviour). The run is the same `FederatedServer` as in
  standalone mode and writes the same run folder.
* **client** (`client.py`): EasyFL's ClientService hosting one client of the partition (`--index i`) or
  several (`--index 0-49`). `Operate` decodes the round's `Dispatch`, queues the work for the service's
  worker thread and returns at once; the result goes back through the server's `Upload`.
* **trigger** (`trigger.py`): sends `RunRequest` with the clients of `remote.client_addresses` and blocks,
  polling the status method, until the run is complete (exit 0) or failed / timed out (non-zero).
* `remote certs DIR --clients N` (`certs.py`, no config): a development CA, certificates and tokens.

Security (README, "Security model"): `transport.py` (TLS, optionally mutual, or plaintext on loopback only;
message limits from the model's size), `auth.py` (operator and server tokens, per-dispatch upload tickets),
`validation.py` (every answer checked against the request it answers before the round uses it).

Where the time limits are: `RemoteFleet` sends one `Operate` per client of a round concurrently and waits at
most `server.round_timeout` seconds for their uploads (`UploadRouter` hands each upload to the round waiting
for it). A client that fails, refuses, sends an answer that fails the checks (`rejected_uploads`) or stays
silent is left out of that round, with a warning naming it and `missing_clients` in the round's metrics; a
round without any upload ends the run with an error.

Nothing received from the network is unpickled: models travel as the plugin's tensor archives
(`fedcmd_plugin.federation.messages`), evaluation results, errors and status as JSON.
"""
