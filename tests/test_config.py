"""daemon.runtime.config: the shipped files load, defaults are stated once, and every bad file gets a
ConfigError that names the file, the key and what was expected."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from daemon.runtime.config import (
    Address,
    Auth,
    Batching,
    Config,
    ConfigError,
    Limits,
    Member,
    Metrics,
    StorageSettings,
    TLSFiles,
    Timing,
    describe,
    load_config,
    parse_config,
)

ETC = Path(__file__).resolve().parent.parent / "etc"

MINIMAL = """\
cluster: demo
members:
  1: {peer: 127.0.0.1:7101, client: 127.0.0.1:7001}
  2: {peer: 127.0.0.1:7102, client: 127.0.0.1:7002}
  3: {peer: 127.0.0.1:7103, client: 127.0.0.1:7003}
"""


def write(tmp_path: Path, text: str, name: str = "bad.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def with_extra(extra: str) -> str:
    return MINIMAL + textwrap.dedent(extra)


def error_for(tmp_path: Path, text: str, **kwargs) -> ConfigError:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, **kwargs)
    message = str(info.value)
    assert str(path) in message, message
    return info.value


# ---------------------------------------------------------------------------------------------
# The shipped files.


def test_loopback_three_node_file_loads():
    config = load_config(ETC / "paxosd.yaml")
    assert config.cluster == "demo"
    assert config.node_id is None
    assert config.member_ids == (1, 2, 3)
    assert config.member(2) == Member(2, Address("127.0.0.1", 7102), Address("127.0.0.1", 7002),
                                      http=Address("127.0.0.1", 7202))
    assert config.quorum == 2
    assert config.data_dir == (ETC.parent / "data" / "paxosd").resolve()
    assert config.data_dir.is_absolute()
    assert config.with_node_id(3).node_dir() == config.data_dir / "node-3"
    assert config.timing == Timing(50, (150, 300))
    assert config.storage.fsync is True
    assert config.metrics.address is None


def test_loopback_five_node_file_loads():
    config = load_config(ETC / "paxosd-5.yaml", node_id=4)
    assert config.member_ids == (1, 2, 3, 4, 5)
    assert config.quorum == 3
    assert config.node_id == 4
    assert [str(m.peer) for m in config.members] == [f"127.0.0.1:710{i}" for i in range(1, 6)]
    assert [str(m.client) for m in config.members] == [f"127.0.0.1:700{i}" for i in range(1, 6)]
    assert config.data_dir == (ETC.parent / "data" / "paxosd-5").resolve()


def test_production_example_loads_with_every_key_commented():
    path = ETC / "production.example.yaml"
    config = load_config(path, node_id=1)
    assert [str(m.peer) for m in config.members] == ["10.0.0.11:7100", "10.0.0.12:7100", "10.0.0.13:7100"]
    assert [str(m.client) for m in config.members] == ["10.0.0.11:7000", "10.0.0.12:7000", "10.0.0.13:7000"]
    assert config.data_dir == Path("/var/lib/paxosd")
    assert config.metrics.address == Address("0.0.0.0", 9100)
    # Every setting key is preceded by a comment line explaining it.
    lines = path.read_text().splitlines()
    for key in ("heartbeat_ms", "election_timeout_ms", "window", "max_batch_commands",
                "max_batch_bytes", "fsync", "snapshot_every_slots", "max_frame_bytes",
                "max_pending_commands", "max_clients", "address", "data_dir", "members:",
                "cluster"):
        index = next(i for i, line in enumerate(lines) if line.strip().startswith(key))
        assert lines[index - 1].strip().startswith("#"), key


@pytest.mark.parametrize("name", ["paxosd.yaml", "paxosd-5.yaml", "production.example.yaml"])
def test_describe_round_trips_the_effective_settings(name):
    config = load_config(ETC / name, node_id=1)
    text = describe(config)
    assert "heartbeat_ms: 50" in text and "quorum" in text
    assert parse_config(text, config.path) == config


# ---------------------------------------------------------------------------------------------
# Defaults.


def test_defaults_fill_every_optional_setting(tmp_path):
    config = load_config(write(tmp_path, MINIMAL, "min.yaml"))
    assert config.node_id is None
    assert config.data_dir == Path("/var/lib/paxosd")
    assert config.timing == Timing() == Timing(heartbeat_ms=50, election_timeout_ms=(150, 300))
    assert config.batching == Batching() == Batching(64, 4096, 1048576)
    assert config.storage == StorageSettings() == StorageSettings(True, 100000)
    assert config.limits == Limits() == Limits(67108864, 100000, 1024)
    assert config.metrics == Metrics() == Metrics(None)
    assert config.timing.heartbeat_s == 0.05
    assert config.timing.election_timeout_s == (0.15, 0.3)


def test_defaults_written_out_load_to_the_same_config(tmp_path):
    implicit = load_config(write(tmp_path, MINIMAL, "a.yaml"))
    explicit = load_config(
        write(
            tmp_path,
            with_extra(
                """\
                data_dir: /var/lib/paxosd
                timing: {heartbeat_ms: 50, election_timeout_ms: [150, 300]}
                batching: {window: 64, max_batch_commands: 4096, max_batch_bytes: 1048576}
                storage: {fsync: true, snapshot_every_slots: 100000}
                limits: {max_frame_bytes: 67108864, max_pending_commands: 100000, max_clients: 1024}
                metrics: {address: null}
                """
            ),
            "a.yaml",
        )
    )
    assert explicit == implicit
    assert parse_config(describe(implicit), implicit.path) == implicit


def test_relative_data_dir_resolves_against_the_file_directory(tmp_path):
    sub = tmp_path / "conf"
    sub.mkdir()
    config = load_config(write(sub, with_extra("data_dir: ../state\n"), "c.yaml"))
    assert config.data_dir == tmp_path / "state"


def test_command_line_node_id_overrides_the_file(tmp_path):
    path = write(tmp_path, with_extra("node_id: 1\n"), "c.yaml")
    assert load_config(path).node_id == 1
    assert load_config(path, node_id=3).node_id == 3


def test_members_are_sorted_by_id(tmp_path):
    text = """\
    cluster: x
    members:
      9: {peer: h9:1, client: h9:2}
      2: {peer: h2:1, client: h2:2}
      5: {peer: h5:1, client: h5:2}
    """
    assert load_config(write(tmp_path, text, "c.yaml")).member_ids == (2, 5, 9)


def test_ipv6_and_hostnames_are_addresses(tmp_path):
    text = """\
    cluster: x
    members:
      1: {peer: "[::1]:7101", client: "[fd00::1]:7001"}
      2: {peer: node-2.example.com:7101, client: node-2.example.com:7001}
      3: {peer: localhost:7103, client: localhost:7003}
    """
    config = load_config(write(tmp_path, text, "c.yaml"))
    assert config.member(1).peer == Address("::1", 7101)
    assert str(config.member(1).peer) == "[::1]:7101"
    assert str(config.member(2).client) == "node-2.example.com:7001"
    assert parse_config(describe(config), config.path) == config


def test_with_node_id_checks_membership():
    config = load_config(ETC / "paxosd.yaml")
    assert config.with_node_id(2).node_id == 2
    with pytest.raises(ConfigError, match="node_id"):
        config.with_node_id(4)
    with pytest.raises(ConfigError, match="node_id"):
        config.node_dir()


def test_config_is_frozen():
    config = load_config(ETC / "paxosd.yaml")
    with pytest.raises(AttributeError):
        config.cluster = "other"  # type: ignore[misc]
    assert isinstance(config, Config)


# ---------------------------------------------------------------------------------------------
# Bad files: each names the file and the key.


def test_unreadable_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_config(missing)
    assert str(missing) in str(info.value)


def test_yaml_syntax_error_names_the_line(tmp_path):
    error = error_for(tmp_path, "cluster: demo\nmembers:\n  1: {peer: a:1, client: b:2\n  2: [\n")
    assert "YAML syntax error at line" in str(error)


def test_empty_file(tmp_path):
    assert "empty" in str(error_for(tmp_path, ""))


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path, text):
    assert "mapping at the top level" in str(error_for(tmp_path, text))


@pytest.mark.parametrize(
    "extra, key",
    [
        ("colour: blue\n", "colour"),
        ("timing: {heartbeat: 50}\n", "timing.heartbeat"),
        ("batching: {windw: 8}\n", "batching.windw"),
        ("storage: {sync: true}\n", "storage.sync"),
        ("limits: {max_frames: 10}\n", "limits.max_frames"),
        ("metrics: {addr: null}\n", "metrics.addr"),
    ],
)
def test_unknown_keys_are_named_with_the_allowed_ones(tmp_path, extra, key):
    message = str(error_for(tmp_path, with_extra(extra)))
    assert f"{key}: unknown key" in message
    assert "allowed keys:" in message


def test_unknown_key_in_a_member(tmp_path):
    text = MINIMAL.replace("1: {peer: 127.0.0.1:7101,", "1: {peer: 127.0.0.1:7101, role: x,")
    message = str(error_for(tmp_path, text))
    assert "members.1.role: unknown key" in message and "peer, client" in message


def test_unknown_key_suggests_the_close_one(tmp_path):
    assert "did you mean 'heartbeat_ms'" in str(error_for(tmp_path, with_extra("timing: {heartbeat: 5}\n")))


@pytest.mark.parametrize("missing", ["cluster", "members"])
def test_required_keys(tmp_path, missing):
    lines = [line for line in MINIMAL.splitlines(keepends=True)]
    if missing == "cluster":
        text = "".join(lines[1:])
    else:
        text = lines[0]
    message = str(error_for(tmp_path, text))
    assert f"{missing}: required key is missing" in message


def test_member_needs_peer_and_client(tmp_path):
    text = MINIMAL.replace("{peer: 127.0.0.1:7102, client: 127.0.0.1:7002}", "{peer: 127.0.0.1:7102}")
    assert "members.2.client: required key is missing" in str(error_for(tmp_path, text))


@pytest.mark.parametrize(
    "extra, key, expected",
    [
        ("timing: {heartbeat_ms: fast}\n", "timing.heartbeat_ms",
         "expected a positive integer (milliseconds), got 'fast'"),
        ("timing: {heartbeat_ms: true}\n", "timing.heartbeat_ms", "got True"),
        ("timing: {heartbeat_ms: 0}\n", "timing.heartbeat_ms", "got 0"),
        ("timing: {heartbeat_ms: 50.5}\n", "timing.heartbeat_ms", "got 50.5"),
        ("timing: {election_timeout_ms: 300}\n", "timing.election_timeout_ms", "[min, max]"),
        ("timing: {election_timeout_ms: [100, 200, 300]}\n", "timing.election_timeout_ms", "[min, max]"),
        ("timing: {election_timeout_ms: [300, 150]}\n", "timing.election_timeout_ms", "min <= max"),
        ("timing: {heartbeat_ms: 150}\n", "timing.heartbeat_ms", "below the election timeout minimum"),
        ("timing: [50]\n", "timing", "a mapping"),
        ("batching: {window: 0}\n", "batching.window", "got 0"),
        ("batching: {window: yes}\n", "batching.window", "got True"),
        ("batching: {max_batch_commands: -1}\n", "batching.max_batch_commands", "got -1"),
        ("batching: {max_batch_bytes: 100000000}\n", "batching.max_batch_bytes", "limits.max_frame_bytes"),
        ("storage: {fsync: 1}\n", "storage.fsync", "expected true or false, got 1"),
        ("storage: {fsync: 'no'}\n", "storage.fsync", "got 'no'"),
        ("storage: {snapshot_every_slots: 0}\n", "storage.snapshot_every_slots", "got 0"),
        ("limits: {max_frame_bytes: 10}\n", "limits.max_frame_bytes", "from 4096 to 268435456"),
        ("limits: {max_pending_commands: '100'}\n", "limits.max_pending_commands", "got '100'"),
        ("limits: {max_clients: 0}\n", "limits.max_clients", "got 0"),
        ("metrics: {address: 9101}\n", "metrics.address", "host:port"),
        ("metrics: {address: 'localhost'}\n", "metrics.address", "host:port"),
        ("http: {address: 127.0.0.1:7002}\n", "http.address", "already used by members.2.client"),
        ("metrics: {address: 127.0.0.1:9100}\nhttp: {address: 127.0.0.1:9100}\n", "http.address",
         "already used by metrics.address"),
        ("http: {max_body_bytes: 2000000}\n", "http.max_body_bytes", "at most batching.max_batch"),
        ("http: {timeout_ms: 0}\n", "http.timeout_ms", "a positive integer"),
        ("http: {adress: 127.0.0.1:1}\n", "http.adress", "did you mean 'address'"),
        ("data_dir: 5\n", "data_dir", "a directory path"),
        ("data_dir: ''\n", "data_dir", "a directory path"),
        ("node_id: 4\n", "node_id", "expected one of the member ids (1, 2, 3), got 4"),
        ("node_id: '1'\n", "node_id", "got '1'"),
        ("node_id: true\n", "node_id", "got True"),
    ],
)
def test_bad_values_name_the_key_value_and_expectation(tmp_path, extra, key, expected):
    message = str(error_for(tmp_path, with_extra(extra)))
    assert f"{key}: " in message
    assert expected in message


def test_cli_node_id_not_a_member(tmp_path):
    message = str(error_for(tmp_path, MINIMAL, node_id=7))
    assert "node_id: expected one of the member ids (1, 2, 3) (from the command line), got 7" in message


@pytest.mark.parametrize("cluster", ["'has space'", "''", "'" + "x" * 65 + "'", "123", "[a]", "'a/b'"])
def test_cluster_name(tmp_path, cluster):
    message = str(error_for(tmp_path, MINIMAL.replace("cluster: demo", f"cluster: {cluster}")))
    assert "cluster: expected a cluster name" in message


@pytest.mark.parametrize(
    "member_key, shown",
    [("0", "0"), ("-1", "-1"), ("65536", "65536"), ("one", "'one'"), ("'1'", "'1'"), ("2.5", "2.5")],
)
def test_member_ids_are_positive_16_bit_ints(tmp_path, member_key, shown):
    text = MINIMAL.replace("\n  3:", f"\n  {member_key}:")
    message = str(error_for(tmp_path, text))
    assert "members." in message and f"expected a member id from 1 to 65535, got {shown}" in message


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:http", "':7101'", "bad host:1",
     "'[::1:7101'", "'[nothex]:1'", "7101", "1:30"],
)
def test_addresses_are_host_port(tmp_path, address):
    text = MINIMAL.replace("peer: 127.0.0.1:7102", f"peer: {address}")
    message = str(error_for(tmp_path, text))
    assert "members.2.peer: expected 'host:port' with a port from 1 to 65535" in message


def test_members_must_be_a_non_empty_mapping(tmp_path):
    assert "members: expected at least one member" in str(error_for(tmp_path, "cluster: x\nmembers: {}\n"))
    assert "members: expected a mapping" in str(error_for(tmp_path, "cluster: x\nmembers: [1, 2, 3]\n"))


@pytest.mark.parametrize("count", [2, 4, 6])
def test_even_member_count_is_refused(tmp_path, count):
    members = "".join(f"  {i}: {{peer: h:{7100 + i}, client: h:{7000 + i}}}\n" for i in range(1, count + 1))
    message = str(error_for(tmp_path, f"cluster: x\nmembers:\n{members}"))
    assert f"members: expected an odd number of initial members (1, 3, 5 or 7; members marked " \
           f"join do not count), got {count}" in message


def test_a_member_marked_join_is_not_an_initial_member(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("cluster: x\nmembers:\n"
                    "  1: {peer: h:7101, client: h:7001}\n"
                    "  2: {peer: h:7102, client: h:7002}\n"
                    "  3: {peer: h:7103, client: h:7003}\n"
                    "  4: {peer: h:7104, client: h:7004, join: true}\n")
    config = load_config(path, 4)
    assert [m.id for m in config.initial_members] == [1, 2, 3]
    assert config.member(4).join and config.quorum == 2
    assert parse_config(describe(config), config.path) == config
    bad = str(error_for(tmp_path, "cluster: x\nmembers:\n  1: {peer: h:1, client: h:2, join: 1}\n"))
    assert "members.1.join" in bad
    every = str(error_for(tmp_path, "cluster: x\nmembers:\n  1: {peer: h:1, client: h:2, join: true}\n"))
    assert "at least one must be an initial member" in every


def test_up_to_64_members_and_no_more(tmp_path):
    def text(count):
        members = "".join(f"  {i}: {{peer: h:{10000 + i}, client: h:{20000 + i}}}\n" for i in range(1, count + 1))
        return f"cluster: x\nmembers:\n{members}"

    assert load_config(write(tmp_path, text(9), "nine.yaml")).quorum == 5
    assert "at most 64 members, got 65" in str(error_for(tmp_path, text(65)))


def test_single_member_is_allowed(tmp_path):
    config = load_config(write(tmp_path, "cluster: x\nmembers:\n  1: {peer: h:1, client: h:2}\n", "one.yaml"))
    assert config.quorum == 1


@pytest.mark.parametrize(
    "old, new, key",
    [
        ("peer: 127.0.0.1:7102", "peer: 127.0.0.1:7101", "members.2.peer"),
        ("client: 127.0.0.1:7003", "client: 127.0.0.1:7101", "members.3.client"),
        ("client: 127.0.0.1:7001", "client: 127.0.0.1:7101", "members.1.client"),
        ("peer: 127.0.0.1:7103", "peer: LOCALHOST:1", "members.3.peer"),
    ],
)
def test_addresses_are_used_once(tmp_path, old, new, key):
    text = MINIMAL.replace(old, new).replace("client: 127.0.0.1:7002", "client: localhost:1")
    message = str(error_for(tmp_path, text))
    assert f"{key}: address" in message and "is already used by members." in message


def test_a_key_given_twice_is_an_error(tmp_path):
    text = MINIMAL + "  2: {peer: 127.0.0.1:7202, client: 127.0.0.1:7302}\n"
    message = str(error_for(tmp_path, text))
    assert "members.2: key given twice (line 4 and line 6)" in message


def test_parse_config_without_a_path_names_a_placeholder():
    with pytest.raises(ConfigError, match="<config>: cluster: required key is missing"):
        parse_config("members: {}\n")


# ---------------------------------------------------------------------------------------------
# Per-member metrics, peer authentication and TLS.


def test_a_members_own_metrics_address_wins_over_the_file_wide_one(tmp_path):
    text = MINIMAL.replace("client: 127.0.0.1:7001}", "client: 127.0.0.1:7001, metrics: 127.0.0.1:9201}")
    config = load_config(write(tmp_path, text + "metrics: {address: 127.0.0.1:9101}\n", "m.yaml"))
    assert config.member(1).metrics == Address("127.0.0.1", 9201)
    assert config.metrics_address(1) == Address("127.0.0.1", 9201)
    assert config.metrics_address(2) == config.metrics_address(3) == Address("127.0.0.1", 9101)
    assert config.with_node_id(1).metrics_address() == Address("127.0.0.1", 9201)
    assert parse_config(describe(config), config.path) == config


def test_metrics_are_off_when_neither_address_is_set(tmp_path):
    config = load_config(write(tmp_path, MINIMAL, "m.yaml"), node_id=2)
    assert config.metrics_address() is None and config.metrics_address(1) is None
    assert "this node serves metrics: no" in describe(config)


@pytest.mark.parametrize(
    "old, new, key",
    [
        ("client: 127.0.0.1:7001}", "client: 127.0.0.1:7001, metrics: 127.0.0.1:7102}",
         "members.2.peer"),
        ("client: 127.0.0.1:7003}", "client: 127.0.0.1:7003, metrics: 127.0.0.1:7001}",
         "members.3.metrics"),
    ],
)
def test_a_metrics_address_is_used_once_too(tmp_path, old, new, key):
    message = str(error_for(tmp_path, MINIMAL.replace(old, new)))
    assert f"{key}: address" in message and "is already used by members." in message


def test_the_file_wide_metrics_address_is_no_members_address(tmp_path):
    message = str(error_for(tmp_path, with_extra("metrics: {address: 127.0.0.1:7002}\n")))
    assert "metrics.address: address 127.0.0.1:7002 is already used by members.2.client" in message


def test_a_members_own_http_address_wins_and_the_api_is_off_without_one(tmp_path):
    text = MINIMAL.replace("client: 127.0.0.1:7001}", "client: 127.0.0.1:7001, http: 127.0.0.1:7201}")
    config = load_config(write(tmp_path, text, "h.yaml"), node_id=1)
    assert config.http_address() == Address("127.0.0.1", 7201)
    assert config.http_address(2) is None  # off unless configured
    config = load_config(write(tmp_path, text + "http: {address: 127.0.0.1:7200, "
                               "timeout_ms: 1500, max_body_bytes: 4096}\n", "h.yaml"), node_id=2)
    assert config.http_address() == Address("127.0.0.1", 7200)
    assert config.http_address(1) == Address("127.0.0.1", 7201)
    assert (config.http.timeout_ms, config.http_max_body_bytes) == (1500, 4096)
    assert parse_config(describe(config), config.path) == config
    assert "this node serves the HTTP API: http://127.0.0.1:7200/v1/" in describe(config)


def test_the_default_body_limit_leaves_room_in_a_batch(tmp_path):
    config = load_config(write(tmp_path, with_extra("batching: {max_batch_bytes: 65536}\n"),
                               "h.yaml"))
    assert config.http_max_body_bytes == 65536 - 16384


def test_an_http_address_is_used_once_too(tmp_path):
    text = MINIMAL.replace("client: 127.0.0.1:7003}", "client: 127.0.0.1:7003, http: 127.0.0.1:7001}")
    assert "members.3.http: address 127.0.0.1:7001 is already used by members.1.client" in str(
        error_for(tmp_path, text))


def test_auth_and_tls_paths_resolve_against_the_file_directory(tmp_path):
    config = load_config(write(tmp_path, with_extra("""\
        auth: {secret_file: secret}
        tls: {ca: tls/ca.pem, cert: /etc/paxosd/node.pem, key: tls/key.pem}
        client_tls: {cert: tls/node.pem, key: tls/key.pem}
        """), "a.yaml"))
    assert config.auth == Auth(tmp_path / "secret")
    assert config.tls == TLSFiles(tmp_path / "tls" / "ca.pem", Path("/etc/paxosd/node.pem"),
                                  tmp_path / "tls" / "key.pem")
    assert config.client_tls == TLSFiles(None, tmp_path / "tls" / "node.pem",
                                         tmp_path / "tls" / "key.pem")
    assert parse_config(describe(config), config.path) == config


def test_auth_and_tls_are_off_by_default(tmp_path):
    config = load_config(write(tmp_path, MINIMAL, "a.yaml"))
    assert config.auth == Auth() == Auth(None)
    assert config.tls is None and config.client_tls is None
    assert "tls: null" in describe(config)


@pytest.mark.parametrize(
    "extra, key, expected",
    [
        ("auth: {secret: x}\n", "auth.secret", "unknown key in auth (did you mean 'secret_file'?)"),
        ("auth: {secret_file: 5}\n", "auth.secret_file", "a file path"),
        ("tls: {cert: c.pem, key: k.pem}\n", "tls.ca", "required key is missing"),
        ("tls: {ca: ca.pem, key: k.pem}\n", "tls.cert", "required key is missing"),
        ("tls: {ca: ca.pem, cert: c.pem, key: ''}\n", "tls.key", "a file path"),
        ("tls: {ca: ca.pem, cert: c.pem, key: k.pem, ciphers: x}\n", "tls.ciphers", "unknown key"),
        ("tls: ca.pem\n", "tls", "a mapping {ca: FILE, cert: FILE, key: FILE}"),
        ("client_tls: {ca: ca.pem, cert: c.pem}\n", "client_tls.key", "required key is missing"),
    ],
)
def test_bad_auth_and_tls_sections_name_the_key(tmp_path, extra, key, expected):
    message = str(error_for(tmp_path, with_extra(extra)))
    assert f"{key}: " in message and expected in message
