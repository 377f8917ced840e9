"""The version this process serves: the first word of the file $LIVESWAP_TEST_STATE, read once at start.

A second word is a behaviour: ``exit-1`` makes the server exit 1 at once (a broken build), with a line
on stderr saying so; ``raise-slow`` makes the import raise after 1.5 s (a broken app whose gunicorn
master has long said READY=1 when its workers fail to boot).
"""

from __future__ import annotations

import os
import sys
import time

with open(os.environ["LIVESWAP_TEST_STATE"]) as _f:
    VERSION, _, BEHAVIOUR = _f.read().strip().partition(" ")

if BEHAVIOUR == "raise-slow":
    time.sleep(1.5)
    raise RuntimeError(f"broken app {VERSION}")
if BEHAVIOUR == "exit-1":
    print(f"broken build {VERSION}: exiting with status 1", file=sys.stderr, flush=True)
    sys.exit(1)
