// SPDX-License-Identifier: GPL-2.0-only
/*
 * User-guided page merging (UPM): madvise(MADV_UPM_MERGE) merges identical
 * pages synchronously, in the caller's context, with KSM's engine.
 *
 * UPM is to ksmd what MADV_COLLAPSE is to khugepaged: the caller does now,
 * for a range it knows to be duplicated, what the daemon would do in some
 * later pass. This file is compiled as part of mm/ksm.c (it is included at
 * the end of it) so that it uses KSM's rmap_items, stable tree and merge
 * primitives without widening their visibility, the way
 * kernel/sched/build_policy.c shares the scheduler's internals.
 *
 * What is indexed
 * ---------------
 * Each present anonymous page of an advised range is looked up, in order:
 *
 *  1. in KSM's stable tree (stable_tree_search()): an existing KSM page with
 *     the same content, made by UPM or by ksmd. The page is merged into it
 *     (try_to_merge_with_ksm_page() + stable_tree_append()).
 *  2. in UPM's candidate index: a hash table, keyed by KSM's page checksum,
 *     of pages advised earlier that had no twin yet. A candidate is the
 *     page's own KSM rmap_item (mm, address), flagged UPM_CANDIDATE_FLAG and
 *     linked through rmap_item->hlist, with the checksum in ->oldchecksum.
 *     Like a node of KSM's unstable tree it does not pin the page: on a hash
 *     match the candidate's page is looked up again through its mm, compared
 *     in full, and the two pages become a new KSM page
 *     (try_to_merge_two_pages() + stable_tree_insert()), as ksmd merges two
 *     unstable-tree pages.
 *  3. otherwise the page becomes a candidate itself.
 *
 * The index has no fixed capacity: its bucket array doubles when it holds
 * more candidates than buckets, and its memory is reported in index_bytes.
 * Merged pages are ordinary KSM pages on KSM's stable tree with rmap_items on
 * their stable nodes, so rmap walks, swap, migration, compaction, fork,
 * MADV_UNMERGEABLE and KSM's counters work on them unchanged. Candidates are
 * counted in KSM's pages_unshared, as unstable-tree pages are.
 *
 * When a page changes
 * -------------------
 * A candidate records its checksum at advise time. If the page is written
 * afterwards, the next page that hashes to that checksum finds out: the full
 * compare fails and the stale candidate is dropped from the index. Only a
 * full compare of write-protected pages (write_protect_page() and
 * pages_identical() in try_to_merge_one_page()) ever allows a merge, so a
 * page that changed is never merged with content it no longer has.
 *
 * Locking
 * -------
 * UPM acts as ksmd for the caller's range and follows ksmd's rules:
 *
 *  - ksm_thread_mutex is held while UPM works on one batch of at most
 *    UPM_BATCH pages. It serialises UPM with ksmd and with other UPM callers
 *    over rmap_lists, both trees, the candidate index and the counters. It is
 *    a sleeping lock; UPM holds no spinlock across anything that sleeps.
 *  - Lock order: ksm_thread_mutex -> mmap_lock -> folio lock -> page table
 *    lock, as in ksmd. madvise() first sets VM_MERGEABLE under the mmap write
 *    lock, drops it, and only then calls upm_merge_range(): like
 *    MADV_COLLAPSE, the range is processed after the lock taken by the VMA
 *    walk is gone.
 *  - Never two mmap_locks at once. The caller's mmap_lock is held (for read)
 *    only while a batch of present pages is collected, each with a
 *    reference; it is dropped before merging, and each merge step then takes
 *    one mm's mmap_lock at a time, as ksmd does. A candidate's mm is only
 *    try-locked when its page is looked up: on contention the candidate is
 *    kept and the page waits for a later advise.
 *  - Every lock is dropped between batches and cond_resched() runs; a fatal
 *    signal ends the call with -EINTR, and what was merged stays merged.
 *  - Like every path of mm/ksm.c that touches the stable tree under
 *    ksm_thread_mutex, UPM calls wait_while_offlining() right after taking
 *    it, before any mmap_lock: memory offlining prunes the stable tree in
 *    ksm_check_stable_tree() without the mutex. Merge, unmerge and exit all
 *    get there holding no other lock, so offlining never waits for them.
 *  - While /sys/kernel/mm/ksm/run is 2 (unmerge all), UPM merges nothing:
 *    upm_merge_range() fails with -EBUSY.
 *
 * Lifetime
 * --------
 * ksmd frees rmap_items lazily, in its next pass, and never runs while
 * /sys/kernel/mm/ksm/run is 0. So for an mm that used UPM, upm_exit(), called
 * after exit_mmap(), frees all of its rmap_items at once, in time
 * proportional to that mm's own items; its pages are unmapped by then, so a
 * stable node whose KSM page went away with it is found stale by
 * ksm_get_folio() and freed on the way. MADV_UNMERGEABLE likewise drops the
 * rmap_items of the unmerged range at once (upm_unmerge_range()), of its
 * mapped parts even when it fails with -ENOMEM for a hole.
 *
 * ksmd leaves candidates alone (should_skip_rmap_item()): they are merged
 * through the index, and with ksmd off there is no other way anyway.
 *
 * Merge domains
 * -------------
 * Sharing a page with another process tells each of them, through the time
 * a write takes (copy-on-write), whether the other holds the same content:
 * the memory deduplication side channel. So UPM merges a page only with
 * pages of the same merge domain. A caller's domain is the nearest cgroup,
 * on the default (v2) hierarchy, at or above its own that the administrator
 * marked with the UPM_DOMAIN_XATTR extended attribute (trusted.*: only
 * CAP_SYS_ADMIN can set it), or else the caller's own cgroup. Instances of
 * one function, each in its own cgroup under a marked parent, share; by
 * default, processes of different cgroups never do. The domain is the
 * cgroup's ID, which is never reused, and is looked up at each call.
 *
 * A KSM page takes the domain it is made in (upm_merge_domain, set under
 * ksm_thread_mutex while UPM merges, 0 while ksmd does, is copied into each
 * new stable node). The stable tree treats a KSM page of another domain as
 * it treats a full one (__is_page_sharing_candidate()): identical content
 * in two domains becomes two KSM pages, dups in one stable_node chain, as
 * with max_page_sharing. Candidates of other domains are passed over in the
 * index. ksmd merges in domain 0 and leaves mms that used UPM alone, and
 * their children (upm_fork()), so a page merged by UPM is never shared with
 * a page ksmd merged.
 *
 * Limits
 * ------
 * Every page UPM looks at costs an rmap_item (64 bytes), charged to the
 * caller's memory cgroup, and a candidate adds a slot to the index. An
 * rmap_item lives until its page is unmerged, its mm exits, or ksmd finds
 * its page gone: a process that advised, unmapped and advised again could
 * pile them up. So UPM keeps at most max_pages_per_process rmap_items per
 * mm (a quarter of RAM's pages by default; root can change it in sysfs); a
 * call that would need more ends with -ENOSPC, keeping what it merged.
 */

