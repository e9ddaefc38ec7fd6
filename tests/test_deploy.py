"""Deployment files: the Kubernetes manifests, docker-compose.yml and the Dockerfile.

The manifests are rendered with `kubectl kustomize` and every object is read into the official Kubernetes
Python client's models; the compose file is checked with `docker-compose config`. Both tools are needed
(the tests are skipped, saying so, where one is missing).
"""
import copy
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
K8S_DIR = REPO / "kubernetes"
COMPOSE_FILE = REPO / "docker-compose.yml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

IMAGE = "fedcmd-plugin:0.1.0"
UID = 10001
SERVER_PORT = 22999
CLIENT_PORT = 23000
NAMESPACE = "fedcmd"
K8S_CONFIG_DIR = "/app/k8s-config"
K8S_SECRETS_DIR = "/app/secrets"
SECRET_KEYS = ("remote.tls.ca", "remote.tls.cert", "remote.tls.key", "remote.operator_token", "remote.server_token")
# The files of `fedcmd-plugin remote certs` each role needs, and no more ({i}: every client's).
ROLE_FILES = {
    "server": {"ca.pem", "server.pem", "server-key.pem", "operator.token", "server.token"},
    "client": {"ca.pem", "client-{i}.pem", "client-{i}-key.pem", "server.token"},
    "trigger": {"ca.pem", "operator.pem", "operator-key.pem", "operator.token"},
}



def run_tool(args):
    # The compose file's own defaults are checked, not whatever FEDCMD_* variables the shell happens to hold.
    env = {key: value for key, value in os.environ.items() if not key.startswith("FEDCMD_")}
    return subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)


def secret_files(command):
    """{config key: path} of the certificate and token files a command names (token values are file:PATH)."""
    found = {}
    for item in command:
        key, _, value = item.partition("=")
        if key in SECRET_KEYS:
            found[key] = value[len("file:"):] if value.startswith("file:") else value
    return found


def check_secured(command, role):
    """The command runs mutual TLS with both certificate files and the tokens its role needs, from files."""
    files = secret_files(command)
    tokens = {"server": {"remote.operator_token", "remote.server_token"}, "client": {"remote.server_token"},
              "trigger": {"remote.operator_token"}}[role]
    assert set(files) == {"remote.tls.ca", "remote.tls.cert", "remote.tls.key", *tokens}, (role, files)
    assert override(command, "remote.tls.mutual") is True, role
    assert all(item.partition("=")[2].startswith("file:") for item in command
               if item.partition("=")[0] in tokens), f"{role}: tokens are read from mounted files"
    return files


def expand(names, count):
    return {name.replace("{i}", str(i)) for name in names for i in range(count)}


def override(command, key):
    """The value of `key=value` in a command line, parsed like the CLI does (a YAML scalar or list)."""
    values = [item.split("=", 1)[1] for item in command if item.startswith(key + "=")]
    assert len(values) == 1, f"expected exactly one {key}=... in {command}"
    return yaml.safe_load(values[0])


# --------------------------------------------------------------------------------------------- Kubernetes


@pytest.fixture(scope="module")
def rendered():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: it renders kubernetes/ (kubectl kustomize)")
    result = run_tool([kubectl, "kustomize", str(K8S_DIR)])
    assert result.returncode == 0, f"kubectl kustomize kubernetes/ failed:\n{result.stderr}"
    objects = [obj for obj in yaml.safe_load_all(result.stdout) if obj]
    assert objects, "kustomize rendered nothing"
    return objects


def one(objects, kind, component=None):
    found = [obj for obj in objects if obj["kind"] == kind
             and (component is None
                  or obj["metadata"].get("labels", {}).get("app.kubernetes.io/component") == component)]
    assert len(found) == 1, f"expected one {kind} {component or ''}, found {len(found)}"
    return found[0]


def model_name(obj):
    """`apps/v1` + `StatefulSet` -> `V1StatefulSet`, `v1` + `Service` -> `V1Service`."""
    version = obj["apiVersion"].split("/")[-1]
    return version[0].upper() + version[1:] + obj["kind"]


