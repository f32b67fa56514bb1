import sys

from shepherd.simulator.server import main

sys.exit(main())