#include <linux/cgroup.h>
#include <linux/kernfs.h>
#include <linux/xattr.h>
#include <linux/upm.h>

/* Pages handled under one hold of ksm_thread_mutex. */
#define UPM_BATCH		64
/* The candidate index starts with 1 << UPM_MIN_HASH_BITS buckets. */
#define UPM_MIN_HASH_BITS	10
#define UPM_MAX_HASH_BITS	30
/* Marks a cgroup v2 directory as a merge domain for its whole subtree. */
#define UPM_DOMAIN_XATTR	XATTR_TRUSTED_PREFIX "upm.domain"

/* Set by upm_init(); changed through sysfs. */
static unsigned long upm_max_pages_per_process = ULONG_MAX;

/* The candidate index: under ksm_thread_mutex. */
static struct hlist_head *upm_buckets;
static unsigned int upm_hash_bits;

/* Counters: written under ksm_thread_mutex, read without it. */
static unsigned long upm_pages_advised;
static unsigned long upm_pages_merged_stable;
static unsigned long upm_pages_merged_new;
static unsigned long upm_pages_skipped;
static unsigned long upm_candidates_dropped;
static unsigned long upm_nr_candidates;
static atomic_long_t upm_calls = ATOMIC_LONG_INIT(0);
static atomic64_t upm_call_time_ns = ATOMIC64_INIT(0);

enum upm_result {
	UPM_MERGED_STABLE,	/* merged into an existing KSM page */
	UPM_MERGED_NEW,		/* merged with a candidate into a new KSM page */
	UPM_ALREADY,		/* was a KSM page mapped by this rmap_item */
	UPM_CANDIDATE,		/* no twin yet: now in the index */
	UPM_BUSY,		/* could not be merged now: locked or pinned */
};

static inline bool upm_is_candidate(struct ksm_rmap_item *rmap_item)
{
	return rmap_item->address & UPM_CANDIDATE_FLAG;
}

static struct hlist_head *upm_bucket(unsigned int checksum)
{
	return &upm_buckets[hash_32(checksum, upm_hash_bits)];
}

static int upm_index_init(void)
{
	if (upm_buckets)
		return 0;
	upm_buckets = kvcalloc(1UL << UPM_MIN_HASH_BITS, sizeof(*upm_buckets),
			       GFP_KERNEL);
	if (!upm_buckets)
		return -ENOMEM;
	upm_hash_bits = UPM_MIN_HASH_BITS;
	return 0;
}

/*
 * Keep at most one candidate per bucket on average. If the larger array
 * cannot be had, the old one stays: chains get longer, answers stay right.
 */
