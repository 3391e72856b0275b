// SPDX-License-Identifier: GPL-2.0
/* Case (e), the target module loaded first: see livepatch.c and NOTES.md. */
#define PSM_PAIR e1
#include "target.c"
