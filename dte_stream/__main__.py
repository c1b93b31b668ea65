"""``python -m dte_stream`` is the ``dte-stream`` command."""

import sys

from dte_stream.cli import main

sys.exit(main())
