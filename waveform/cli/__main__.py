"""``python -m waveform.cli``: the `waveform` command line."""

import sys

from waveform.cli import main

sys.exit(main())
