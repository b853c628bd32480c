import sys

from ros_seqplanner.cli import main

sys.exit(main())
