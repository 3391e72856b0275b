// SPDX-License-Identifier: GPL-2.0
/* Case (c), the target module loaded first: see livepatch.c and NOTES.md. */
#define PSM_PAIR c1
#define PSM_CASE PSM_CASE_C
#include "livepatch.c"
