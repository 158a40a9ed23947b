"""daemon.runtime.security: the proofs of the cluster secret, and check_files, which opens every file
the configuration names and says which key and path cannot be used."""

from __future__ import annotations

import os
import ssl
import textwrap
from pathlib import Path

import pytest
import trustme

from daemon.tools.cli import main
from daemon.runtime.config import ConfigError, load_config
from daemon.runtime.security import (
    NONCE_BYTES,
    ROLE_ACCEPTOR,
    ROLE_DIALER,
    check_files,
    client_context,
    load_secret,
    peer_contexts,
    prove,
    verify,
)

MEMBERS = """\
cluster: sec
members:
  1: {peer: 127.0.0.1:7101, client: 127.0.0.1:7001}
  2: {peer: 127.0.0.1:7102, client: 127.0.0.1:7002}
  3: {peer: 127.0.0.1:7103, client: 127.0.0.1:7003}
"""
SECRET = b"0123456789abcdef0123456789abcdef"


def config_with(tmp_path: Path, extra: str):
    path = tmp_path / "paxosd.yaml"
    path.write_text(MEMBERS + textwrap.dedent(extra))
    return load_config(path)


def write_secret(tmp_path: Path, data: bytes = SECRET + b"\n", mode: int = 0o600) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(data)
    path.chmod(mode)
    return path


def write_tls(tmp_path: Path, ca: trustme.CA, name: str = "node") -> tuple[Path, Path]:
    issued = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}-key.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    return cert, key


def check_error(config) -> str:
    with pytest.raises(ConfigError) as info:
        check_files(config)
    return str(info.value)


# ---------------------------------------------------------------------------------------------
# Proofs.


def test_a_proof_verifies_only_for_the_same_exchange_and_role():
    nd, na = os.urandom(NONCE_BYTES), os.urandom(NONCE_BYTES)
    proof = prove(SECRET, ROLE_DIALER, "sec", 1, 2, nd, na)
    assert len(proof) == 32
    assert verify(SECRET, proof, ROLE_DIALER, "sec", 1, 2, nd, na)
    for args in [(ROLE_ACCEPTOR, "sec", 1, 2, nd, na),  # reflected as the other side's answer
                 (ROLE_DIALER, "other", 1, 2, nd, na),
                 (ROLE_DIALER, "sec", 2, 1, nd, na),
                 (ROLE_DIALER, "sec", 1, 3, nd, na),
                 (ROLE_DIALER, "sec", 1, 2, na, nd),
                 (ROLE_DIALER, "sec", 1, 2, nd, os.urandom(NONCE_BYTES))]:  # replayed
        assert not verify(SECRET, proof, *args), args
    assert not verify(b"another secret of enough bytes", proof, ROLE_DIALER, "sec", 1, 2, nd, na)


# ---------------------------------------------------------------------------------------------
# The secret file.


def test_the_secret_is_the_files_content_without_surrounding_whitespace(tmp_path):
    write_secret(tmp_path)
    config = config_with(tmp_path, "auth: {secret_file: secret}\n")
    assert load_secret(config) == (SECRET, [])
    assert check_files(config) == []


def test_no_secret_file_means_no_secret(tmp_path):
    assert load_secret(config_with(tmp_path, "")) == (None, [])


def test_a_secret_readable_by_others_is_a_warning(tmp_path):
    write_secret(tmp_path, mode=0o644)
    warnings = check_files(config_with(tmp_path, "auth: {secret_file: secret}\n"))
    assert len(warnings) == 1 and "readable by group or others" in warnings[0]
    assert "chmod 600" in warnings[0]


@pytest.mark.parametrize("case, expected", [
    ("missing", "no such file"),
    ("directory", "not a regular file"),
    ("short", "holds 5 bytes; expected a secret of at least 16"),
])
def test_an_unusable_secret_file_is_named_with_its_key(tmp_path, case, expected):
    if case == "directory":
        (tmp_path / "secret").mkdir()
    elif case == "short":
        write_secret(tmp_path, b"short\n")
    message = check_error(config_with(tmp_path, "auth: {secret_file: secret}\n"))
    assert f"auth.secret_file: {tmp_path / 'secret'}: {expected}" in message
    assert str(tmp_path / "paxosd.yaml") in message


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_secret_file_says_permission_denied(tmp_path):
    write_secret(tmp_path, mode=0o000)
    message = check_error(config_with(tmp_path, "auth: {secret_file: secret}\n"))
    assert "auth.secret_file" in message and "permission denied" in message


