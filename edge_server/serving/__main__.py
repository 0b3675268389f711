"""`python -m edge_server.serving FD ...`: the lean gunicorn arbiter (see arbiter.py)."""

import sys

from edge_server.serving.arbiter import main

main(sys.argv)
