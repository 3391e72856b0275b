// SPDX-License-Identifier: GPL-2.0
/* Case (d), the livepatch loaded first: see livepatch.c and NOTES.md. */
#define PSM_PAIR d2
#include "target.c"
