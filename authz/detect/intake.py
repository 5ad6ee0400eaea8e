"""What reaches the scorer, and where actions go when no enforcer is registered.

- :data:`Pending`: what the ``detect`` stage queues per decision (strings and
  numbers only) and :func:`observation_of`, which makes its
  :class:`~authz.detect.events.Observation` in the background
  (:func:`scored_observation`: with its object ids and shape, as the scorer takes it);
- :func:`param_pattern`: a route template's ``{param}`` segments as regex groups
  (object ids are read from the path in the background, never on the request path);
- :class:`LogOnlySink`: the :class:`~authz.detect.events.ActionSink` used when none
  is registered at :data:`~authz.detect.events.ACTION_SINK`.
"""

from __future__ import annotations

import collections
import operator
import re
from typing import Protocol

from authz.detect.events import Action, Observation, ResponseObservation
from authz.paths import path_shape
from authz.pathtemplate import LITERAL, PARAM, TemplateError, parse_template
from authz.record import DecisionRecord

_new = tuple.__new__

#: what the ``detect`` stage queues: (record, route template, credential name, body
#: size, the epoch of the policy section it was built with)
Pending = tuple[DecisionRecord, str, str, int, int]


def observation_of(item: Pending) -> Observation:
    """The Observation of a decision the ``detect`` stage queued (in the background)."""
    record, shape, credential, size, _ = item
    return _new(
        Observation,
        (
            record.time,
            record.decision_id,
            record.route,
            record.method,
            shape,
            record.path,
            record.client_address,
            record.identity_type,
            record.subject,
            credential,
            (),
            record.decision != "deny",
            record.status,
            record.reason,
            size,
        ),
    )


#: the record's fields an observation takes, in one call (not ten attribute reads)
_pick = operator.itemgetter(
    *(
        DecisionRecord._fields.index(f)
        for f in (
            "time",
            "decision_id",
            "route",
            "method",
            "path",
            "identity_type",
            "subject",
            "decision",
            "status",
            "reason",
            "client_address",
        )
    )
)


def scored_observation(item: Pending, params: dict[str, re.Pattern[str]]) -> Observation:
    """:func:`observation_of` as the scorer needs it, in one tuple: the object ids
    read from the path by the route's :func:`param_pattern` (``params``: by route
    name), an undeclared path's shape."""
    record, template, credential, size, _ = item
    (when, decision_id, route, method, path, kind, subject, decision, status, reason,
     address) = _pick(record)  # fmt: skip
    ids: tuple[str, ...] = ()
    if route:
        pattern = params.get(route)
        if pattern is not None:
            m = pattern.match(path)
            if m is not None:
                ids = m.groups()
    elif not template:
        template = path_shape(path) if path else ""
    return _new(
        Observation,
        (
            when,
            decision_id,
            route,
            method,
            template,
            path,
            address,
            kind,
            subject,
            credential,
            ids,
            decision != "deny",
            status,
            reason,
            size,
        ),
    )


class NamedRoute(Protocol):
    """What the scorer reads of a route: its name and its path template."""

    @property
    def name(self) -> str: ...

    @property
    def path(self) -> str: ...


def feed_observation(response: ResponseObservation, client: str) -> Observation:
    """The observation of a request only the access-log feed saw (a public route the
    generated Envoy config does not check): anonymous, allowed, from ``client``."""
    return _new(
        Observation,
        (response.time, "", response.route, response.method, "", response.path, client,
         "anonymous", "", "", (), True, response.status, "", 0),
    )  # fmt: skip


class LogOnlySink:
    """The sink when no enforcer is registered: actions are only logged (by the
    scorer) and the last few kept here."""

    def __init__(self, keep: int = 256) -> None:
        self.actions: collections.deque[Action] = collections.deque(maxlen=keep)

    def apply(self, action: Action) -> None:
        self.actions.append(action)


def param_pattern(template: str) -> re.Pattern[str] | None:
    """A regex capturing a template's ``{param}`` segments (None: it has none)."""
    try:
        parsed = parse_template(template)
    except TemplateError:
        return None
    if not any(kind == PARAM for kind, _ in parsed.segments):
        return None
    parts = []
    for kind, text in parsed.segments:
        if kind == LITERAL:
            parts.append("/" + re.escape(text))
        elif kind == PARAM:
            parts.append("/([^/]+)")
        else:
            parts.append("/.+")
    return re.compile("".join(parts) + "/?")
