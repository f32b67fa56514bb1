import sys

from shepherd_tools.simulator.server import main

sys.exit(main())