static void upm_index_grow(void)
{
	unsigned int bits = upm_hash_bits + 1;
	struct hlist_head *buckets;
	unsigned long i;

	if (upm_nr_candidates <= (1UL << upm_hash_bits) ||
	    bits > UPM_MAX_HASH_BITS)
		return;
	buckets = kvcalloc(1UL << bits, sizeof(*buckets),
			   GFP_KERNEL | __GFP_NOWARN);
	if (!buckets)
		return;
	for (i = 0; i < (1UL << upm_hash_bits); i++) {
		struct ksm_rmap_item *rmap_item;
		struct hlist_node *next;

		hlist_for_each_entry_safe(rmap_item, next, &upm_buckets[i], hlist) {
			hlist_del(&rmap_item->hlist);
			hlist_add_head(&rmap_item->hlist,
				       &buckets[hash_32(rmap_item->oldchecksum, bits)]);
		}
		cond_resched();
	}
	kvfree(upm_buckets);
	upm_buckets = buckets;
	upm_hash_bits = bits;
}

static void upm_add_candidate(struct ksm_rmap_item *rmap_item,
			      unsigned int checksum)
{
	rmap_item->oldchecksum = checksum;
	rmap_item->head = NULL;
	rmap_item->address |= UPM_CANDIDATE_FLAG;
	hlist_add_head(&rmap_item->hlist, upm_bucket(checksum));
	upm_nr_candidates++;
	ksm_pages_unshared++;
	upm_index_grow();
}

/* Called by remove_rmap_item_from_tree() for a candidate. */
static void upm_forget_candidate(struct ksm_rmap_item *rmap_item)
{
	hlist_del(&rmap_item->hlist);
	rmap_item->address &= PAGE_MASK;
	upm_nr_candidates--;
	ksm_pages_unshared--;
}

/*
 * The page a candidate remembers, with a reference, if it is still a present
 * anonymous page in a mergeable VMA; NULL if it is gone; ERR_PTR(-EBUSY) if
 * its mm's mmap_lock is contended (the candidate stays).
 */
static struct page *upm_get_candidate_page(struct ksm_rmap_item *rmap_item)
{
	struct mm_struct *mm = rmap_item->mm;
	unsigned long addr = rmap_item->address & PAGE_MASK;
	struct vm_area_struct *vma;
	struct page *page = NULL;
	struct folio_walk fw;
	struct folio *folio;

	if (!mmap_read_trylock(mm))
		return ERR_PTR(-EBUSY);
	vma = find_mergeable_vma(mm, addr);
	if (!vma)
		goto out;
	folio = folio_walk_start(&fw, vma, addr, 0);
	if (folio) {
		if (!folio_is_zone_device(folio) && folio_test_anon(folio)) {
			folio_get(folio);
			page = fw.page;
		}
		folio_walk_end(&fw, vma);
	}
	if (page) {
		flush_anon_page(vma, page, addr);
		flush_dcache_page(page);
	}
out:
	mmap_read_unlock(mm);
	return page;
}

static struct ksm_mm_slot *upm_mm_slot(struct mm_struct *mm)
{
	struct mm_slot *slot;

	spin_lock(&ksm_mmlist_lock);
	slot = mm_slot_lookup(mm_slots_hash, mm);
	spin_unlock(&ksm_mmlist_lock);
	return slot ? mm_slot_entry(slot, struct ksm_mm_slot, slot) : NULL;
}

/*
 * Whether @mm has used UPM, asked without ksm_thread_mutex, so that exit and
 * MADV_UNMERGEABLE of mms that never did do not wait for ksmd's batch. The
 * slot is only freed after it is unhashed under ksm_mmlist_lock.
 */
static bool upm_mm_used(struct mm_struct *mm)
{
	struct mm_slot *slot;
	bool used;

	spin_lock(&ksm_mmlist_lock);
	slot = mm_slot_lookup(mm_slots_hash, mm);
	used = slot && mm_slot_entry(slot, struct ksm_mm_slot, slot)->upm;
	spin_unlock(&ksm_mmlist_lock);
	return used;
}

/* The merge domain of @mm's last MADV_UPM_MERGE; 0 if it never made one. */
static u64 upm_mm_domain(struct mm_struct *mm)
{
	struct mm_slot *slot;
	u64 domain = 0;

	spin_lock(&ksm_mmlist_lock);
	slot = mm_slot_lookup(mm_slots_hash, mm);
	if (slot)
		domain = mm_slot_entry(slot, struct ksm_mm_slot, slot)->upm_domain;
	spin_unlock(&ksm_mmlist_lock);
	return domain;
}

/*
 * The calling task's merge domain: the ID of the nearest cgroup at or above
 * the task's, on the default hierarchy, marked with UPM_DOMAIN_XATTR, or of
 * the task's own cgroup. Never 0, which is ksmd's.
 */
