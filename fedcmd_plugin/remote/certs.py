"""`fedcmd-plugin remote certs DIR --clients N`: a development CA, certificates and tokens for one deployment.

Writes to DIR (refusing to overwrite anything):

* `ca.pem`: the CA certificate every role trusts (`remote.tls.ca`). Its private key is not kept: to add a
  client later, make a new set.
* `server.pem` / `server-key.pem` (CN fedcmd-server), `client-<i>.pem` / `client-<i>-key.pem` (CN = the client
  id, c000, ...) and `operator.pem` / `operator-key.pem` (CN fedcmd-operator, for the trigger under mutual TLS).
  Every certificate is valid for localhost and 127.0.0.1 plus the names given by --server-name /
  --client-name ({i} = the client's index), for both TLS server and client use.
* `operator.token` and `server.token`: random bearer tokens (`remote.operator_token` / `remote.server_token`).

Keys and tokens are written readable by their owner only. These are for development and tests; production
deployments bring certificates from their own CA.
"""
import datetime
import ipaddress
import os
import secrets
from pathlib import Path

from fedcmd_plugin.errors import ConfigError

LOCAL_NAMES = ("localhost", "127.0.0.1")
SERVER_CN = "fedcmd-server"
OPERATOR_CN = "fedcmd-operator"


def client_cn(index):
    from fedcmd_plugin.data.federated import client_ids

    return client_ids(index + 1)[index]


def subject(common_name):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedcmd-plugin development"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def alternative_names(names):
    from cryptography import x509

    entries = []
    for name in dict.fromkeys(names):
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def new_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def key_usage(**allowed):
    from cryptography import x509

    flags = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
             "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{flag: allowed.get(flag, False) for flag in flags})


def certificate(common_name, key, issuer_name, issuer_key, days, ca=False, names=()):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID

    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject(common_name)).issuer_name(issuer_name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if ca:
        builder = builder.add_extension(key_usage(key_cert_sign=True, crl_sign=True), critical=True)
    else:
        builder = (builder.add_extension(alternative_names(names), critical=False)
                   .add_extension(key_usage(digital_signature=True), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                         ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
    return builder.sign(issuer_key, hashes.SHA256())


def pem(obj):
    from cryptography.hazmat.primitives import serialization

    if hasattr(obj, "private_bytes"):
        return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())
    return obj.public_bytes(serialization.Encoding.PEM)


def make_certificates(folder, clients, server_names=(), client_names=(), days=365):
    """Write the files listed in the module docstring to `folder`; returns their paths."""
    if clients < 1:
        raise ConfigError(f"--clients must be at least 1; got {clients}")
    if days < 1:
        raise ConfigError(f"--days must be at least 1; got {days}")
    folder = Path(folder)
    ca_key = new_key()
    ca_cert = certificate("fedcmd-plugin development CA", ca_key, subject("fedcmd-plugin development CA"), ca_key,
                          days, ca=True)
    holders = [("server", SERVER_CN, [*LOCAL_NAMES, *server_names])]
    holders += [(f"client-{i}", client_cn(i), [*LOCAL_NAMES, *(name.replace("{i}", str(i)) for name in client_names)])
                for i in range(clients)]
    holders.append(("operator", OPERATOR_CN, list(LOCAL_NAMES)))
    files = {"ca.pem": (pem(ca_cert), False)}
    for stem, common_name, names in holders:
        key = new_key()
        files[f"{stem}.pem"] = (pem(certificate(common_name, key, ca_cert.subject, ca_key, days, names=names)), False)
        files[f"{stem}-key.pem"] = (pem(key), True)
    for name in ("operator.token", "server.token"):
        files[name] = (secrets.token_urlsafe(32).encode() + b"\n", True)
    existing = [name for name in files if (folder / name).exists()]
    if existing:
        raise ConfigError(f"{folder / existing[0]} exists: give an empty folder (nothing is overwritten)")
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (data, private) in files.items():
        path = folder / name
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        written.append(path)
    return written
