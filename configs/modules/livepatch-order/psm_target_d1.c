// SPDX-License-Identifier: GPL-2.0
/* Case (d), the target module loaded first: see livepatch.c and NOTES.md. */
#define PSM_PAIR d1
#include "target.c"