def drop_newer_fields(obj):
    """A copy of obj without the fields newer than the pinned Kubernetes client (11.0.0, API 1.15).

    Only `securityContext.seccompProfile` (pod and container level); the tests check it on the raw objects.
    """
    obj = copy.deepcopy(obj)
    for spec in pod_specs(obj):
        spec.get("securityContext", {}).pop("seccompProfile", None)
        for container in spec.get("containers", []) + spec.get("initContainers", []):
            container.get("securityContext", {}).pop("seccompProfile", None)
    return obj


def pod_specs(obj):
    spec = obj.get("spec", {})
    return [spec["template"]["spec"]] if "template" in spec else []


def test_every_object_is_a_valid_kubernetes_model(rendered):
    kubernetes_client = pytest.importorskip("kubernetes.client")
    api = kubernetes_client.ApiClient()
    kinds = set()
    for obj in rendered:
        name = model_name(obj)
        assert hasattr(kubernetes_client, name), f"{obj['kind']} {obj['metadata']['name']}: no model {name}"
        model = api._ApiClient__deserialize(obj, name)
        assert type(model).__name__ == name
        # The models drop keys they do not know: a round trip that loses or changes anything means a
        # misspelt field, a field at the wrong level or a value of the wrong type.
        expected = drop_newer_fields(obj)
        assert api.sanitize_for_serialization(model) == expected, \
            f"{obj['kind']} {obj['metadata']['name']} has fields the Kubernetes API does not know"
        kinds.add(obj["kind"])
    assert {"Namespace", "ConfigMap", "Deployment", "StatefulSet", "Service", "Job", "NetworkPolicy"} <= kinds


def test_everything_lives_in_the_fedcmd_namespace(rendered):
    namespace = one(rendered, "Namespace")
    assert namespace["metadata"]["name"] == NAMESPACE
    assert namespace["metadata"]["labels"].get("pod-security.kubernetes.io/enforce") == "restricted"
    for obj in rendered:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]["name"]


def all_containers(spec):
    return spec.get("initContainers", []) + spec["containers"]


def test_every_pod_runs_as_the_image_user_with_limits(rendered):
    workloads = [obj for obj in rendered if obj["kind"] in ("Deployment", "StatefulSet", "Job")]
    assert len(workloads) == 3
    for obj in workloads:
        spec = obj["spec"]["template"]["spec"]
        pod_security = spec.get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True, obj["metadata"]["name"]
        assert pod_security.get("runAsUser") == UID, obj["metadata"]["name"]
        assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault"
        assert spec.get("automountServiceAccountToken") is False, "pods do not use the Kubernetes API"
        for container in all_containers(spec):
            where = f"{obj['metadata']['name']}/{container['name']}"
            assert container["image"] == IMAGE, where
            assert container["imagePullPolicy"] == "IfNotPresent", where
            security = container.get("securityContext", {})
            assert security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is True, where
            assert security.get("runAsUser", pod_security.get("runAsUser")) not in (None, 0), where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("privileged") in (None, False), where
            assert "ALL" in security.get("capabilities", {}).get("drop", []), where
            resources = container.get("resources", {})
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(section, {})), f"{where}: {section}"


