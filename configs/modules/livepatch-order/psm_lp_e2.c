// SPDX-License-Identifier: GPL-2.0
/* Case (e), the livepatch loaded first: see livepatch.c and NOTES.md. */
#define PSM_PAIR e2
#define PSM_CASE PSM_CASE_E
#include "livepatch.c"
