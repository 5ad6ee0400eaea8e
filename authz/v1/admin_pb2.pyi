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
    __slots__ = ("method", "path", "declared", "route", "count", "first_seen", "last_seen", "distinct_callers", "outcomes", "query_parameters", "drift_query_parameters", "drift_body_fields")
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
    def __init__(self, method: _Optional[str] = ..., path: _Optional[str] = ..., declared: _Optional[bool] = ..., route: _Optional[str] = ..., count: _Optional[int] = ..., first_seen: _Optional[float] = ..., last_seen: _Optional[float] = ..., distinct_callers: _Optional[int] = ..., outcomes: _Optional[_Mapping[str, int]] = ..., query_parameters: _Optional[_Iterable[str]] = ..., drift_query_parameters: _Optional[_Iterable[str]] = ..., drift_body_fields: _Optional[_Iterable[str]] = ...) -> None: ...

class Inventory(_message.Message):
    __slots__ = ("endpoints", "capacity", "evicted", "evicted_requests", "unrouted", "policy_version", "started", "generated")
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    EVICTED_FIELD_NUMBER: _ClassVar[int]
    EVICTED_REQUESTS_FIELD_NUMBER: _ClassVar[int]
    UNROUTED_FIELD_NUMBER: _ClassVar[int]
    POLICY_VERSION_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    GENERATED_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    capacity: int
    evicted: int
    evicted_requests: int
    unrouted: int
    policy_version: str
    started: float
    generated: float
    def __init__(self, endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., capacity: _Optional[int] = ..., evicted: _Optional[int] = ..., evicted_requests: _Optional[int] = ..., unrouted: _Optional[int] = ..., policy_version: _Optional[str] = ..., started: _Optional[float] = ..., generated: _Optional[float] = ...) -> None: ...
