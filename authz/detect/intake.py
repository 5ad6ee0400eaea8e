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

#: the record's fields the detectors read, in this order (:data:`Picked`)
PICKED = (
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
#: those fields of a record, in one call (not eleven attribute reads): a plain tuple of
#: strings and numbers, which the garbage collector soon stops tracking and marshal
#: carries to the scoring child as it is (the record refers to the request, with its
#: credentials: it stays behind)
pick = operator.itemgetter(*(DecisionRecord._fields.index(f) for f in PICKED))
Picked = tuple[float, str, str, str, str, str, str, str, int, str, str]
#: where the client address sits in :data:`Picked` (the stage may replace it)
ADDRESS = PICKED.index("client_address")

#: what the ``detect`` stage queues: (the record's :data:`Picked` fields, route
#: template, credential name, body size, the epoch of the policy section it was built
#: with): strings and numbers only
Pending = tuple[Picked, str, str, int, int]


def observation_of(item: Pending) -> Observation:
    """The Observation of a decision the ``detect`` stage queued, as it was queued:
    no object ids, an undeclared path's shape not derived (the scorer's
    :func:`scored_observation` fills both in)."""
    fields, template, credential, size, _ = item
    (when, decision_id, route, method, path, kind, subject, decision, status, reason,
     address) = fields  # fmt: skip
    return _new(
        Observation,
        (when, decision_id, route, method, template, path, address, kind, subject,
         credential, (), decision != "deny", status, reason, size),
    )  # fmt: skip


def scored_observation(item: Pending, params: dict[str, re.Pattern[str]]) -> Observation:
    """:func:`observation_of` as the scorer needs it, in one tuple: the object ids
    read from the path by the route's :func:`param_pattern` (``params``: by route
    name), an undeclared path's shape."""
    fields, template, credential, size, _ = item
    (when, decision_id, route, method, path, kind, subject, decision, status, reason,
     address) = fields  # fmt: skip
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
