// SPDX-License-Identifier: GPL-2.0
/* Case (e), the target module loaded first: see livepatch.c and NOTES.md. */
#define PSM_PAIR e1
#define PSM_CASE PSM_CASE_E
#include "livepatch.c"
