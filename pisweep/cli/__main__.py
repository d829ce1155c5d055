import sys

from pisweep.cli.main import main

sys.exit(main())