def matches(selector, labels):
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def test_server_service_selects_the_server_pods(rendered):
    deployment = one(rendered, "Deployment")
    service = next(obj for obj in rendered if obj["kind"] == "Service"
                   and obj["metadata"]["name"] == "fedcmd-server")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["replicas"] == 1
    assert matches(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    assert matches(service["spec"]["selector"], pod_labels), "the server Service selects no server pod"
    clients = one(rendered, "StatefulSet")
    assert not matches(service["spec"]["selector"], clients["spec"]["template"]["metadata"]["labels"]), \
        "the server Service also selects client pods"

    container = one_container(deployment)
    assert container["command"][:3] == ["fedcmd-plugin", "remote", "server"]
    port = single_port(service)
    assert port["port"] == SERVER_PORT
    assert target_container_port(container, port["targetPort"]) == SERVER_PORT
    assert override(container["command"], "remote.server_port") == SERVER_PORT


def one_container(obj):
    containers = obj["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def single_port(service):
    ports = service["spec"]["ports"]
    assert len(ports) == 1
    return ports[0]


def target_container_port(container, target):
    """The containerPort a Service's targetPort (a number or a port name) points at."""
    for port in container.get("ports", []):
        if target in (port["containerPort"], port.get("name")):
            return port["containerPort"]
    raise AssertionError(f"targetPort {target!r} names no port of container {container['name']}")


def test_headless_client_service_selects_the_statefulset_pods(rendered):
    statefulset = one(rendered, "StatefulSet")
    service_name = statefulset["spec"]["serviceName"]
    service = next((obj for obj in rendered if obj["kind"] == "Service"
                    and obj["metadata"]["name"] == service_name), None)
    assert service is not None, f"the StatefulSet's serviceName {service_name!r} names no Service"
    assert service_name == "fedcmd-client"
    assert service["spec"].get("clusterIP") == "None", "the client Service must be headless"
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert matches(statefulset["spec"]["selector"]["matchLabels"], pod_labels)
    assert matches(service["spec"]["selector"], pod_labels), "the client Service selects no client pod"
    deployment = one(rendered, "Deployment")
    assert not matches(service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])

    container = one_container(statefulset)
    command = container["command"]
    assert command[:3] == ["fedcmd-plugin", "remote", "client"]
    assert "--index" not in command, "each pod takes its index from its hostname (fedcmd-client-<i>)"
    port = single_port(service)
    assert port["port"] == CLIENT_PORT
    assert target_container_port(container, port["targetPort"]) == CLIENT_PORT
    assert override(command, "remote.client_port") == CLIENT_PORT
    assert override(command, "remote.server_address") == f"fedcmd-server:{SERVER_PORT}"


def test_network_policies_admit_only_the_deployments_pods(rendered):
    pods = {kind: obj["spec"]["template"]["metadata"]["labels"]
            for kind in ("Deployment", "StatefulSet", "Job") for obj in [one(rendered, kind)]}
    policies = [obj for obj in rendered if obj["kind"] == "NetworkPolicy"]
    for kind, port, callers in (("Deployment", SERVER_PORT, ("StatefulSet", "Job")),
                                ("StatefulSet", CLIENT_PORT, ("Deployment", "Job"))):
        guarding = [policy for policy in policies if matches(policy["spec"]["podSelector"]["matchLabels"], pods[kind])]
        assert len(guarding) == 1, f"no NetworkPolicy selects the {kind}'s pods"
        (rule,) = guarding[0]["spec"]["ingress"]
        assert [p["port"] for p in rule["ports"]] == [port]
        for caller in callers:
            assert any(matches(peer["podSelector"]["matchLabels"], pods[caller]) for peer in rule["from"]), \
                f"the {caller}'s pods cannot reach the {kind}'s pods"
            assert all("namespaceSelector" not in peer and "ipBlock" not in peer for peer in rule["from"])


def expected_client_addresses(rendered):
    statefulset = one(rendered, "StatefulSet")
    name, service = statefulset["metadata"]["name"], statefulset["spec"]["serviceName"]
    return [f"{name}-{i}.{service}:{CLIENT_PORT}" for i in range(statefulset["spec"]["replicas"])]


def test_trigger_job_addresses_every_client_pod(rendered):
    job = one(rendered, "Job")
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] in ("Never", "OnFailure")
    trigger = one_container(job)
    command = trigger["command"]
    assert command[:3] == ["fedcmd-plugin", "remote", "trigger"]
    clients = expected_client_addresses(rendered)
    assert len(clients) == 2
    assert override(command, "remote.client_addresses") == clients
    server_service = next(obj for obj in rendered if obj["kind"] == "Service"
                          and obj["metadata"]["name"] == "fedcmd-server")
    server_address = f"{server_service['metadata']['name']}:{single_port(server_service)['port']}"
    assert override(command, "remote.server_address") == server_address
    # The init container waits for exactly the addresses the trigger is about to use.
    (wait,) = spec["initContainers"]
    assert wait["args"] == [server_address] + clients