static u64 upm_current_domain(void)
{
#ifdef CONFIG_CGROUPS
	struct cgroup *cgrp, *pos;
	u64 domain;

	rcu_read_lock();
	cgrp = task_dfl_cgroup(current);
	cgroup_get(cgrp);
	rcu_read_unlock();
	/*
	 * kernfs_xattr_get() takes a mutex: walk with a reference instead of
	 * under RCU. A cgroup holds a reference on its parent.
	 */
	for (pos = cgrp; pos; pos = cgroup_parent(pos))
		if (kernfs_xattr_get(pos->kn, UPM_DOMAIN_XATTR, NULL, 0) >= 0)
			break;
	domain = cgroup_id(pos ?: cgrp);
	cgroup_put(cgrp);
	return domain;
#else
	return 1;
#endif
}

/*
 * The rmap_item for @addr in the mm_slot's address-sorted rmap_list, found
 * from *@link onwards or inserted there. Unlike ksmd's get_next_rmap_item(),
 * this never frees the items it passes: ksmd's cursor may point into them.
 * New items are charged to the caller's memory cgroup.
 *
 * ksmd frees the items it meets below the address it has reached in this
 * pass (ksm_scan.address), taking them for pages that went away. An item
 * UPM needs there is one for a page UPM is about to merge: so when it lies
 * between ksmd's cursor and ksm_scan.address, the cursor moves past it. The
 * items it skips that way are looked at again in ksmd's next pass.
 *
 * Return: the rmap_item; ERR_PTR(-ENOSPC) if the mm already has
 * max_pages_per_process of them, ERR_PTR(-EAGAIN) if memory is short.
 */
static struct ksm_rmap_item *upm_get_rmap_item(struct ksm_mm_slot *mm_slot,
					       struct ksm_rmap_item ***link,
					       unsigned long addr)
{
	bool behind_ksmd = ksm_scan.mm_slot == mm_slot &&
			 addr < ksm_scan.address;
	bool passed_cursor = false;
	struct ksm_rmap_item **pos = *link;
	struct ksm_rmap_item *rmap_item;

	for (;;) {
		passed_cursor |= pos == ksm_scan.rmap_list;
		rmap_item = *pos;
		if (!rmap_item || (rmap_item->address & PAGE_MASK) >= addr)
			break;
		pos = &rmap_item->rmap_list;
	}
	if (!rmap_item || (rmap_item->address & PAGE_MASK) != addr) {
		if (mm_slot->slot.mm->ksm_rmap_items >=
		    READ_ONCE(upm_max_pages_per_process))
			return ERR_PTR(-ENOSPC);
		rmap_item = kmem_cache_zalloc(rmap_item_cache, GFP_KERNEL_ACCOUNT |
					      __GFP_NORETRY | __GFP_NOWARN);
		if (!rmap_item)
			return ERR_PTR(-EAGAIN);
		ksm_rmap_items++;
		rmap_item->mm = mm_slot->slot.mm;
		rmap_item->mm->ksm_rmap_items++;
		rmap_item->address = addr;
		rmap_item->rmap_list = *pos;
		*pos = rmap_item;
	}
	if (behind_ksmd && passed_cursor)
		ksm_scan.rmap_list = &rmap_item->rmap_list;
	*link = &rmap_item->rmap_list;
	return rmap_item;
}

/*
 * upm_merge_page - merge @page, mapped at @rmap_item's (mm, address), into an
 * identical KSM page, or with an identical candidate, or index it.
 *
 * Called with ksm_thread_mutex held and no mmap_lock; the caller holds a
 * reference on @page. Mirrors cmp_and_merge_page(), with the candidate index
 * in place of the unstable tree and no "changed since the last pass" test:
 * the caller asserts the content is meant to stay.
 */
static enum upm_result upm_merge_page(struct page *page,
				      struct ksm_rmap_item *rmap_item)
{
	bool max_page_sharing_bypass = false;
	struct ksm_stable_node *stable_node;
	struct ksm_rmap_item *cand;
	struct hlist_node *next;
	struct page *kpage;
	unsigned int checksum;
	int err;

	stable_node = page_stable_node(page);
	if (stable_node) {
		if (stable_node->head != &migrate_nodes &&
		    get_kpfn_nid(READ_ONCE(stable_node->kpfn)) !=
		    NUMA(stable_node->nid)) {
			stable_node_dup_del(stable_node);
			stable_node->head = &migrate_nodes;
			list_add(&stable_node->list, stable_node->head);
		}
		if (stable_node->head != &migrate_nodes &&
		    rmap_item->head == stable_node)
			return UPM_ALREADY;
		/* A KSM page inherited through fork may exceed the limit. */
		if (!is_page_sharing_candidate(stable_node))
			max_page_sharing_bypass = true;
	}

	kpage = stable_tree_search(page);
	if (kpage == page && rmap_item->head == stable_node) {
		put_page(kpage);
		return UPM_ALREADY;
	}

	remove_rmap_item_from_tree(rmap_item);

