"""Development tooling, kept out of the runtime: nothing else under ``ims_fhir`` imports it.

- :mod:`ims_fhir.dev.synthetic`: the seeded synthetic record generator (tests, benchmarks,
  ``examples/``), ``python -m ims_fhir.dev.synthetic``.
- :mod:`ims_fhir.dev.hapi`: builds and runs the local HAPI FHIR server that the tests and
  ``ims-fhir dev-server`` use, ``python -m ims_fhir.dev.hapi build``.

Not in the wheel: users of the package never run them. They run from a checkout
(``pip install -e ".[dev]"``, which also brings the linters), where ``hapi-server/`` is.
"""
