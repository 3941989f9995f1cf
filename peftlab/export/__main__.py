"""``python -m peftlab.export RUN --to peft|merged``."""

import sys

from peftlab.export import main

sys.exit(main())
