// SPDX-License-Identifier: GPL-2.0
/*
 * The module a livepatch patches: psm_target_<pair> (PSM_PAIR is the <pair>).
 *
 * psm_read() is the function F the livepatch replaces. It runs from this
 * module's init (after any livepatch already loaded was applied to it: the
 * kernel calls klp_module_coming() before the init) and from every read of
 * /sys/module/psm_target_<pair>/parameters/value.
 *
 * psm_value and psm_ops are deliberately not exported: the livepatch reaches
 * them only through module-specific livepatch relocations
 * (.klp.rela.psm_target_<pair>.*), which the kernel applies when both modules
 * are loaded.
 */
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/irqflags.h>
#include "psm.h"

#define PSM_NAME "psm_target_" __stringify(PSM_PAIR)

unsigned long psm_value = PSM_VALUE;

static unsigned long psm_save_fl(void)
{
	return native_save_fl();
}

struct psm_ops psm_ops = {
	.save_fl = psm_save_fl,
};

noinline unsigned long psm_read(void)
{
	return READ_ONCE(psm_value);
}

static int psm_value_get(char *buf, const struct kernel_param *kp)
{
	return sysfs_emit(buf, "%lx\n", psm_read());
}

static const struct kernel_param_ops psm_value_ops = {
	.get = psm_value_get,
};
module_param_cb(value, &psm_value_ops, NULL, 0444);
MODULE_PARM_DESC(value, "psm_read(): what the function a livepatch replaces returns");

static int __init psm_target_init(void)
{
	pr_info(PSM_NAME ": loaded, psm_read() = %lx\n", psm_read());
	return 0;
}

static void __exit psm_target_exit(void)
{
}

module_init(psm_target_init);
module_exit(psm_target_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("patchscope seed 002: the module a livepatch patches");