	if (kpage) {
		if (PTR_ERR(kpage) == -EBUSY)
			return UPM_BUSY;
		err = try_to_merge_with_ksm_page(rmap_item, page, kpage);
		if (!err) {
			lock_page(kpage);
			stable_tree_append(rmap_item, page_stable_node(kpage),
					   max_page_sharing_bypass);
			unlock_page(kpage);
		}
		put_page(kpage);
		return err ? UPM_BUSY : UPM_MERGED_STABLE;
	}
	/* A KSM page the stable tree does not know (yet): leave it be. */
	if (stable_node)
		return UPM_BUSY;

	checksum = calc_checksum(page);
	rmap_item->oldchecksum = checksum;
	if (ksm_use_zero_pages && checksum == zero_checksum &&
	    !try_to_merge_with_zero_page(rmap_item, page))
		return UPM_MERGED_STABLE;

	hlist_for_each_entry_safe(cand, next, upm_bucket(checksum), hlist) {
		struct page *tree_page;
		bool split;

		if (cand->oldchecksum != checksum ||
		    upm_mm_domain(cand->mm) != upm_merge_domain)
			continue;
		tree_page = upm_get_candidate_page(cand);
		if (IS_ERR(tree_page))
			continue;
		if (!tree_page) {
			/* Unmapped, swapped out or no longer mergeable. */
			remove_rmap_item_from_tree(cand);
			upm_candidates_dropped++;
			continue;
		}
		if (tree_page == page) {
			/* The same page, mapped in a forked mm. */
			put_page(tree_page);
			continue;
		}
		if (memcmp_pages(page, tree_page)) {
			/*
			 * A checksum collision, or the candidate was written
			 * since it was advised: it no longer has the content
			 * it was indexed under.
			 */
			if (calc_checksum(tree_page) != cand->oldchecksum) {
				remove_rmap_item_from_tree(cand);
				upm_candidates_dropped++;
			}
			put_page(tree_page);
			continue;
		}

		kpage = try_to_merge_two_pages(rmap_item, page, cand, tree_page);
		/* Both in one THP: split it now, the next advise merges. */
		split = PageTransCompound(page) &&
			compound_head(page) == compound_head(tree_page);
		put_page(tree_page);
		if (kpage) {
			lock_page(kpage);
			stable_node = stable_tree_insert(page_folio(kpage));
			if (stable_node) {
				stable_tree_append(cand, stable_node, false);
				stable_tree_append(rmap_item, stable_node, false);
			}
			unlock_page(kpage);
			if (!stable_node) {
				break_cow(cand);
				break_cow(rmap_item);
				return UPM_BUSY;
			}
			return UPM_MERGED_NEW;
		}
		if (split && trylock_page(page)) {
			split_huge_page(page);
			unlock_page(page);
		}
		/*
		 * One of the two pages is locked or pinned right now.
		 * try_to_merge_two_pages() has restored ours if needed; it
		 * stays a candidate for the next twin.
		 */
		break;
	}

	upm_add_candidate(rmap_item, checksum);
	return UPM_CANDIDATE;
}

struct upm_batch_entry {
	struct page *page;
	struct ksm_rmap_item *rmap_item;
};

/*
 * Collect up to UPM_BATCH present anonymous pages of [*addr, end) with a
 * reference each, and their rmap_items. Called with ksm_thread_mutex and the
 * mm's mmap_lock held; advances *addr past what it looked at.
 */
static int upm_collect(struct mm_struct *mm, struct ksm_mm_slot *mm_slot,
		       unsigned long *addrp, unsigned long end,
		       struct upm_batch_entry *batch, int *err)
{
	VMA_ITERATOR(vmi, mm, *addrp);
	struct ksm_rmap_item **link = &mm_slot->rmap_list;
	unsigned long addr = *addrp;
	struct vm_area_struct *vma;
	int n = 0;

	for_each_vma_range(vmi, vma, end) {
		unsigned long vma_end = min(end, vma->vm_end);

		if (addr < vma->vm_start)
			addr = vma->vm_start;
		/* Another thread may have changed the VMA since madvise. */
		if (!(vma->vm_flags & VM_MERGEABLE) || !vma->anon_vma) {
			addr = vma_end;
			continue;
		}
		for (; addr < vma_end; addr += PAGE_SIZE) {
			struct ksm_rmap_item *rmap_item;
			struct folio_walk fw;
			struct folio *folio;
			struct page *page;
			bool large;

			if (n == UPM_BATCH)
				goto out;
			folio = folio_walk_start(&fw, vma, addr, 0);
			if (!folio)
				continue;	/* absent: nothing to merge */
			if (folio_is_zone_device(folio) ||
			    !folio_test_anon(folio)) {
				folio_walk_end(&fw, vma);
				continue;
			}
			page = fw.page;
			large = folio_test_large(folio);
			folio_get(folio);
			folio_walk_end(&fw, vma);
			flush_anon_page(vma, page, addr);
			flush_dcache_page(page);

			rmap_item = upm_get_rmap_item(mm_slot, &link, addr);
			if (IS_ERR(rmap_item)) {
				folio_put(folio);
				*err = PTR_ERR(rmap_item);
				goto out;
			}
			batch[n].page = page;
			batch[n].rmap_item = rmap_item;
			n++;
			/*
			 * Merging splits a large folio, which needs the only
			 * extra reference to be the one of the page merged:
			 * end the batch here.
			 */
			if (large) {
				addr += PAGE_SIZE;
				goto out;
			}
		}
		cond_resched();
	}
	addr = end;
out:
	*addrp = addr;
	return n;
}

