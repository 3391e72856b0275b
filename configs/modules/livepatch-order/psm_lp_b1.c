// SPDX-License-Identifier: GPL-2.0
/* Case (b), the target module loaded first: see livepatch.c and NOTES.md. */
#define PSM_PAIR b1
#define PSM_CASE PSM_CASE_B
#include "livepatch.c"
