from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetInventoryRequest(_message.Message):
    __slots__ = ("undeclared_only",)
    UNDECLARED_ONLY_FIELD_NUMBER: _ClassVar[int]
    undeclared_only: bool
    def __init__(self, undeclared_only: _Optional[bool] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("method", "path", "declared", "route", "count", "first_seen", "last_seen", "distinct_callers", "outcomes", "query_parameters", "drift_query_parameters", "drift_body_fields", "callers_sketch")
    class OutcomesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    DECLARED_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    DISTINCT_CALLERS_FIELD_NUMBER: _ClassVar[int]
    OUTCOMES_FIELD_NUMBER: _ClassVar[int]
    QUERY_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    DRIFT_QUERY_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    DRIFT_BODY_FIELDS_FIELD_NUMBER: _ClassVar[int]
    CALLERS_SKETCH_FIELD_NUMBER: _ClassVar[int]
    method: str
    path: str
    declared: bool
    route: str
    count: int
    first_seen: float
    last_seen: float
    distinct_callers: int
    outcomes: _containers.ScalarMap[str, int]
    query_parameters: _containers.RepeatedScalarFieldContainer[str]
    drift_query_parameters: _containers.RepeatedScalarFieldContainer[str]
    drift_body_fields: _containers.RepeatedScalarFieldContainer[str]
    callers_sketch: bytes
    def __init__(self, method: _Optional[str] = ..., path: _Optional[str] = ..., declared: _Optional[bool] = ..., route: _Optional[str] = ..., count: _Optional[int] = ..., first_seen: _Optional[float] = ..., last_seen: _Optional[float] = ..., distinct_callers: _Optional[int] = ..., outcomes: _Optional[_Mapping[str, int]] = ..., query_parameters: _Optional[_Iterable[str]] = ..., drift_query_parameters: _Optional[_Iterable[str]] = ..., drift_body_fields: _Optional[_Iterable[str]] = ..., callers_sketch: _Optional[bytes] = ...) -> None: ...

class Inventory(_message.Message):
    __slots__ = ("endpoints", "capacity", "evicted", "evicted_requests", "unrouted", "policy_version", "started", "generated", "workers")
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    EVICTED_FIELD_NUMBER: _ClassVar[int]
    EVICTED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    UNROUTED_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    GENERATED_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    capacity: int
    evicted: int
    evicted_requests: int
    unrouted: int
    policy_version: str
    started: float
    generated: float
    workers: int
    def __init__(self, endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., capacity: _Optional[int] = ..., evicted: _Optional[int] = ..., evicted_requests: _Optional[int] = ..., unrouted: _Optional[int] = ..., policy_version: _Optional[str] = ..., started: _Optional[float] = ..., generated: _Optional[float] = ..., workers: _Optional[int] = ...) -> None: ...

class Header(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: str
    def __init__(self, name: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("method", "url", "headers", "body", "principal", "certificate", "source_address")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    method: str
    url: str
    headers: _containers.RepeatedCompositeFieldContainer[Header]
    body: bytes
    principal: str
    certificate: str
    source_address: str
    def __init__(self, method: _Optional[str] = ..., url: _Optional[str] = ..., headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., body: _Optional[bytes] = ..., principal: _Optional[str] = ..., certificate: _Optional[str] = ..., source_address: _Optional[str] = ...) -> None: ...

class Step(_message.Message):
    __slots__ = ("name", "phase", "outcome", "reason", "element", "duration_ms")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ELEMENT_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    name: str
    phase: str
    outcome: str
    reason: str
    element: str
    duration_ms: float
    def __init__(self, name: _Optional[str] = ..., phase: _Optional[str] = ..., outcome: _Optional[str] = ..., reason: _Optional[str] = ..., element: _Optional[str] = ..., duration_ms: _Optional[float] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("allowed", "status", "reason", "route", "monitored", "policy_version", "upstream_headers", "removed_upstream_headers", "response_headers", "body", "steps", "subject")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    MONITORED_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_HEADERS_FIELD_NUMBER: _ClassVar[int]
    REMOVED_UPSTREAM_HEADERS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_HEADERS_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    status: int
    reason: str
    route: str
    monitored: bool
    policy_version: str
    upstream_headers: _containers.RepeatedCompositeFieldContainer[Header]
    removed_upstream_headers: _containers.RepeatedScalarFieldContainer[str]
    response_headers: _containers.RepeatedCompositeFieldContainer[Header]
    body: str
    steps: _containers.RepeatedCompositeFieldContainer[Step]
    subject: str
    def __init__(self, allowed: _Optional[bool] = ..., status: _Optional[int] = ..., reason: _Optional[str] = ..., route: _Optional[str] = ..., monitored: _Optional[bool] = ..., policy_version: _Optional[str] = ..., upstream_headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., removed_upstream_headers: _Optional[_Iterable[str]] = ..., response_headers: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., body: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[Step, _Mapping]]] = ..., subject: _Optional[str] = ...) -> None: ...

class GetCountersRequest(_message.Message):
    __slots__ = ("prefix",)
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    prefix: str
    def __init__(self, prefix: _Optional[str] = ...) -> None: ...

class Series(_message.Message):
    __slots__ = ("name", "kind", "labels", "value", "count", "sum", "bounds", "bucket_counts")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SUM_FIELD_NUMBER: _ClassVar[int]
    BOUNDS_FIELD_NUMBER: _ClassVar[int]
    BUCKET_COUNTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    labels: _containers.RepeatedCompositeFieldContainer[Header]
    value: float
    count: int
    sum: float
    bounds: _containers.RepeatedScalarFieldContainer[float]
    bucket_counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., labels: _Optional[_Iterable[_Union[Header, _Mapping]]] = ..., value: _Optional[float] = ..., count: _Optional[int] = ..., sum: _Optional[float] = ..., bounds: _Optional[_Iterable[float]] = ..., bucket_counts: _Optional[_Iterable[int]] = ...) -> None: ...

class Counters(_message.Message):
    __slots__ = ("series", "workers")
    SERIES_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    series: _containers.RepeatedCompositeFieldContainer[Series]
    workers: int
    def __init__(self, series: _Optional[_Iterable[_Union[Series, _Mapping]]] = ..., workers: _Optional[int] = ...) -> None: ...

class ListEnforcementsRequest(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, responses: _Optional[_Iterable[str]] = ...) -> None: ...

class Enforcement(_message.Message):
    __slots__ = ("response", "target_kind", "target", "created", "expires", "source", "by", "evidence", "monitor", "note")
    class EvidenceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    TARGET_KIND_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    response: str
    target_kind: str
    target: str
    created: float
    expires: float
    source: str
    by: str
    evidence: _containers.ScalarMap[str, str]
    monitor: bool
    note: str
    def __init__(self, response: _Optional[str] = ..., target_kind: _Optional[str] = ..., target: _Optional[str] = ..., created: _Optional[float] = ..., expires: _Optional[float] = ..., source: _Optional[str] = ..., by: _Optional[str] = ..., evidence: _Optional[_Mapping[str, str]] = ..., monitor: _Optional[bool] = ..., note: _Optional[str] = ...) -> None: ...

class Enforcements(_message.Message):
    __slots__ = ("enforcements", "workers", "store")
    ENFORCEMENTS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    enforcements: _containers.RepeatedCompositeFieldContainer[Enforcement]
    workers: int
    store: str
    def __init__(self, enforcements: _Optional[_Iterable[_Union[Enforcement, _Mapping]]] = ..., workers: _Optional[int] = ..., store: _Optional[str] = ...) -> None: ...

class AddEnforcementRequest(_message.Message):
    __slots__ = ("response", "target_kind", "target", "ttl_seconds", "note", "operator")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    TARGET_KIND_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    response: str
    target_kind: str
    target: str
    ttl_seconds: float
    note: str
    operator: str
    def __init__(self, response: _Optional[str] = ..., target_kind: _Optional[str] = ..., target: _Optional[str] = ..., ttl_seconds: _Optional[float] = ..., note: _Optional[str] = ..., operator: _Optional[str] = ...) -> None: ...

class LiftEnforcementRequest(_message.Message):
    __slots__ = ("response", "target_kind", "target", "operator")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    TARGET_KIND_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    response: str
    target_kind: str
    target: str
    operator: str
    def __init__(self, response: _Optional[str] = ..., target_kind: _Optional[str] = ..., target: _Optional[str] = ..., operator: _Optional[str] = ...) -> None: ...

class LiftEnforcementResponse(_message.Message):
    __slots__ = ("lifted", "enforcement", "workers")
    LIFTED_FIELD_NUMBER: _ClassVar[int]
    ENFORCEMENT_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    lifted: bool
    enforcement: Enforcement
    workers: int
    def __init__(self, lifted: _Optional[bool] = ..., enforcement: _Optional[_Union[Enforcement, _Mapping]] = ..., workers: _Optional[int] = ...) -> None: ...

class ListActionsRequest(_message.Message):
    __slots__ = ("limit", "detector")
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_FIELD_NUMBER: _ClassVar[int]
    limit: int
    detector: str
    def __init__(self, limit: _Optional[int] = ..., detector: _Optional[str] = ...) -> None: ...

class ActionEntry(_message.Message):
    __slots__ = ("time", "detector", "response", "target_kind", "target", "ttl", "reason", "evidence", "monitor", "outcome", "detail")
    class EvidenceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TIME_FIELD_NUMBER: _ClassVar[int]
    DETECTOR_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    TARGET_KIND_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    MONITOR_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    time: float
    detector: str
    response: str
    target_kind: str
    target: str
    ttl: float
    reason: str
    evidence: _containers.ScalarMap[str, str]
    monitor: bool
    outcome: str
    detail: str
    def __init__(self, time: _Optional[float] = ..., detector: _Optional[str] = ..., response: _Optional[str] = ..., target_kind: _Optional[str] = ..., target: _Optional[str] = ..., ttl: _Optional[float] = ..., reason: _Optional[str] = ..., evidence: _Optional[_Mapping[str, str]] = ..., monitor: _Optional[bool] = ..., outcome: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class Actions(_message.Message):
    __slots__ = ("actions", "workers")
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    actions: _containers.RepeatedCompositeFieldContainer[ActionEntry]
    workers: int
    def __init__(self, actions: _Optional[_Iterable[_Union[ActionEntry, _Mapping]]] = ..., workers: _Optional[int] = ...) -> None: ...

class ListPoliciesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PolicyVersion(_message.Message):
    __slots__ = ("version", "source", "loaded", "activated", "origin", "by", "active", "routes")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    LOADED_FIELD_NUMBER: _ClassVar[int]
    ACTIVATED_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    version: str
    source: str
    loaded: float
    activated: float
    origin: str
    by: str
    active: bool
    routes: int
    def __init__(self, version: _Optional[str] = ..., source: _Optional[str] = ..., loaded: _Optional[float] = ..., activated: _Optional[float] = ..., origin: _Optional[str] = ..., by: _Optional[str] = ..., active: _Optional[bool] = ..., routes: _Optional[int] = ...) -> None: ...

class PolicyVersions(_message.Message):
    __slots__ = ("versions", "capacity", "on_disk", "workers", "active")
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    ON_DISK_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[PolicyVersion]
    capacity: int
    on_disk: str
    workers: int
    active: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, versions: _Optional[_Iterable[_Union[PolicyVersion, _Mapping]]] = ..., capacity: _Optional[int] = ..., on_disk: _Optional[str] = ..., workers: _Optional[int] = ..., active: _Optional[_Iterable[str]] = ...) -> None: ...

class RollbackPolicyRequest(_message.Message):
    __slots__ = ("version", "operator")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    version: str
    operator: str
    def __init__(self, version: _Optional[str] = ..., operator: _Optional[str] = ...) -> None: ...

class ReloadPolicyRequest(_message.Message):
    __slots__ = ("operator",)
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    operator: str
    def __init__(self, operator: _Optional[str] = ...) -> None: ...

class PolicyChange(_message.Message):
    __slots__ = ("changed", "previous", "active", "on_disk", "warning", "workers", "errors")
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    ON_DISK_FIELD_NUMBER: _ClassVar[int]
    WARNING_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    changed: bool
    previous: str
    active: str
    on_disk: str
    warning: str
    workers: int
    errors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, changed: _Optional[bool] = ..., previous: _Optional[str] = ..., active: _Optional[str] = ..., on_disk: _Optional[str] = ..., warning: _Optional[str] = ..., workers: _Optional[int] = ..., errors: _Optional[_Iterable[str]] = ...) -> None: ...