/**
 * upm_madvise - MADV_UPM_MERGE's part of the VMA walk: mark @vma mergeable.
 * @vma: a VMA overlapping the advised range, mmap_lock held for write
 * @start: start of the part of the range in @vma
 * @end: end of that part
 * @vm_flags: the VMA's new flags
 *
 * Return: 0, or -EINVAL for a VMA KSM cannot merge (shared, hugetlb, PFN or
 * I/O mappings, DAX, ...), or an error from ksm_madvise().
 */
int upm_madvise(struct vm_area_struct *vma, unsigned long start,
		unsigned long end, unsigned long *vm_flags)
{
	if (!(vma->vm_flags & VM_MERGEABLE) && !vma_ksm_compatible(vma))
		return -EINVAL;
	return ksm_madvise(vma, start, end, MADV_MERGEABLE, vm_flags);
}

/**
 * upm_merge_range - merge every present page of [@start, @end) now.
 * @mm: the caller's mm; no lock held
 * @start: page-aligned start, already made VM_MERGEABLE by upm_madvise()
 * @end: page-aligned end
 *
 * Return: 0 when every present page was looked at (some may be left
 * unmerged for being locked or pinned: see pages_skipped); -EINTR on a fatal
 * signal; -EAGAIN if memory for the index or an rmap_item could not be had;
 * -ENOSPC if the mm reached max_pages_per_process; -EBUSY while
 * /sys/kernel/mm/ksm/run is 2. What was merged before an error stays merged
 * (but for -EBUSY: writing 2 to run unmerged it).
 */
int upm_merge_range(struct mm_struct *mm, unsigned long start,
		    unsigned long end)
{
	u64 domain = upm_current_domain();
	u64 begin = ktime_get_ns();
	struct upm_batch_entry *batch;
	unsigned long addr = start;
	int err = 0;

	batch = kmalloc_array(UPM_BATCH, sizeof(*batch), GFP_KERNEL);
	if (!batch)
		return -EAGAIN;

	/*
	 * Freshly faulted pages wait in per-CPU LRU batches with a raised
	 * refcount, which write_protect_page() takes for a GUP pin: drain
	 * them once, as ksmd does before each full scan.
	 */
	lru_add_drain_all();

	while (addr < end && !err) {
		struct ksm_mm_slot *mm_slot;
		int i, n;

		if (mutex_lock_killable(&ksm_thread_mutex)) {
			err = -EINTR;
			break;
		}
		wait_while_offlining();
		if (upm_index_init()) {
			mutex_unlock(&ksm_thread_mutex);
			err = -EAGAIN;
			break;
		}
		if (mmap_read_lock_killable(mm)) {
			mutex_unlock(&ksm_thread_mutex);
			err = -EINTR;
			break;
		}
		mm_slot = upm_mm_slot(mm);
		if (!mm_slot) {
			/* Every mergeable VMA went away meanwhile. */
			mmap_read_unlock(mm);
			mutex_unlock(&ksm_thread_mutex);
			break;
		}
		mm_slot->upm = true;
		mm_slot->upm_domain = domain;
		/*
		 * run = 2: KSM has unmerged every KSM page (run_store() does
		 * it under ksm_thread_mutex) and keeps none until run changes
		 * again. Make no new ones. The mm is marked as UPM's above, so
		 * ksmd keeps out of it once it runs again.
		 */
		if (ksm_run & KSM_RUN_UNMERGE) {
			mmap_read_unlock(mm);
			mutex_unlock(&ksm_thread_mutex);
			err = -EBUSY;
			break;
		}
		n = upm_collect(mm, mm_slot, &addr, end, batch, &err);
		mmap_read_unlock(mm);

		upm_merge_domain = domain;
		for (i = 0; i < n; i++) {
			switch (upm_merge_page(batch[i].page, batch[i].rmap_item)) {
			case UPM_MERGED_STABLE:
				upm_pages_merged_stable++;
				break;
			case UPM_MERGED_NEW:
				upm_pages_merged_new += 2;
				break;
			case UPM_BUSY:
				upm_pages_skipped++;
				break;
			case UPM_ALREADY:
			case UPM_CANDIDATE:
				break;
			}
			put_page(batch[i].page);
		}
		upm_merge_domain = 0;
		upm_pages_advised += n;
		mutex_unlock(&ksm_thread_mutex);

		if (fatal_signal_pending(current))
			err = -EINTR;
		cond_resched();
	}

	kfree(batch);
	atomic_long_inc(&upm_calls);
	atomic64_add(ktime_get_ns() - begin, &upm_call_time_ns);
	return err;
}

