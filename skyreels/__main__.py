import sys

from skyreels.cli import main

sys.exit(main())
