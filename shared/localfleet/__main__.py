import sys

from localfleet.cli.main import main

sys.exit(main())
