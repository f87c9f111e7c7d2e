"""``python -m ims_fhir`` is the ``ims-fhir`` command."""

import sys

from .cli import main

sys.exit(main())
