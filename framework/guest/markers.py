"""What patchscope's generated /init prints, for the console monitor and the stage table. Pure constants."""

MARKER_USERSPACE = "patchscope: userspace"
MARKER_DONE = "patchscope: init done"
MARKER_SHELL = "patchscope: shell"
