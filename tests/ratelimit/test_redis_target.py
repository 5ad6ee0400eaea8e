"""The Redis deployment of a shared store in the policy: one URL, Sentinel or Cluster,
credentials and TLS from files read at load; each problem located."""

from __future__ import annotations

from pathlib import Path

import pytest

from authz.errors import PolicyError
from authz.policy.config import PolicyConfig
from authz.policy.loader import load_policy
from authz.policy.redis_target import RedisTarget

ROUTES = "routes:\n  - {name: a, path: /a, methods: [GET], public: true}\n"


def load(tmp_path: Path, stores: str, extra: str = "") -> PolicyConfig:
    path = tmp_path / "policy.yaml"
    path.write_text(f"rate_limits:\n  stores:\n{stores}{extra}{ROUTES}")
    return load_policy(path)


def problems(tmp_path: Path, stores: str, extra: str = "") -> list[tuple[int, str]]:
    with pytest.raises(PolicyError) as err:
        load(tmp_path, stores, extra)
    return [(int(loc.rsplit(":", 2)[1]), msg) for loc, msg in err.value.problems]


def test_sentinel_with_credentials_and_tls_from_files(tmp_path: Path) -> None:
    (tmp_path / "user").write_text("authz\n")
    (tmp_path / "pass").write_text("s3cret\n")
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("x")
    policy = load(
        tmp_path,
        """\
    shared:
      type: redis
      sentinels: ["10.0.0.1:26379", "[::1]:26380"]
      service: mymaster
      db: 2
      username_file: user
      password_file: pass
      tls: {ca_file: ca.pem, cert_file: client.pem, key_file: client.key}
""",
    )
    (store,) = policy.rate_limits.stores
    target = store.deployment
    assert target.kind == "sentinel"
    assert target.sentinels == (("10.0.0.1", 26379), ("::1", 26380))
    assert (target.service, target.db, target.username, target.password) == (
        "mymaster",
        2,
        "authz",
        "s3cret",
    )
    assert target.tls and target.ca_file == str(tmp_path / "ca.pem")
    assert "s3cret" not in repr(store)  # the password never shows in logs or dumps


def test_cluster_and_enforcement_store(tmp_path: Path) -> None:
    policy = load(
        tmp_path,
        '    shared: {type: redis, cluster: ["127.0.0.1:7000", "127.0.0.1:7001"]}\n',
        'enforcement:\n  store: {cluster: ["127.0.0.1:7000"], on_error: deny}\n',
    )
    assert policy.rate_limits.stores[0].deployment.kind == "cluster"
    assert policy.enforcement is not None and policy.enforcement.store is not None
    assert policy.enforcement.store.deployment == RedisTarget(cluster=(("127.0.0.1", 7000),))


def test_a_plain_url_stays_a_url(tmp_path: Path) -> None:
    policy = load(tmp_path, '    shared: {type: redis, url: "redis://127.0.0.1:6379/0"}\n')
    assert policy.rate_limits.stores[0].target is None
    assert policy.rate_limits.stores[0].deployment.url == "redis://127.0.0.1:6379/0"