def test_pods_read_the_generated_config_map(rendered):
    config_map = one(rendered, "ConfigMap")
    assert config_map["metadata"]["name"].startswith("fedcmd-config-"), "the name carries kustomize's hash"
    (file_name,) = config_map["data"]
    assert config_map["data"][file_name] == (K8S_DIR / "config" / file_name).read_text(encoding="utf-8")
    for obj in rendered:
        if obj["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        spec = obj["spec"]["template"]["spec"]
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        container = one_container(obj)
        mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
        mount = mounts.get(K8S_CONFIG_DIR)
        assert mount is not None, f"{obj['metadata']['name']}: config not mounted at {K8S_CONFIG_DIR}"
        assert volumes[mount["name"]]["configMap"]["name"] == config_map["metadata"]["name"]
        assert container["command"][3] == f"{K8S_CONFIG_DIR}/{file_name}"


def test_k8s_config_is_a_valid_run_config_for_the_client_count(rendered):
    config_file = K8S_DIR / "config" / "fedavg.yaml"
    tree = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    assert "extends" not in tree, "the ConfigMap holds one file: it cannot extend another"
    replicas = one(rendered, "StatefulSet")["spec"]["replicas"]
    assert tree["data"]["num_of_clients"] == replicas, "one data partition per client pod"
    assert tree["server"]["clients_per_round"] <= replicas
    config = pytest.importorskip("fedcmd_plugin.config")
    conf = config.load_config(config_file)
    assert conf.algorithm == tree["algorithm"]
    assert conf.server.rounds == tree["server"]["rounds"]


def role_of(obj):
    return {"Deployment": "server", "StatefulSet": "client", "Job": "trigger"}[obj["kind"]]


def test_pods_mount_only_their_own_certificates_and_tokens(rendered):
    replicas = one(rendered, "StatefulSet")["spec"]["replicas"]
    for obj in rendered:
        if obj["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        role, spec = role_of(obj), obj["spec"]["template"]["spec"]
        container = one_container(obj)
        files = check_secured(container["command"], role)
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == K8S_SECRETS_DIR)
        assert mount.get("readOnly") is True, role
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])["secret"]
        assert volume["secretName"] == "fedcmd-secrets"
        assert volume["defaultMode"] & 0o007 == 0, f"{role}: secret files are not world-readable"
        items = {item["path"] for item in volume["items"]}
        assert all(item["key"] == item["path"] for item in volume["items"])
        assert items == expand(ROLE_FILES[role], replicas), role
        for key, path in files.items():
            assert path.startswith(K8S_SECRETS_DIR + "/"), (role, key)
            assert expand({path[len(K8S_SECRETS_DIR) + 1:].replace("{index}", "{i}")}, replicas) <= items, (role, key)


def test_server_reaches_exactly_the_client_pods(rendered):
    command = one_container(one(rendered, "Deployment"))["command"]
    assert override(command, "remote.client_addresses") == expected_client_addresses(rendered)


# ------------------------------------------------------------------------------------------ docker compose


@pytest.fixture(scope="module")
def compose():
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed: it validates docker-compose.yml")
    quiet = run_tool([tool, "-f", str(COMPOSE_FILE), "config", "-q"])
    assert quiet.returncode == 0, f"docker-compose config -q failed:\n{quiet.stderr}"
    result = run_tool([tool, "-f", str(COMPOSE_FILE), "config"])
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def client_services(compose):
    """{index: service name} for every service running `fedcmd-plugin remote client`."""
    clients = {}
    for name, service in compose["services"].items():
        command = service.get("command", [])
        if command[:3] == ["fedcmd-plugin", "remote", "client"]:
            index = int(command[command.index("--index") + 1])
            assert index not in clients, f"{name} and {clients.get(index)} share --index {index}"
            clients[index] = name
    return clients


def test_compose_file_validates(compose):
    assert set(compose["services"]) >= {"server", "client0", "client1", "trigger"}


