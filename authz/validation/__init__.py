"""Request contracts: the body, parameters, media type and size a route accepts.

- :mod:`.jsonbody` and :mod:`.form` read bodies under hard limits; what they cannot
  read is a deny, never a skipped validation.
- :mod:`.params` reads path, query and header parameters into typed values.
- :mod:`.schema` compiles JSON Schemas (at policy load) into validators whose
  patterns run in linear time, and turns the first failure into a JSON pointer.
- :mod:`.stage` is the ``post`` stage that enforces a route's contract.
- :mod:`.drift` finds the fields and parameters a contract does not declare.
"""
