import sys

from unica.apps.cli import main

sys.exit(main())