/* Unlink and free @rmap_item, found at *@link of its mm's rmap_list. */
static void upm_free_rmap_item(struct ksm_rmap_item **link,
			       struct ksm_rmap_item *rmap_item)
{
	*link = rmap_item->rmap_list;
	/* ksmd's cursor must not point into a freed item. */
	if (ksm_scan.rmap_list == &rmap_item->rmap_list)
		ksm_scan.rmap_list = link;
	remove_rmap_item_from_tree(rmap_item);
	free_rmap_item(rmap_item);
}

/**
 * upm_unmerge_range - after MADV_UNMERGEABLE, free the rmap_items of the
 * range at once rather than in ksmd's next pass, so that KSM's and UPM's
 * counters are right when madvise returns even with ksmd stopped.
 * @mm: the caller's mm; no lock held
 * @start: start of the unmerged range
 * @end: end of the unmerged range
 */
void upm_unmerge_range(struct mm_struct *mm, unsigned long start,
		       unsigned long end)
{
	struct ksm_mm_slot *mm_slot;
	struct ksm_rmap_item **link, *rmap_item;

	if (!test_bit(MMF_VM_MERGEABLE, &mm->flags) || !upm_mm_used(mm))
		return;
	mutex_lock(&ksm_thread_mutex);
	/*
	 * Freeing rmap_items may free stale stable nodes, which must wait
	 * for ksm_check_stable_tree() as in ksmd. No mmap_lock is held yet
	 * (do_madvise() dropped its own): offlining waits for nothing of ours.
	 */
	wait_while_offlining();
	mmap_read_lock(mm);
	mm_slot = upm_mm_slot(mm);
	if (!mm_slot || !mm_slot->upm)
		goto out;
	link = &mm_slot->rmap_list;
	while ((rmap_item = *link)) {
		unsigned long addr = rmap_item->address & PAGE_MASK;
		struct vm_area_struct *vma;

		if (addr >= end)
			break;
		if (addr >= start) {
			vma = vma_lookup(mm, addr);
			if (!vma || !(vma->vm_flags & VM_MERGEABLE)) {
				upm_free_rmap_item(link, rmap_item);
				continue;
			}
		}
		link = &rmap_item->rmap_list;
	}
out:
	mmap_read_unlock(mm);
	mutex_unlock(&ksm_thread_mutex);
}

/**
 * __upm_exit - free an exited mm's rmap_items and mm_slot at once.
 * @mm: the mm, after exit_mmap()
 *
 * Only for mms that used UPM: others keep KSM's lazy cleanup by ksmd.
 */
void __upm_exit(struct mm_struct *mm)
{
	struct ksm_mm_slot *mm_slot;
	struct ksm_rmap_item *rmap_item;

	if (!upm_mm_used(mm))
		return;
	mutex_lock(&ksm_thread_mutex);
	/*
	 * Freeing rmap_items may free stale stable nodes: wait for
	 * ksm_check_stable_tree(), as ksmd does. __mmput() holds no lock
	 * here, and the mm's pages are gone with exit_mmap().
	 */
	wait_while_offlining();
	mm_slot = upm_mm_slot(mm);
	if (!mm_slot || !mm_slot->upm)
		goto out;

	while ((rmap_item = mm_slot->rmap_list))
		upm_free_rmap_item(&mm_slot->rmap_list, rmap_item);

	if (ksm_scan.mm_slot == mm_slot) {
		/* ksmd's cursor: ksmd frees the now empty slot. */
		ksm_scan.rmap_list = &mm_slot->rmap_list;
		ksm_scan.address = 0;
		goto out;
	}
	spin_lock(&ksm_mmlist_lock);
	hash_del(&mm_slot->slot.hash);
	list_del(&mm_slot->slot.mm_node);
	spin_unlock(&ksm_mmlist_lock);
	mm_slot_free(mm_slot_cache, mm_slot);
	clear_bit(MMF_VM_MERGE_ANY, &mm->flags);
	clear_bit(MMF_VM_MERGEABLE, &mm->flags);
	mmdrop(mm);
out:
	mutex_unlock(&ksm_thread_mutex);
}

static int __init upm_init(void)
{
	upm_max_pages_per_process = max(totalram_pages() / 4, 1UL);
	return 0;
}
subsys_initcall(upm_init);

