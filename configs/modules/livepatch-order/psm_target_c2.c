// SPDX-License-Identifier: GPL-2.0
/* Case (c), the livepatch loaded first: see livepatch.c and NOTES.md. */
#define PSM_PAIR c2
#include "target.c"
