"""``python -m iotdata``: the ``iotdata`` command."""

import sys

from iotdata.cli import main

sys.exit(main())
