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
