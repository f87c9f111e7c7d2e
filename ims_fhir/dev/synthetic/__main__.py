"""``python -m ims_fhir.dev.synthetic``: see :mod:`.cli`."""

import sys

from .cli import main

sys.exit(main())
