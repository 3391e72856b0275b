// SPDX-License-Identifier: GPL-2.0
/* Case (a), the target module loaded first: see livepatch.c and NOTES.md. */
#define PSM_PAIR a1
#define PSM_CASE PSM_CASE_A
#include "livepatch.c"
