"""``python -m repvgg`` (and ``torchrun -m repvgg train ...``)."""
import sys

from .cli import main

sys.exit(main())
