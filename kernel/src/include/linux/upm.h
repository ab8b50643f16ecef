/* SPDX-License-Identifier: GPL-2.0 */
#ifndef __LINUX_UPM_H
#define __LINUX_UPM_H
/*
 * User-guided page merging: madvise(MADV_UPM_MERGE) merges identical pages
 * at once, as KSM pages. See mm/upm.c and Documentation/admin-guide/mm/upm.rst.
 */

#include <linux/mm_types.h>
#include <linux/sched/coredump.h>

#ifdef CONFIG_UPM
int upm_madvise(struct vm_area_struct *vma, unsigned long start,
		unsigned long end, unsigned long *vm_flags);
int upm_merge_range(struct mm_struct *mm, unsigned long start,
		    unsigned long end);
void upm_unmerge_range(struct mm_struct *mm, unsigned long start,
		       unsigned long end);
void __upm_exit(struct mm_struct *mm);
void __upm_fork(struct mm_struct *mm, struct mm_struct *oldmm);

/* Called after ksm_fork(): the child keeps its parent's merge domain. */
static inline void upm_fork(struct mm_struct *mm, struct mm_struct *oldmm)
{
	if (test_bit(MMF_VM_MERGEABLE, &oldmm->flags))
		__upm_fork(mm, oldmm);
}

/* Called after exit_mmap(): frees what an mm that used UPM left in KSM. */
static inline void upm_exit(struct mm_struct *mm)
{
	if (test_bit(MMF_VM_MERGEABLE, &mm->flags))
		__upm_exit(mm);
}
#else
static inline int upm_merge_range(struct mm_struct *mm, unsigned long start,
				  unsigned long end)
{
	return -EINVAL;
}

static inline void upm_unmerge_range(struct mm_struct *mm, unsigned long start,
				     unsigned long end)
{
}

static inline void upm_exit(struct mm_struct *mm)
{
}

static inline void upm_fork(struct mm_struct *mm, struct mm_struct *oldmm)
{
}
#endif /* CONFIG_UPM */

#endif /* __LINUX_UPM_H */
