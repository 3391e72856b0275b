// SPDX-License-Identifier: GPL-2.0
/* Case (a), the livepatch loaded first: see livepatch.c and NOTES.md. */
#define PSM_PAIR a2
#define PSM_CASE PSM_CASE_A
#include "livepatch.c"