def test_compose_services_share_one_image_and_network(compose):
    networks = None
    for name, service in compose["services"].items():
        assert service["image"] == IMAGE, name
        assert service["build"]["dockerfile"] == "docker/Dockerfile", name
        assert Path(service["build"]["context"]).resolve() == REPO, name
        assert service.get("user") in (None, str(UID), f"{UID}:{UID}"), f"{name} overrides the image user"
        # Remote traffic stays on the compose network: nothing is published on the host's interfaces.
        for port in service.get("ports", []):
            text = str(port.get("host_ip", "") if isinstance(port, dict) else port)
            assert text.startswith("127.0.0.1"), f"{name} publishes {port} beyond loopback"
        service_networks = set(service["networks"])
        networks = service_networks if networks is None else networks & service_networks
    assert networks, "the services share no network"
    assert all(compose["networks"][net].get("driver", "bridge") == "bridge" for net in networks)


def test_compose_server_and_clients(compose):
    server = compose["services"]["server"]
    command = server["command"]
    assert command[:4] == ["fedcmd-plugin", "remote", "server", "configs/fedavg_digits.yaml"]
    assert override(command, "remote.server_port") == SERVER_PORT
    assert str(SERVER_PORT) in [str(port) for port in server.get("expose", [])]
    assert any(str(volume).split(":")[0] == "runs" and str(volume).split(":")[1] == "/app/runs"
               if isinstance(volume, str) else
               (volume.get("source") == "runs" and volume.get("target") == "/app/runs")
               for volume in server["volumes"]), "the server's run folders go to the runs volume"
    assert "runs" in compose.get("volumes", {})

    clients = client_services(compose)
    assert sorted(clients) == list(range(len(clients))) and len(clients) >= 2
    for index, name in clients.items():
        service = compose["services"][name]
        command = service["command"]
        assert command[3] == "configs/fedavg_digits.yaml", name
        assert override(command, "remote.client_port") == CLIENT_PORT, name
        assert override(command, "remote.server_address") == f"server:{SERVER_PORT}", name
        assert str(CLIENT_PORT) in [str(port) for port in service.get("expose", [])], name

    # Server, clients and trigger agree on the data split, with one partition per client service.
    for name in ["server", "trigger", *clients.values()]:
        command = compose["services"][name]["command"]
        assert override(command, "data.num_of_clients") == len(clients), name
        assert override(command, "server.clients_per_round") <= len(clients), name


def test_compose_trigger_waits_for_and_addresses_every_client(compose):
    trigger = compose["services"]["trigger"]
    command = trigger["command"]
    assert command[:4] == ["fedcmd-plugin", "remote", "trigger", "configs/fedavg_digits.yaml"]
    clients = client_services(compose)
    assert override(command, "remote.client_addresses") == \
        [f"{clients[i]}:{CLIENT_PORT}" for i in sorted(clients)]
    assert override(command, "remote.server_address") == f"server:{SERVER_PORT}"
    depends = trigger["depends_on"]
    assert set(depends) == {"server", *clients.values()}
    if isinstance(depends, dict):
        for name, condition in depends.items():
            assert condition.get("condition") == "service_healthy", name
            assert "healthcheck" in compose["services"][name], name
    assert trigger.get("restart", "no") == "no", "the trigger runs once"


def test_compose_config_file_ships_with_the_image(compose):
    config_file = REPO / "configs" / "fedavg_digits.yaml"
    assert config_file.is_file(), \
        "docker-compose.yml runs configs/fedavg_digits.yaml, copied into the image from configs/"
    config = pytest.importorskip("fedcmd_plugin.config")
    for name, service in compose["services"].items():
        # The run settings each service passes must be valid keys and values (remote.* is the CLI's part).
        settings = [item for item in service["command"]
                    if "=" in item and not item.startswith(("remote.", "-"))]
        conf = config.load_config(config_file, settings)
        assert conf.data.num_of_clients == len(client_services(compose)), name


def compose_role(service):
    return service["command"][2]