def test_located_problems(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    found = problems(
        tmp_path,
        """\
    a: {type: redis, url: "redis://x:6379/0", cluster: ["x:1"]}
    b: {type: redis, sentinels: ["nohost"]}
    c: {type: redis, cluster: ["x:1"], password_file: missing}
    d: {type: redis, cluster: ["x:1"], password_file: empty}
    e: {type: redis, url: "redis://u:p@x:6379/0", password_file: empty}
    f: {type: redis, url: "redis://x:6379/0", tls: true}
    g: {type: redis}
""",
    )
    lines = {line for line, _ in found}
    text = "\n".join(msg for _, msg in found)
    assert lines == {3, 4, 5, 6, 7, 8, 9}, found
    assert "name one Redis deployment" in text
    assert "not host:port: 'nohost'" in text
    assert "a Sentinel deployment needs the primary's name" in text
    assert "no such file" in text and "is empty" in text
    assert "keep them out of the URL" in text
    assert "rediss://" in text


def test_the_readme_example_loads(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = readme.split("<!-- redis-deployments -->\n```yaml\n", 1)[1].split("```", 1)[0]
    for name in ("redis-user", "redis-password", "sentinel-password"):
        (tmp_path / name).write_text("authz\n")
    for name in ("redis-ca.pem", "redis-client.pem", "redis-client.key"):
        (tmp_path / name).write_text("x")
    path = tmp_path / "policy.yaml"
    path.write_text(example + ROUTES)
    policy = load_policy(path)
    sentinel = policy.rate_limits.stores[0].deployment
    assert sentinel.kind == "sentinel"
    assert sentinel.sentinel_password == "authz" and sentinel.sentinel_tls
    assert policy.enforcement is not None and policy.enforcement.store is not None
    assert policy.enforcement.store.deployment.kind == "cluster"


def test_the_sentinels_own_credentials_and_tls_from_files(tmp_path: Path) -> None:
    (tmp_path / "s-user").write_text("sentinel-user\n")
    (tmp_path / "s-pass").write_text("sentinel-s3cret\n")
    (tmp_path / "s-ca.pem").write_text("x")
    policy = load(
        tmp_path,
        """\
    shared:
      type: redis
      sentinels: ["10.0.0.1:26379"]
      service: mymaster
      sentinel_username_file: s-user
      sentinel_password_file: s-pass
      sentinel_tls: {ca_file: s-ca.pem}
""",
    )
    (store,) = policy.rate_limits.stores
    target = store.deployment
    assert (target.sentinel_username, target.sentinel_password) == (
        "sentinel-user",
        "sentinel-s3cret",
    )
    assert target.sentinel_tls and target.sentinel_ca_file == str(tmp_path / "s-ca.pem")
    assert target.sentinel_cert_file is None
    # the data nodes' settings are their own
    assert (target.password, target.tls) == (None, False)
    assert "sentinel-s3cret" not in repr(store)
    shorthand = load(
        tmp_path,
        '    shared: {type: redis, sentinels: ["h:1"], service: m, sentinel_tls: true}\n',
    )
    assert shorthand.rate_limits.stores[0].deployment.sentinel_tls


def test_the_sentinels_own_settings_located_problems(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    (tmp_path / "pem").write_text("x")
    found = problems(
        tmp_path,
        """\
    a: {type: redis, url: "redis://x:6379/0", sentinel_password_file: pem}
    b: {type: redis, cluster: ["x:1"], sentinel_tls: true}
    c: {type: redis, sentinels: ["x:1"], service: m, sentinel_password_file: missing}
    d: {type: redis, sentinels: ["x:1"], service: m, sentinel_password_file: empty}
    e: {type: redis, sentinels: ["x:1"], service: m, sentinel_username_file: pem}
    f: {type: redis, sentinels: ["x:1"], service: m, sentinel_tls: {cert_file: pem}}
    g: {type: redis, sentinels: ["x:1"], service: m, sentinel_tls: {ca_file: nope}}
""",
    )
    by_line: dict[int, list[str]] = {}
    for line, msg in found:
        by_line.setdefault(line, []).append(msg)
    assert set(by_line) == {3, 4, 5, 6, 7, 8, 9}, found
    at = "$.rate_limits.stores"
    assert by_line[3] == [f"{at}.a.sentinel_password_file: only with 'sentinels'"]
    assert by_line[4] == [f"{at}.b.sentinel_tls: only with 'sentinels'"]
    assert by_line[5][0].startswith(f"{at}.c.sentinel_password_file: no such file")
    assert by_line[6][0].startswith(f"{at}.d.sentinel_password_file: ")
    assert by_line[6][0].endswith("is empty")
    assert by_line[7] == [
        f"{at}.e.sentinel_username_file: a username needs a sentinel_password_file too"
    ]
    assert by_line[8] == [
        f"{at}.f.sentinel_tls: a client certificate needs both cert_file and key_file"
    ]
    assert by_line[9][0].startswith(f"{at}.g.sentinel_tls.ca_file: no such file")
