"""Policy snapshots: content hashes of every file, compiled from exactly the bytes hashed."""

from __future__ import annotations

import os
from pathlib import Path

from authz.policy.snapshot import load_snapshot, read_snapshot

POLICY = """\
providers:
  mesh: {type: mtls, trust_domains: [prod]}
openapi:
  - file: api.yaml
    security_schemes: {mesh: [mesh]}
routes:
  - {name: health, path: /healthz, methods: [GET], public: true}
"""

DOC = """\
openapi: 3.1.0
info: {title: reports, version: "1"}
components:
  securitySchemes:
    mesh: {type: mutualTLS}
paths:
  /reports:
    get:
      operationId: listReports
      security: %s
      responses: {"200": {description: ok}}
"""


def write(tmp_path: Path, security: str = "[{mesh: []}]") -> tuple[Path, Path]:
    policy, doc = tmp_path / "policy.yaml", tmp_path / "api.yaml"
    policy.write_text(POLICY)
    doc.write_text(DOC % security)
    return policy, doc


def test_the_loader_reports_the_documents_it_read(tmp_path: Path) -> None:
    policy, doc = write(tmp_path)
    first = load_snapshot(read_snapshot(str(policy)))
    assert first.documents == (str(doc),)
    assert not first.covered  # read from disk, unhashed: not to be used
    again = load_snapshot(read_snapshot(str(policy), first.documents))
    assert again.covered and again.error is None and again.config is not None
    assert [r.name for r in again.config.routes] == ["health", "listReports"]


def test_a_document_changed_after_the_hash_is_not_loaded(tmp_path: Path) -> None:
    policy, doc = write(tmp_path)
    snap = read_snapshot(str(policy), (str(doc),))
    doc.write_text(DOC % "[]")  # the document becomes public on disk, after the hash
    loaded = load_snapshot(snap)
    assert loaded.config is not None
    _, route = loaded.config.routes
    assert not route.public  # compiled from the hashed bytes
    assert read_snapshot(str(policy), (str(doc),)).digest != snap.digest


def test_the_digest_follows_content_not_size_or_mtime(tmp_path: Path) -> None:
    policy, doc = write(tmp_path)
    before = read_snapshot(str(policy), (str(doc),))
    stat = os.stat(doc)
    doc.write_text((DOC % "[{mesh: []}]").replace("reports", "rep0rts"))
    os.utime(doc, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = os.stat(doc)
    assert (after.st_size, after.st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    assert read_snapshot(str(policy), (str(doc),)).digest != before.digest


def test_an_unreadable_file_is_part_of_the_digest_and_reported(tmp_path: Path) -> None:
    policy, doc = write(tmp_path)
    whole = read_snapshot(str(policy), (str(doc),))
    doc.unlink()
    gone = read_snapshot(str(policy), (str(doc),))
    assert gone.digest != whole.digest and gone.readable
    loaded = load_snapshot(gone)
    assert loaded.error is not None and loaded.covered
    assert any("cannot read the OpenAPI document" in m for _, m in loaded.error.problems)
    policy.unlink()
    missing = read_snapshot(str(policy))
    assert not missing.readable
    error = load_snapshot(missing).error
    assert error is not None and "cannot read the policy file" in error.problems[0][1]
