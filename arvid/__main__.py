import sys

from arvid.cli import main

sys.exit(main())
