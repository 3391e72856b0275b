"""What patchscope's generated /init prints, for the console monitor and the stage table. Pure constants."""

import re

MARKER_USERSPACE = "patchscope: userspace"
MARKER_DONE = "patchscope: init done"
MARKER_SHELL = "patchscope: shell"

# One module load (guest/initramfs.py): before insmod, then its result; N counts from 1 in load order.
#   patchscope: module 2: kvm_intel
#   patchscope: module 2 loaded: kvm_intel
#   patchscope: module 2 failed: kvm_intel: insmod: can't insert '/lib/modules/kvm_intel.ko': Operation not supported
MODULE_START = "patchscope: module {n}: {name}"
MODULE_LOADED = "patchscope: module {n} loaded: {name}"
MODULE_FAILED = "patchscope: module {n} failed: {name}: "      # insmod's message follows, on the same line
# Any of the three: n, result (None, "loaded" or "failed"), name, message (failed only).
MODULE_MARKER = re.compile(r"patchscope: module (?P<n>\d+)(?: (?P<result>loaded|failed))?: (?P<name>\w+)"
                           r"(?:: (?P<message>.*?))?\s*$")
