"""Policy tests (``authz test``): YAML cases, each a request and its expected decision,
run through the real engine at a fixed clock (:mod:`.spec` reads them, :mod:`.runner`
runs them)."""
