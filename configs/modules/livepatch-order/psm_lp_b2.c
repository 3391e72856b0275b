// SPDX-License-Identifier: GPL-2.0
/* Case (b), the livepatch loaded first: see livepatch.c and NOTES.md. */
#define PSM_PAIR b2
#define PSM_CASE PSM_CASE_B
#include "livepatch.c"
