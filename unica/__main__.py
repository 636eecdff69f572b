import sys

from unica.cli import main

sys.exit(main())
