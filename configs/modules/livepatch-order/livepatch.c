// SPDX-License-Identifier: GPL-2.0
/*
 * The livepatch: psm_lp_<pair> replaces psm_target_<pair>'s psm_read() with
 * psm_lp_read(), a body that holds a paravirt call site and alternatives.
 * PSM_CASE picks which relocation of that body patchscope's klp converter
 * turns into a livepatch relocation (the KLP_CONVERT rules below), so that
 * each PSM_CASE puts one of NOTES.md's cases (a)-(e) in front of the kernel
 * (<n> is the pair's order, 1 or 2):
 *
 *   a  pv_ops of the irq.save_fl pv site -> .klp.rela.vmlinux..text
 *      (a vmlinux-specific livepatch relocation inside a pv site and an
 *      alternative); psm_value -> .klp.rela.psm_target_a<n>..text, outside
 *      every site. The case the kernel allows: both orders load.
 *   b  pv_ops of the same pv site -> .klp.rela.psm_target_b<n>..text, symbol
 *      .klp.sym.vmlinux.pv_ops,0: the seed's case, which klp_resolve_symbols
 *      refuses.
 *   c  a pv site whose call goes through the target module's own ops table
 *      (psm_ops, unexported): its displacement is a module-specific
 *      livepatch relocation inside a pv site.
 *   d  an alternative (X86_FEATURE_ALWAYS) whose original instruction reads
 *      psm_value and whose replacement, mov $0,%rax, holds zeros where the
 *      relocation goes: the nonzero check cannot see that apply_alternatives
 *      already wrote there.
 *   e  the same alternative with the replacement xor %eax,%eax (padded with
 *      a NOP): nonzero bytes where the relocation goes.
 *
 * Every case calls arch_local_save_flags() (a .parainstructions site for
 * irq.save_fl inside an ALT_NOT(X86_FEATURE_XENPV) alternative): natively it
 * becomes pushf; pop %rax, under Xen PV a call to xen_save_fl_direct.
 *
 * /sys/module/psm_lp_<pair>/parameters/text dumps psm_lp_read()'s bytes as they
 * are now; the init dumps them before and after klp_enable_patch().
 */
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/kallsyms.h>
#include <linux/livepatch.h>
#include <linux/irqflags.h>
#include <asm/alternative.h>
#include <asm/cpufeatures.h>
#include <asm/paravirt.h>
#include "psm.h"

#define PSM_CASE_A 1
#define PSM_CASE_B 2
#define PSM_CASE_C 3
#define PSM_CASE_D 4
#define PSM_CASE_E 5

#define PSM_NAME "psm_lp_" __stringify(PSM_PAIR)
#define PSM_TARGET "psm_target_" __stringify(PSM_PAIR)

/* The target module's, not exported: reached through .klp.rela.<target> relocations. */
extern unsigned long psm_value;
extern struct psm_ops psm_ops;

#if PSM_CASE == PSM_CASE_A
KLP_CONVERT("section=.text symbol=pv_ops object=vmlinux function=psm_lp_read");
KLP_CONVERT("section=.text symbol=psm_value object=" PSM_TARGET " function=psm_lp_read");
#elif PSM_CASE == PSM_CASE_B
KLP_CONVERT("section=.text symbol=pv_ops object=" PSM_TARGET " symobject=vmlinux function=psm_lp_read");
KLP_CONVERT("section=.text symbol=psm_value object=" PSM_TARGET " function=psm_lp_read");
#elif PSM_CASE == PSM_CASE_C
KLP_CONVERT("section=.text symbol=psm_ops object=" PSM_TARGET " function=psm_lp_read");
#elif PSM_CASE == PSM_CASE_D || PSM_CASE == PSM_CASE_E
KLP_CONVERT("section=.text symbol=psm_value object=" PSM_TARGET " function=psm_lp_read");
#else
#error "PSM_CASE must be one of PSM_CASE_A..PSM_CASE_E"
#endif

#if PSM_CASE == PSM_CASE_D
/* mov $0x0,%rax spelled out, so that the assembler cannot shorten it: 48 c7 c0 00 00 00 00 */
#define PSM_ALT_REPLACEMENT ".byte 0x48, 0xc7, 0xc0, 0x00, 0x00, 0x00, 0x00"
#else
#define PSM_ALT_REPLACEMENT "xor %%eax, %%eax"
#endif

