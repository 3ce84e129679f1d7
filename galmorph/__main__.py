import sys

from galmorph.cli import main

sys.exit(main())