def test_compose_services_mount_only_their_own_certificates_and_tokens(compose):
    clients = client_services(compose)
    declared = compose.get("secrets", {})
    for name, service in compose["services"].items():
        role = compose_role(service)
        files = check_secured(service["command"], role)
        sources = {entry["source"] if isinstance(entry, dict) else entry for entry in service.get("secrets", [])}
        wanted = ROLE_FILES[role]
        if role == "client":
            index = next(i for i, client in clients.items() if client == name)
            wanted = {file.replace("{i}", str(index)) for file in wanted}
        assert {Path(declared[source]["file"]).name for source in sources} == wanted, name
        for source in sources:
            assert Path(declared[source]["file"]).parent.resolve() == (REPO / "secrets").resolve(), source
        for key, path in files.items():
            assert path.startswith("/run/secrets/") and path.split("/")[-1] in sources, (name, key)
    server = compose["services"]["server"]["command"]
    assert override(server, "remote.client_addresses") == [f"{clients[i]}:{CLIENT_PORT}" for i in sorted(clients)]


def test_secrets_stay_out_of_the_image_and_the_repository():
    ignored = {line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()}
    assert "secrets" in ignored
    assert "/secrets/" in (REPO / ".gitignore").read_text(encoding="utf-8").splitlines()


# ---------------------------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions():
    """(INSTRUCTION, arguments) pairs with continuation lines joined and comments dropped."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\s*\n", " ", "\n".join(lines))
    result = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, args = line.strip().partition(" ")
            result.append((instruction.upper(), args.strip()))
    return result


def test_dockerfile_pins_its_base_image():
    froms = [args for instruction, args in dockerfile_instructions() if instruction == "FROM"]
    assert froms, "no FROM"
    for args in froms:
        image = args.split()[0]
        assert "$" not in image, "the base image is written out, not taken from a build argument"
        name, _, tag = image.split("@")[0].rpartition(":")
        assert name and tag and "/" not in tag, f"{image} is not pinned by tag"
        assert tag != "latest", f"{image} uses the moving tag latest"
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{image}: pin a full version, not {tag}"


def test_dockerfile_installs_pinned_torch_and_the_project():
    instructions = dockerfile_instructions()
    runs = [args for instruction, args in instructions if instruction == "RUN"]
    args = [args for instruction, args in instructions if instruction == "ARG"]
    assert "TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in args
    torch_installs = [run for run in runs if "torch==" in run]
    assert len(torch_installs) == 1
    assert "torch==2.14.1" in torch_installs[0] and "torchvision==0.29.1" in torch_installs[0]
    assert "${TORCH_INDEX_URL}" in torch_installs[0] or "$TORCH_INDEX_URL" in torch_installs[0]
    project = [run for run in runs if re.search(r"pip install (--?[\w-]+ )*\.(\s|$)", run)]
    assert project, "the project is installed with `pip install .`"
    assert all("-e" not in run.split() and "--editable" not in run for run in runs), \
        "an editable install does not ship the package's .pth file"
    assert all("--no-cache-dir" in run for run in runs if "pip install" in run)
    # torch comes first so that the project's install does not pull a CUDA build from PyPI.
    assert runs.index(torch_installs[0]) < runs.index(project[0])


def test_dockerfile_runs_as_a_non_root_user_in_app():
    instructions = dockerfile_instructions()
    users = [args for instruction, args in instructions if instruction == "USER"]
    assert users, "the image must set a USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), "the final USER is root"
    assert user == str(UID), "the Kubernetes manifests run as this uid"
    workdirs = [args for instruction, args in instructions if instruction == "WORKDIR"]
    assert workdirs[-1] == "/app"
    copies = [args for instruction, args in instructions if instruction == "COPY"]
    assert any(args.split()[-1].rstrip("/") in ("/app/configs", "configs") for args in copies)
    volumes = " ".join(args for instruction, args in instructions if instruction == "VOLUME")
    assert "/app/runs" in volumes


def test_dockerfile_copies_existing_files_not_ignored():
    ignored = {line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", "runs", "logs", "data", ".venv", "benchmarks/results"} <= ignored
    assert any(entry.endswith("__pycache__") for entry in ignored)
    needed = {"setup.py", "README.md", "fedcmd_plugin", "fedcmd_plugin_protobuf.pth", "configs"}
    assert not needed & ignored, "the build needs these files"
    for instruction, args in dockerfile_instructions():
        if instruction == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                if not source.startswith("--"):
                    assert (REPO / source).exists(), f"COPY {source}: missing from the repository"
    assert (REPO / "setup.py").is_file() and (REPO / "README.md").is_file(), "setup.py reads README.md"
