// SPDX-License-Identifier: GPL-2.0
/* Case (b), the livepatch loaded first: see livepatch.c and NOTES.md. */
#define PSM_PAIR b2
#include "target.c"
