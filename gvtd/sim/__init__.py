"""The emulated host behind `gvtd --simulate` and the tests.

Its FUSE file systems speak FUSE 3. mfusepy takes FUSE 2's libfuse.so.2 whenever one is
installed (grub-common depends on it, for grub-mount), unless told otherwise before it is
first imported: here, before any module of the simulation imports it.
"""

import os

if "FUSE_LIBRARY_PATH" not in os.environ:  # a caller's own choice stands
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