noinline unsigned long psm_lp_read(void)
{
	unsigned long flags = arch_local_save_flags();
	unsigned long v;

#if PSM_CASE == PSM_CASE_A || PSM_CASE == PSM_CASE_B
	v = READ_ONCE(psm_value) + 1;
#elif PSM_CASE == PSM_CASE_C
	{
		/*
		 * A pv site (patch type irq.save_fl) calling through psm_ops instead of pv_ops:
		 * the kernel's PARAVIRT_CALL, spelled out (asm/paravirt.h #undefs it).
		 */
		unsigned long __edi = __edi, __esi = __esi, __edx = __edx, __ecx = __ecx;

		asm volatile(paravirt_alt(ANNOTATE_RETPOLINE_SAFE "call *%[paravirt_opptr];")
			     : "=a" (v), "=D" (__edi), "=S" (__esi), "=d" (__edx), "=c" (__ecx),
			       ASM_CALL_CONSTRAINT
			     : [paravirt_typenum] "i" (PARAVIRT_PATCH(irq.save_fl)),
			       [paravirt_opptr] "m" (psm_ops.save_fl),
			       paravirt_clobber(CLBR_ANY)
			     : "memory", "cc", "r8", "r9", "r10", "r11");
	}
#else
	/* An alternative whose original instruction reads the target's psm_value. */
	asm volatile(ALTERNATIVE("movq psm_value(%%rip), %%rax", PSM_ALT_REPLACEMENT, X86_FEATURE_ALWAYS)
		     : "=a" (v));
#endif
	return v | (flags & X86_EFLAGS_IF ? 0 : 1UL << 63);
}

/* psm_lp_read()'s bytes, 16 a line, with its address and size from kallsyms. */
static int psm_text(char *buf, size_t size)
{
	const u8 *p = (const u8 *)psm_lp_read;
	char sym[KSYM_SYMBOL_LEN];
	unsigned long len = 0;
	const char *slash;
	int n, i;

	sprint_symbol(sym, (unsigned long)p);
	slash = strchr(sym, '/');
	if (!slash || kstrtoul(strsep((char **)&slash, " ") + 1, 16, &len))
		len = 0;
	if (len > 256)
		len = 256;
	n = scnprintf(buf, size, PSM_NAME ": psm_lp_read at %px, %lu bytes\n", p, len);
	for (i = 0; i < len; i += 16)
		n += scnprintf(buf + n, size - n, PSM_NAME ": +%02x: %*ph\n", i,
			       (int)min(16UL, len - i), p + i);
	return n;
}

static int psm_text_get(char *buf, const struct kernel_param *kp)
{
	return psm_text(buf, PAGE_SIZE);
}

static const struct kernel_param_ops psm_text_ops = {
	.get = psm_text_get,
};
module_param_cb(text, &psm_text_ops, NULL, 0444);
MODULE_PARM_DESC(text, "psm_lp_read()'s bytes as they are now");

static struct klp_func psm_funcs[] = {
	{
		.old_name = "psm_read",
		.new_func = psm_lp_read,
	}, { }
};

static struct klp_object psm_objs[] = {
	{
		.name = PSM_TARGET,
		.funcs = psm_funcs,
	}, { }
};

static struct klp_patch psm_patch = {
	.mod = THIS_MODULE,
	.objs = psm_objs,
};

static void psm_dump(const char *when)
{
	char *buf = (char *)__get_free_page(GFP_KERNEL);

	if (!buf)
		return;
	psm_text(buf, PAGE_SIZE);
	pr_info(PSM_NAME ": text %s\n%s", when, buf);
	free_page((unsigned long)buf);
}

static int __init psm_lp_init(void)
{
	int ret;

	psm_dump("before klp_enable_patch");
	ret = klp_enable_patch(&psm_patch);
	pr_info(PSM_NAME ": klp_enable_patch() = %d\n", ret);
	if (!ret)
		psm_dump("after klp_enable_patch");
	return ret;
}

static void __exit psm_lp_exit(void)
{
}

module_init(psm_lp_init);
module_exit(psm_lp_exit);
MODULE_LICENSE("GPL");
MODULE_INFO(livepatch, "Y");
MODULE_DESCRIPTION("patchscope seed 002: a livepatch whose new function holds pv sites and alternatives");
