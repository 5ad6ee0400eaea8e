"""``authz report``: what each data class exposes, from the policy and the audit trail.

:mod:`.exposure` reads a compiled policy (routes, who reaches them, static API keys);
:mod:`.usage` reads audit JSON-lines files (tokens seen: long-lived, rarely used);
:mod:`.render` prints both as text. Pure functions of their inputs and a clock value,
so a report is the same every time it is made from the same files and ``--now``.
"""