# ---------------------------------------------------------------------------------------------
# Certificates and keys.


def test_good_tls_files_give_a_server_and_a_dialing_context(tmp_path):
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    write_tls(tmp_path, ca)
    config = config_with(tmp_path, "tls: {ca: ca.pem, cert: node.pem, key: node-key.pem}\n"
                                   "client_tls: {cert: node.pem, key: node-key.pem}\n")
    assert check_files(config) == []
    server, dialer = peer_contexts(config)
    assert server.verify_mode == ssl.CERT_REQUIRED  # a peer must present a certificate
    assert dialer.verify_mode == ssl.CERT_REQUIRED and dialer.check_hostname
    # Only the cluster's CA vouches for a peer, not the system's.
    assert len(server.get_ca_certs()) == len(dialer.get_ca_certs()) == 1


@pytest.mark.parametrize("case, key, expected", [
    ("no ca file", "tls.ca", "no such file"),
    ("ca not PEM", "tls.ca", "expected PEM certificates"),
    ("cert not PEM", "tls.cert", "expected a PEM certificate"),
    ("key not PEM", "tls.key", "expected a PEM private key"),
    ("key of another cert", "tls.key", "does not match the certificate"),
])
def test_an_unusable_tls_file_is_named_with_its_key(tmp_path, case, key, expected):
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    write_tls(tmp_path, ca)
    if case == "no ca file":
        (tmp_path / "ca.pem").unlink()
    elif case == "ca not PEM":
        (tmp_path / "ca.pem").write_text("not a certificate\n")
    elif case == "cert not PEM":
        (tmp_path / "node.pem").write_text("junk\n")
    elif case == "key not PEM":
        (tmp_path / "node-key.pem").write_text("junk\n")
    else:
        _, other_key = write_tls(tmp_path, ca, "other")
        other_key.rename(tmp_path / "node-key.pem")
    message = check_error(config_with(
        tmp_path, "tls: {ca: ca.pem, cert: node.pem, key: node-key.pem}\n"))
    assert f"{key}: " in message and expected in message
    path = {"tls.ca": "ca.pem", "tls.cert": "node.pem", "tls.key": "node-key.pem"}[key]
    assert str(tmp_path / path) in message


def test_client_tls_files_are_checked_too(tmp_path):
    config = config_with(tmp_path, "client_tls: {cert: node.pem, key: node-key.pem}\n")
    assert f"client_tls.cert: {tmp_path / 'node.pem'}: no such file" in check_error(config)


def test_a_client_context_needs_a_certificate_for_its_key(tmp_path):
    with pytest.raises(ValueError, match="--cert"):
        client_context(key=tmp_path / "key.pem")


# ---------------------------------------------------------------------------------------------
# paxosd check-config.


def test_check_config_exits_2_naming_the_key_and_path_of_a_missing_file(tmp_path, capsys):
    config_with(tmp_path, "auth: {secret_file: /nonexistent/paxosd-secret}\n")
    assert main(["check-config", "--config", str(tmp_path / "paxosd.yaml")]) == 2
    err = capsys.readouterr().err
    assert "auth.secret_file: /nonexistent/paxosd-secret: no such file" in err


def test_check_config_accepts_good_files_and_warns_about_a_loose_secret(tmp_path, capsys):
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    write_tls(tmp_path, ca)
    write_secret(tmp_path, mode=0o640)
    config_with(tmp_path, "auth: {secret_file: secret}\n"
                          "tls: {ca: ca.pem, cert: node.pem, key: node-key.pem}\n")
    assert main(["check-config", "--config", str(tmp_path / "paxosd.yaml")]) == 0
    out, err = capsys.readouterr()
    assert f"secret_file: {tmp_path / 'secret'}" in out and f"cert: {tmp_path / 'node.pem'}" in out
    assert "warning" in err and "chmod 600" in err


def test_a_node_does_not_start_without_its_secret_or_certificates(tmp_path):
    from daemon.runtime.server import Server

    config = config_with(tmp_path, "auth: {secret_file: secret}\n").with_node_id(1)
    with pytest.raises(ConfigError, match=r"auth\.secret_file: .*secret: no such file"):
        Server(config)
    write_secret(tmp_path)
    config = config_with(tmp_path, "auth: {secret_file: secret}\n"
                                   "client_tls: {cert: node.pem, key: node-key.pem}\n")
    with pytest.raises(ConfigError, match=r"client_tls\.cert: .*node\.pem: no such file"):
        Server(config.with_node_id(1))
