/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Shared by the target modules (psm_target_<pair>) and the livepatch modules
 * (psm_lp_<pair>) of patchscope's seed-002 experiment: relocations vs.
 * paravirt/alternatives patching in livepatch modules. See NOTES.md.
 *
 * A pair is <case><order>: the case a..e (livepatch.c, NOTES.md) and the
 * order in which a boot loads the two modules, 1 = the target module first,
 * 2 = the livepatch first. Each psm_target_<pair>.c / psm_lp_<pair>.c names
 * its pair (and case) and includes target.c or livepatch.c: every module is
 * one of two sources compiled under its own name, so that one boot can load
 * every pair, each in its order.
 */
#ifndef PSM_H
#define PSM_H

#include <linux/stringify.h>

/* What psm_target_<pair>'s psm_value holds: the replacement returns it + 1. */
#define PSM_VALUE 0x5eed0002UL

/* The target module's table of function pointers: its own "pv_ops". */
struct psm_ops {
	unsigned long (*save_fl)(void);
};

/*
 * KLP_CONVERT("key=value ..."): one rule for patchscope's klp converter
 * (framework/elf/klp.py), as an ELF note (owner "klp_convert", type 0, the
 * rule as its text) in the non-allocated section .note.klp_convert, which
 * the kernel's module loader ignores (it loads SHF_ALLOC sections only) and
 * modpost accepts. After the build, patchscope moves every relocation the
 * rule selects into a livepatch relocation section
 * .klp.rela.<object>.<section> (SHF_RELA_LIVEPATCH) and points it at the
 * symbol .klp.sym.<symobject>.<symbol>,<sympos> (SHN_LIVEPATCH), the way
 * kpatch-build or klp-convert would. Keys:
 *   section=   the relocated section, e.g. .text
 *   symbol=    the symbol the relocations reference
 *   object=    whose load applies them: vmlinux, or a module name
 *   symobject= where the symbol lives (default: object)
 *   sympos=    kallsyms position of the symbol (default 0: unique)
 *   function=  only relocations inside this function (default: all)
 */
#define KLP_CONVERT(rule)						\
	asm(".pushsection .note.klp_convert,\"\",@note\n\t"		\
	    ".balign 4\n\t"						\
	    ".long 2f - 1f\n\t"						\
	    ".long 4f - 3f\n\t"						\
	    ".long 0\n"							\
	    "1:\t.asciz \"klp_convert\"\n"				\
	    "2:\t.balign 4\n"						\
	    "3:\t.ascii \"" rule "\"\n"					\
	    "4:\t.balign 4\n\t"						\
	    ".popsection")

#endif /* PSM_H */
