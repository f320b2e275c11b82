"""`python -m codetr ...` == the `codetr` console script."""
import sys

from codetr.cli import main

sys.exit(main())
