import sys

from pisweep.runner.entry import main

sys.exit(main())