/**
 * __upm_fork - the child of an mm that used UPM stays in its parent's merge
 * domain and, like its parent, out of ksmd's reach; otherwise ksmd, which
 * merges in no domain, could share the pages it inherited with anyone.
 * @mm: the child, just given an mm_slot by ksm_fork()
 * @oldmm: the parent
 *
 * Called from dup_mmap() with both mmap_locks held for write, so ksmd, which
 * takes the mmap_lock before it looks at an mm's pages, cannot have seen the
 * child's pages yet.
 */
void __upm_fork(struct mm_struct *mm, struct mm_struct *oldmm)
{
	struct mm_slot *parent, *child;

	spin_lock(&ksm_mmlist_lock);
	parent = mm_slot_lookup(mm_slots_hash, oldmm);
	child = mm_slot_lookup(mm_slots_hash, mm);
	if (parent && child) {
		struct ksm_mm_slot *from = mm_slot_entry(parent, struct ksm_mm_slot, slot);
		struct ksm_mm_slot *to = mm_slot_entry(child, struct ksm_mm_slot, slot);

		to->upm = READ_ONCE(from->upm);
		to->upm_domain = READ_ONCE(from->upm_domain);
	}
	spin_unlock(&ksm_mmlist_lock);
}

#ifdef CONFIG_SYSFS
/*
 * /sys/kernel/mm/upm/: the advice number, for user space to read rather than
 * hard-code, and counters. See Documentation/admin-guide/mm/upm.rst.
 */
#define UPM_ATTR_RO(_name)						\
	static struct kobj_attribute upm_##_name##_attr =		\
		__ATTR(_name, 0444, upm_##_name##_show, NULL)

static ssize_t upm_advice_show(struct kobject *kobj,
			       struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%d\n", MADV_UPM_MERGE);
}
UPM_ATTR_RO(advice);

#define UPM_COUNTER(_name, _value)					\
static ssize_t upm_##_name##_show(struct kobject *kobj,			\
				  struct kobj_attribute *attr, char *buf) \
{									\
	return sysfs_emit(buf, "%llu\n", (unsigned long long)(_value));	\
}									\
UPM_ATTR_RO(_name)

UPM_COUNTER(pages_advised, READ_ONCE(upm_pages_advised));
UPM_COUNTER(pages_merged_stable, READ_ONCE(upm_pages_merged_stable));
UPM_COUNTER(pages_merged_new, READ_ONCE(upm_pages_merged_new));
UPM_COUNTER(pages_skipped, READ_ONCE(upm_pages_skipped));
UPM_COUNTER(candidates, READ_ONCE(upm_nr_candidates));
UPM_COUNTER(candidates_dropped, READ_ONCE(upm_candidates_dropped));
UPM_COUNTER(index_bytes,
	    (upm_buckets ? (sizeof(struct hlist_head) << READ_ONCE(upm_hash_bits)) : 0) +
	    READ_ONCE(upm_nr_candidates) * sizeof(struct ksm_rmap_item));
UPM_COUNTER(calls, atomic_long_read(&upm_calls));

static ssize_t upm_max_pages_per_process_show(struct kobject *kobj,
					      struct kobj_attribute *attr,
					      char *buf)
{
	return sysfs_emit(buf, "%lu\n", READ_ONCE(upm_max_pages_per_process));
}

static ssize_t upm_max_pages_per_process_store(struct kobject *kobj,
					       struct kobj_attribute *attr,
					       const char *buf, size_t count)
{
	unsigned long max;
	int err;

	err = kstrtoul(buf, 10, &max);
	if (err)
		return err;
	WRITE_ONCE(upm_max_pages_per_process, max);
	return count;
}

static struct kobj_attribute upm_max_pages_per_process_attr =
	__ATTR(max_pages_per_process, 0644, upm_max_pages_per_process_show,
	       upm_max_pages_per_process_store);
UPM_COUNTER(call_time_ns, atomic64_read(&upm_call_time_ns));

static struct attribute *upm_attrs[] = {
	&upm_advice_attr.attr,
	&upm_pages_advised_attr.attr,
	&upm_pages_merged_stable_attr.attr,
	&upm_pages_merged_new_attr.attr,
	&upm_pages_skipped_attr.attr,
	&upm_candidates_attr.attr,
	&upm_candidates_dropped_attr.attr,
	&upm_index_bytes_attr.attr,
	&upm_calls_attr.attr,
	&upm_call_time_ns_attr.attr,
	&upm_max_pages_per_process_attr.attr,
	NULL,
};

static const struct attribute_group upm_attr_group = {
	.attrs = upm_attrs,
};

static int __init upm_sysfs_init(void)
{
	struct kobject *kobj;
	int err;

	kobj = kobject_create_and_add("upm", mm_kobj);
	if (!kobj)
		return -ENOMEM;
	err = sysfs_create_group(kobj, &upm_attr_group);
	if (err) {
		pr_err("upm: register sysfs failed\n");
		kobject_put(kobj);
	}
	return err;
}
subsys_initcall(upm_sysfs_init);
#endif /* CONFIG_SYSFS */
