"""The policy calls' pieces: the workers' lists merged, what an answer warns, the
CLI's rendering, and a process without a lifecycle refusing with FAILED_PRECONDITION."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from authz.control.policies import PolicyServicer, merge_versions
from authz.control.policy_commands import render_change, render_versions
from authz.lifecycle import Outcome
from authz.v1 import admin_pb2


def versions(active: str, *others: str, workers: int = 1) -> Any:
    answer = admin_pb2.PolicyVersions(capacity=5, on_disk="sha256:bbbb", workers=workers)
    for i, v in enumerate((active, *others)):
        answer.versions.add(version=v, origin="reload", by="file", active=i == 0, routes=2,
                            activated=1.78e9, loaded=1.78e9, source="/p.yaml")  # fmt: skip
    answer.active.append(active)
    return answer


def test_merge_keeps_each_version_once_and_names_each_active_one() -> None:
    merged = merge_versions([versions("sha256:aaaa", "sha256:bbbb"),
                             versions("sha256:bbbb", "sha256:aaaa")])  # fmt: skip
    assert [v.version for v in merged.versions] == ["sha256:aaaa", "sha256:bbbb"]
    assert list(merged.active) == ["sha256:aaaa", "sha256:bbbb"]
    assert merged.workers == 2 and merged.capacity == 5
    text = render_versions(merged)
    assert "warning: the workers serve different versions: sha256:aaaa, sha256:bbbb" in text
    assert (
        text.splitlines()[0] == "2 kept (at most 5); the policy file holds sha256:bbbb; 2 workers"
    )


def test_the_warning_says_what_a_restart_does() -> None:
    assert Outcome(True, "sha256:b", "sha256:a", "sha256:a").warning == ""
    warning = Outcome(True, "sha256:b", "sha256:a", "sha256:b").warning
    assert warning.startswith("the policy file still holds sha256:b: this process serves sha256:a")
    answer = admin_pb2.PolicyChange(changed=True, previous="sha256:b", active="sha256:a",
                                    warning=warning, workers=2, errors=["w1: UNAVAILABLE: x"])  # fmt: skip
    assert render_change("rollback", answer).splitlines() == [
        "rolled back: sha256:b -> sha256:a (2 workers)",
        f"warning: {warning}",
        "error: worker w1: UNAVAILABLE: x",
    ]


class _Aborted(Exception):
    pass


class _Context:
    def __init__(self) -> None:
        self.code: Any = None

    async def abort(self, code: Any, details: str) -> None:
        self.code = code
        raise _Aborted(details)


async def test_without_a_lifecycle_every_call_is_refused() -> None:
    servicer = PolicyServicer()
    servicer._policies = None
    for call, request in (
        (servicer.ListPolicies, admin_pb2.ListPoliciesRequest()),
        (servicer.RollbackPolicy, admin_pb2.RollbackPolicyRequest(version="abcd")),
        (servicer.ReloadPolicy, admin_pb2.ReloadPolicyRequest()),
    ):
        context = _Context()
        with pytest.raises(_Aborted, match="keeps no policy versions"):
            await call(request, context)
        assert context.code == grpc.StatusCode.FAILED_PRECONDITION
