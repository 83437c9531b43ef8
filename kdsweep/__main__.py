import sys

from kdsweep.cli import main

sys.exit(main())
