// SPDX-License-Identifier: GPL-2.0
/*
 * The e2e VM has no GVT-g. This module gives its kernel the two things of GVT-g's that
 * gvtd reads, so that they come from the kernel itself, as on a host with GVT-g:
 *
 *   echo "UUID ID" > /sys/module/gvtd_e2e_gvt/parameters/vgpu
 *       adds kvmgt's attribute group intel_vgpu/vgpu_id (reading ID) to that mdev;
 *   echo "TEXT" > /sys/module/gvtd_e2e_gvt/parameters/say
 *       prints TEXT with pr_err, as GVT-g's gvt_err and gvt_vgpu_err do (facility
 *       kernel, level error), which no write into /dev/kmsg can.
 */
#include <linux/device.h>
#include <linux/kernel.h>
#include <linux/mdev.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/string.h>
#include <linux/sysfs.h>

/*
 * The mdev bus is not exported; a driver registered on it (which binds to nothing: mdev
 * devices bind only to their parent's driver) is given it.
 */
static int probe(struct mdev_device *mdev)
{
	return -ENODEV;
}

static struct mdev_driver finder = {
	.device_api = "vfio-pci",
	.probe = probe,
	.driver = {
		.name = "gvtd_e2e_gvt",
		.owner = THIS_MODULE,
		.mod_name = KBUILD_MODNAME,
	},
};

struct named {
	struct device *dev;
	int id;
};

static struct named named[8];

static ssize_t vgpu_id_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	int i;

	for (i = 0; i < ARRAY_SIZE(named); i++)
		if (named[i].dev == dev)
			return sysfs_emit(buf, "%d\n", named[i].id);
	return -ENODEV;
}
static DEVICE_ATTR_RO(vgpu_id);

static struct attribute *intel_vgpu_attrs[] = {
	&dev_attr_vgpu_id.attr,
	NULL,
};

static const struct attribute_group intel_vgpu_group = {
	.name = "intel_vgpu",
	.attrs = intel_vgpu_attrs,
};

static int set_vgpu(const char *val, const struct kernel_param *kp)
{
	char uuid[37];
	struct device *dev;
	int id, i, ret;

	if (sscanf(val, "%36s %d", uuid, &id) != 2)
		return -EINVAL;
	for (i = 0; i < ARRAY_SIZE(named) && named[i].dev; i++)
		;
	if (i == ARRAY_SIZE(named))
		return -ENOSPC;
	dev = bus_find_device_by_name(finder.driver.bus, NULL, uuid);
	if (!dev)
		return -ENODEV;
	ret = sysfs_create_group(&dev->kobj, &intel_vgpu_group);
	/* no reference kept: the group goes with the device, which its driver may unload */
	put_device(dev);
	if (ret)
		return ret;
	named[i].dev = dev; /* only compared in vgpu_id_show, never followed */
	named[i].id = id;
	return 0;
}

static int say(const char *val, const struct kernel_param *kp)
{
	pr_err("%.*s\n", (int)strcspn(val, "\n"), val);
	return 0;
}

static const struct kernel_param_ops vgpu_ops = { .set = set_vgpu };
static const struct kernel_param_ops say_ops = { .set = say };
module_param_cb(vgpu, &vgpu_ops, NULL, 0200);
module_param_cb(say, &say_ops, NULL, 0200);

static int __init gvtd_e2e_gvt_init(void)
{
	return mdev_register_driver(&finder);
}
module_init(gvtd_e2e_gvt_init);

static void __exit gvtd_e2e_gvt_exit(void)
{
	mdev_unregister_driver(&finder);
}
module_exit(gvtd_e2e_gvt_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("GVT-g's kernel log messages and vgpu ids for gvtd's e2e VM");
