import sys

from multissl.cli import main

sys.exit(main())
