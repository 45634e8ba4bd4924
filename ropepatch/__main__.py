import sys

from ropepatch.cli import main

sys.exit(main())
