import sys

from shepherd_tools.gitiles_sim.server import main

sys.exit(main())
