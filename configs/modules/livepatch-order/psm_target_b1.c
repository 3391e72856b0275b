// SPDX-License-Identifier: GPL-2.0
/* Case (b), the target module loaded first: see livepatch.c and NOTES.md. */
#define PSM_PAIR b1
#include "target.c"
