"""The emulated host behind `gvtd --simulate` (docs/simulation.md)."""

import os

# The emulated kernel is written for libfuse 3 (fuse3 in the Makefile's DEB_PACKAGES).
# mfusepy looks for libfuse 2 first, which other packages pull in (grub-common does), and
# would load it, whose mount options differ: name libfuse 3 unless the caller named one.
if "FUSE_LIBRARY_PATH" not in os.environ:
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")
