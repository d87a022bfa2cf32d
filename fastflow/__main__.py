import sys

from fastflow.cli.main import main

sys.exit(main())
