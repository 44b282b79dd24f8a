"""``python -m listener``: same as the ``fedmsg-wallboard`` console script."""

import sys

from listener.cli import main

if __name__ == "__main__":
    sys.exit(main())
