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
 * Everything UPM indexes belongs to a merge domain (see below), a struct
 * upm_domain with a stable tree and a candidate index of its own. Each
 * present anonymous page of an advised range is looked up, in order:
 *
 *  1. in its domain's stable tree (stable_tree_search() with
 *     upm_merge_domain set): an existing KSM page with the same content made
 *     by UPM in this domain. The page is merged into it
 *     (try_to_merge_with_ksm_page() + stable_tree_append()).
 *  2. in its domain's candidate index: a hash table, keyed by KSM's page
 *     checksum, of pages advised earlier that had no twin yet. A candidate is
 *     the page's own KSM rmap_item (mm, address), flagged UPM_CANDIDATE_FLAG
 *     and linked through rmap_item->hlist, with the checksum in
 *     ->oldchecksum and its domain in ->upm_domain.
 *     Like a node of KSM's unstable tree it does not pin the page: on a hash
 *     match the candidate's page is looked up again through its mm, compared
 *     in full, and the two pages become a new KSM page
 *     (try_to_merge_two_pages() + stable_tree_insert()), as ksmd merges two
 *     unstable-tree pages.
 *  3. otherwise the page becomes a candidate itself.
 *
 * An index has no fixed capacity: its bucket array, charged to the memory
 * cgroup of the caller that sized it, doubles when it holds more candidates
 * than buckets and halves when it holds fewer than a quarter; the memory of
 * all domains is reported in index_bytes. Merged pages are ordinary KSM pages
 * with rmap_items on their stable nodes, in a stable tree that KSM's own
 * paths find through the node (stable_tree_root()), so rmap walks, swap,
 * migration, compaction, memory offline, fork, MADV_UNMERGEABLE, run = 2 and
 * KSM's counters work on them unchanged. Candidates are counted in KSM's
 * pages_unshared, as unstable-tree pages are.
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
 *    over rmap_lists, all stable trees, the domains and their candidate
 *    indexes, and the counters. It is a sleeping lock; UPM holds no spinlock
 *    across anything that sleeps. Memory offline (ksm_check_stable_tree())
 *    runs without it, while every holder waits in wait_while_offlining().
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
 * ksmd passes mms that used UPM by without walking them
 * (scan_get_next_rmap_item()): their candidates are merged through the
 * index, their rmap_items are UPM's to free, and no pass of ksmd over their
 * memory holds ksm_thread_mutex while an advise waits for it. An mm's first
 * advise takes its items out of ksmd's unstable tree (upm_take_from_ksmd()).
 *
 * Merge domains
 * -------------
 * Sharing a page with another process tells each of them, through the time
 * a write takes (copy-on-write), whether the other holds the same content:
 * the memory deduplication side channel. So UPM merges a page only with
 * pages of the same merge domain. A caller's domain is named by the nearest
 * cgroup, on the default (v2) hierarchy, at or above its own that the
 * administrator marked with the UPM_DOMAIN_XATTR extended attribute
 * (trusted.*: only CAP_SYS_ADMIN can set it): the attribute's value is the
 * domain's name, shared by every cgroup marked with it, so that the
 * instances of one function share wherever they sit (Kubernetes puts each
 * pod in a cgroup of its own). A value that is no valid name makes the
 * marked subtree a domain of its own, and without a mark the caller's own
 * cgroup is its domain: by default, processes of different cgroups never
 * share. An unnamed domain is its cgroup's ID, which is never reused. The
 * domain is looked up at each call (struct upm_domain_key).
 *
 * Each domain has its own stable tree and candidate index (struct
 * upm_domain), so nothing one domain does is compared with, chained to or
 * timed against another's pages: identical content in two domains becomes
 * two unrelated KSM pages, and no counter, error or search time of one
 * depends on what another holds. (When KSM's stable tree was shared, a
 * tenant could advise two pages of a guess and watch stable_node_chains,
 * world-readable, grow when some other domain held it.) A KSM page's stable
 * node points to the domain whose tree holds it (upm_merge_domain, set under
 * ksm_thread_mutex while UPM merges, NULL while ksmd does); ksmd's own KSM
 * pages stay in KSM's root_stable_tree. ksmd leaves mms that used UPM alone,
 * and their children (upm_fork()), so a page merged by UPM is never shared
 * with a page ksmd merged. A domain lives while a stable node, a candidate
 * or a call in progress holds a reference to it.
 *
 * Limits
 * ------
 * Every page UPM looks at costs an rmap_item (64 bytes), charged to the
 * caller's memory cgroup, and a candidate adds a slot to its domain's index. An
 * rmap_item lives until its page is unmerged or its mm exits (ksmd, which
 * passes UPM's mms by, does not free them). So UPM keeps at most
 * max_pages_per_process rmap_items per mm (a quarter of RAM's pages by
 * default; root can change it in sysfs). An mm that reaches the limit first
 * has the items of ranges it no longer maps freed (upm_prune_unmapped()):
 * a process that advises fresh mappings and unmaps old ones never runs out.
 * A call that would still need more ends with -ENOSPC, keeping what it
 * merged.
 */

#include <linux/cgroup.h>
#include <linux/ctype.h>
#include <linux/kernfs.h>
#include <linux/stringhash.h>
#include <linux/xattr.h>
#include <linux/upm.h>

/* Pages handled under one hold of ksm_thread_mutex. */
#define UPM_BATCH		64
/* The candidate index starts with 1 << UPM_MIN_HASH_BITS buckets. */
#define UPM_MIN_HASH_BITS	10
#define UPM_MAX_HASH_BITS	30
/* Marks a cgroup v2 directory as a merge domain for its whole subtree. */
#define UPM_DOMAIN_XATTR	XATTR_TRUSTED_PREFIX "upm.domain"
/* The longest domain name, the value of UPM_DOMAIN_XATTR. */
#define UPM_DOMAIN_NAME_MAX	64

/**
 * struct upm_domain_key - what names a merge domain
 * @cgroup_id: an unnamed domain's cgroup ID; 0 for a named domain
 * @name_len: the length of @name, 0 for an unnamed domain
 * @name: a named domain's name (not NUL-terminated)
 */
struct upm_domain_key {
	u64 cgroup_id;
	unsigned int name_len;
	char name[UPM_DOMAIN_NAME_MAX];
};

/* Set by upm_init(); changed through sysfs. */
static unsigned long upm_max_pages_per_process = ULONG_MAX;

/**
 * struct upm_domain - a merge domain's own stable tree and candidate index
 * @key: its name or cgroup (upm_current_domain())
 * @seq: a number no other domain has had since boot: what an mm_slot
 *	records of its domain, so that a domain made again under the same
 *	key is a different one
 * @hash: link in upm_domains, by @key
 * @refs: one per stable node in @stable_tree (chains and dups alike), per
 *	candidate in @buckets, and per UPM call merging in it; freed at zero
 * @buckets: the candidate index, by KSM checksum
 * @hash_bits: log2 of the number of @buckets
 * @nr_candidates: candidates in @buckets
 * @stable_tree: one root per NUMA node, as KSM's root_stable_tree
 *
 * Everything here is under ksm_thread_mutex (or the exclusion of memory
 * offline, which every holder of the mutex waits for).
 */
struct upm_domain {
	struct upm_domain_key key;
	u64 seq;
	struct hlist_node hash;
	unsigned long refs;
	struct hlist_head *buckets;
	unsigned int hash_bits;
	unsigned long nr_candidates;
	struct rb_root stable_tree[];
};

static DEFINE_HASHTABLE(upm_domains, 6);
static unsigned long upm_nr_domains;
static u64 upm_domain_seq;
/* Bytes of all domains and their bucket arrays. */
static unsigned long upm_domain_bytes;

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

static size_t upm_domain_size(void)
{
	return struct_size_t(struct upm_domain, stable_tree, nr_node_ids);
}

static size_t upm_buckets_size(unsigned int bits)
{
	return sizeof(struct hlist_head) << bits;
}

static struct rb_root *upm_stable_tree(struct upm_domain *domain, int nid)
{
	return &domain->stable_tree[nid];
}

static void upm_domain_get(struct upm_domain *domain)
{
	domain->refs++;
}

static void upm_domain_put(struct upm_domain *domain)
{
	if (WARN_ON_ONCE(!domain->refs) || --domain->refs)
		return;
	hash_del(&domain->hash);
	upm_nr_domains--;
	upm_domain_bytes -= upm_domain_size() +
			    upm_buckets_size(domain->hash_bits);
	kvfree(domain->buckets);
	kfree(domain);
}

static u64 upm_domain_key_hash(const struct upm_domain_key *key)
{
	if (key->name_len)
		return full_name_hash(NULL, key->name, key->name_len);
	return key->cgroup_id;
}

static bool upm_domain_key_equal(const struct upm_domain_key *a,
				 const struct upm_domain_key *b)
{
	return a->cgroup_id == b->cgroup_id && a->name_len == b->name_len &&
	       !memcmp(a->name, b->name, a->name_len);
}

/*
 * The domain @key names, with a reference; made on first use, with its
 * memory charged to the caller. NULL if memory is short.
 */
static struct upm_domain *upm_domain_get_by_key(const struct upm_domain_key *key)
{
	u64 hash = upm_domain_key_hash(key);
	struct upm_domain *domain;

	hash_for_each_possible(upm_domains, domain, hash, hash) {
		if (upm_domain_key_equal(&domain->key, key)) {
			upm_domain_get(domain);
			return domain;
		}
	}
	/* Zeroed: every stable tree root starts as RB_ROOT. */
	domain = kzalloc(upm_domain_size(), GFP_KERNEL_ACCOUNT);
	if (!domain)
		return NULL;
	domain->buckets = kvcalloc(1UL << UPM_MIN_HASH_BITS,
				   sizeof(*domain->buckets), GFP_KERNEL_ACCOUNT);
	if (!domain->buckets) {
		kfree(domain);
		return NULL;
	}
	domain->key = *key;
	domain->seq = ++upm_domain_seq;
	domain->hash_bits = UPM_MIN_HASH_BITS;
	domain->refs = 1;
	hash_add(upm_domains, &domain->hash, hash);
	upm_nr_domains++;
	upm_domain_bytes += upm_domain_size() +
			    upm_buckets_size(domain->hash_bits);
	return domain;
}

/*
 * Called by remove_rmap_item_from_tree() when a UPM KSM page lost its last
 * rmap_item. If nothing maps the page any more, its node goes now (as
 * remove_stable_node() does for KSM's knobs). If something still does (a
 * fork child maps its parent's KSM pages without rmap_items of its own), or
 * the page is in the swap cache (swap entries of such a child may still
 * bring it back, which without its node would be a copy each), the node
 * stays, an orphan, for upm_sweep_orphans() at an exit.
 */
static void upm_drop_stable_node(struct ksm_stable_node *stable_node)
{
	struct folio *folio = ksm_get_folio(stable_node, KSM_GET_FOLIO_NOLOCK);
	bool swapped;

	if (!folio)
		return;		/* stale: ksm_get_folio() removed the node */
	swapped = folio_test_swapcache(folio);
	folio_put(folio);
	if (!swapped)
		remove_stable_node(stable_node);
}

/*
 * Remove what of @domain's stable trees no process maps any more: nodes
 * without rmap_items (see upm_drop_stable_node()) and chains whose last
 * dup went (ksm_get_folio() frees a stale dup but leaves its chain for a
 * search to prune, and nobody may search this domain again). Called at
 * every exit of a process of the domain, it costs a walk of the domain's
 * nodes, a small part of what the exit itself does for each page.
 */
static void upm_sweep_orphans(struct upm_domain *domain)
{
	struct ksm_stable_node *node, *dup, *next;
	struct hlist_node *tmp;
	struct rb_node *rb;
	int nid;

	lockdep_assert_held(&ksm_thread_mutex);
	upm_domain_get(domain);
	for (nid = 0; nid < ksm_nr_node_ids; nid++) {
		struct rb_root *root = upm_stable_tree(domain, nid);

		/*
		 * Each step erases at most the node it is at, which leaves
		 * the successor taken beforehand in the tree.
		 */
		for (rb = rb_first(root); rb; ) {
			node = rb_entry(rb, struct ksm_stable_node, node);
			rb = rb_next(rb);
			if (!is_stable_node_chain(node)) {
				if (!node->rmap_hlist_len)
					remove_stable_node(node);
			} else {
				hlist_for_each_entry_safe(dup, tmp, &node->hlist, hlist_dup)
					if (!dup->rmap_hlist_len)
						remove_stable_node(dup);
				if (hlist_empty(&node->hlist))
					free_stable_node_chain(node, root);
			}
			cond_resched();
		}
	}
	list_for_each_entry_safe(node, next, &migrate_nodes, list) {
		if (stable_node_domain(node) == domain && !node->rmap_hlist_len)
			remove_stable_node(node);
	}
	upm_domain_put(domain);
}

/* The live domain an mm_slot's upm_domain names, or NULL. */
static struct upm_domain *upm_domain_by_seq(u64 seq)
{
	struct upm_domain *domain;
	int bkt;

	hash_for_each(upm_domains, bkt, domain, hash)
		if (domain->seq == seq)
			return domain;
	return NULL;
}

/* Called by remove_all_stable_nodes(): for run = 2 and KSM's knobs. */
static int upm_remove_all_stable_nodes(void)
{
	struct upm_domain *domain;
	struct hlist_node *next;
	int bkt, nid, err = 0;

	hash_for_each_safe(upm_domains, bkt, next, domain, hash) {
		/* Its last stable node must not free it under our feet. */
		upm_domain_get(domain);
		for (nid = 0; nid < ksm_nr_node_ids; nid++)
			if (remove_stable_tree(upm_stable_tree(domain, nid)))
				err = -EBUSY;
		upm_domain_put(domain);
	}
	return err;
}

#ifdef CONFIG_MEMORY_HOTREMOVE
/* Called by ksm_check_stable_tree() when memory goes offline. */
static void upm_check_stable_trees(unsigned long start_pfn,
				   unsigned long end_pfn)
{
	struct upm_domain *domain;
	struct hlist_node *next;
	int bkt, nid;

	hash_for_each_safe(upm_domains, bkt, next, domain, hash) {
		upm_domain_get(domain);
		for (nid = 0; nid < ksm_nr_node_ids; nid++)
			check_stable_tree_range(upm_stable_tree(domain, nid),
						start_pfn, end_pfn);
		upm_domain_put(domain);
	}
}
#endif /* CONFIG_MEMORY_HOTREMOVE */

static struct hlist_head *upm_bucket(struct upm_domain *domain,
				     unsigned int checksum)
{
	return &domain->buckets[hash_32(checksum, domain->hash_bits)];
}

/*
 * Keep between a quarter of a candidate and one candidate per bucket on
 * average, and at least 1 << UPM_MIN_HASH_BITS buckets. If the new array
 * cannot be had, the old one stays: chains get longer, answers stay right.
 */
static void upm_index_resize(struct upm_domain *domain)
{
	unsigned int bits = domain->hash_bits;
	struct hlist_head *buckets;
	unsigned long i;

	if (domain->nr_candidates > (1UL << bits) && bits < UPM_MAX_HASH_BITS)
		bits++;
	else if (domain->nr_candidates < (1UL << bits) / 4 &&
		 bits > UPM_MIN_HASH_BITS)
		bits--;
	else
		return;
	buckets = kvcalloc(1UL << bits, sizeof(*buckets),
			   GFP_KERNEL_ACCOUNT | __GFP_NOWARN);
	if (!buckets)
		return;
	for (i = 0; i < (1UL << domain->hash_bits); i++) {
		struct ksm_rmap_item *rmap_item;
		struct hlist_node *next;

		hlist_for_each_entry_safe(rmap_item, next, &domain->buckets[i],
					  hlist) {
			hlist_del(&rmap_item->hlist);
			hlist_add_head(&rmap_item->hlist,
				       &buckets[hash_32(rmap_item->oldchecksum, bits)]);
		}
		cond_resched();
	}
	kvfree(domain->buckets);
	upm_domain_bytes += upm_buckets_size(bits) -
			    upm_buckets_size(domain->hash_bits);
	domain->buckets = buckets;
	domain->hash_bits = bits;
}

static void upm_add_candidate(struct upm_domain *domain,
			      struct ksm_rmap_item *rmap_item,
			      unsigned int checksum)
{
	rmap_item->oldchecksum = checksum;
	rmap_item->upm_domain = domain;
	upm_domain_get(domain);
	rmap_item->address |= UPM_CANDIDATE_FLAG;
	hlist_add_head(&rmap_item->hlist, upm_bucket(domain, checksum));
	domain->nr_candidates++;
	upm_nr_candidates++;
	ksm_pages_unshared++;
	upm_index_resize(domain);
}

/* Called by remove_rmap_item_from_tree() for a candidate. */
static void upm_forget_candidate(struct ksm_rmap_item *rmap_item)
{
	struct upm_domain *domain = rmap_item->upm_domain;

	hlist_del(&rmap_item->hlist);
	rmap_item->address &= PAGE_MASK;
	rmap_item->upm_domain = NULL;
	domain->nr_candidates--;
	upm_nr_candidates--;
	ksm_pages_unshared--;
	upm_domain_put(domain);
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

/* The seq of @mm's last MADV_UPM_MERGE's domain; 0 if it never made one. */
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
 * A domain name is what a platform puts into UPM_DOMAIN_XATTR: 1 to
 * UPM_DOMAIN_NAME_MAX characters that need no quoting in the domains file.
 */
static bool upm_valid_domain_name(const char *name, ssize_t len)
{
	ssize_t i;

	if (len <= 0 || len > UPM_DOMAIN_NAME_MAX)
		return false;
	for (i = 0; i < len; i++)
		if (!isalnum(name[i]) && !strchr("-_.:/@+=", name[i]))
			return false;
	return true;
}

/*
 * The calling task's merge domain, on the default hierarchy: the nearest
 * cgroup at or above the task's own that carries UPM_DOMAIN_XATTR names it:
 * by the attribute's value, so that marked cgroups anywhere with one name
 * share; or, if the value is no valid name, by that cgroup's ID. With no
 * mark, the task's own cgroup is its domain.
 */
static void upm_current_domain(struct upm_domain_key *key)
{
#ifdef CONFIG_CGROUPS
	struct cgroup *cgrp, *pos;

	memset(key, 0, sizeof(*key));
	rcu_read_lock();
	cgrp = task_dfl_cgroup(current);
	cgroup_get(cgrp);
	rcu_read_unlock();
	/*
	 * kernfs_xattr_get() takes a mutex: walk with a reference instead of
	 * under RCU. A cgroup holds a reference on its parent.
	 */
	for (pos = cgrp; pos; pos = cgroup_parent(pos)) {
		ssize_t len = kernfs_xattr_get(pos->kn, UPM_DOMAIN_XATTR,
					       key->name, sizeof(key->name));

		if (len == -ENODATA)
			continue;
		if (upm_valid_domain_name(key->name, len)) {
			key->name_len = len;
			break;
		}
		/* Too long (-ERANGE), empty or unprintable: this subtree. */
		memset(key->name, 0, sizeof(key->name));
		key->cgroup_id = cgroup_id(pos);
		break;
	}
	if (!pos)
		key->cgroup_id = cgroup_id(cgrp);
	cgroup_put(cgrp);
#else
	memset(key, 0, sizeof(*key));
	key->cgroup_id = 1;
#endif
}

/*
 * The rmap_item for @addr in the mm_slot's address-sorted rmap_list, found
 * from *@link onwards or inserted there. Unlike ksmd's get_next_rmap_item(),
 * this never frees the items it passes: ksmd's cursor may point into them.
 * New items are charged to the caller's memory cgroup.
 *
 * Return: the rmap_item; ERR_PTR(-ENOSPC) if the mm already has
 * max_pages_per_process of them, ERR_PTR(-EAGAIN) if memory is short.
 */
static struct ksm_rmap_item *upm_get_rmap_item(struct ksm_mm_slot *mm_slot,
					       struct ksm_rmap_item ***link,
					       unsigned long addr)
{
	struct ksm_rmap_item **pos = *link;
	struct ksm_rmap_item *rmap_item;

	for (;;) {
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
	*link = &rmap_item->rmap_list;
	return rmap_item;
}

/*
 * upm_merge_page - merge @page, mapped at @rmap_item's (mm, address), into an
 * identical KSM page, or with an identical candidate, or index it.
 *
 * Called with ksm_thread_mutex held, upm_merge_domain set to @domain, and no
 * mmap_lock; the caller holds a reference on @page and one on @domain.
 * Mirrors cmp_and_merge_page(), with the candidate index in place of the
 * unstable tree and no "changed since the last pass" test: the caller
 * asserts the content is meant to stay.
 */
static enum upm_result upm_merge_page(struct upm_domain *domain,
				      struct page *page,
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
	} else {
		/*
		 * Out of its old place first, as in cmp_and_merge_page(): the
		 * node it leaves, if it was that node's last rmap_item, goes
		 * (upm_drop_stable_node()), and must not be the one the search
		 * is about to hand us.
		 */
		remove_rmap_item_from_tree(rmap_item);
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
			stable_node = page_stable_node(kpage);
			if (stable_node)
				stable_tree_append(rmap_item, stable_node,
						   max_page_sharing_bypass);
			unlock_page(kpage);
			/*
			 * The rmap_item's old node, removed after the search
			 * above, was kpage's own: undo rather than share a KSM
			 * page that no longer has a node.
			 */
			if (!stable_node) {
				break_cow(rmap_item);
				err = -EBUSY;
			}
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

	hlist_for_each_entry_safe(cand, next, upm_bucket(domain, checksum), hlist) {
		struct page *tree_page;
		bool split;

		/* Its mm may have moved to another domain since. */
		if (cand->oldchecksum != checksum ||
		    upm_mm_domain(cand->mm) != domain->seq)
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

	upm_add_candidate(domain, rmap_item, checksum);
	return UPM_CANDIDATE;
}

/*
 * An mm's first MADV_UPM_MERGE takes it from ksmd, which never walks it
 * again: the items it has in ksmd's unstable tree must leave that tree now,
 * as each must by the end of ksmd's pass (remove_rmap_item_from_tree()
 * knows an unstable item one pass old at most). Its KSM pages that ksmd
 * made stay merged, in KSM's own tree, until the process unmerges or exits.
 */
static void upm_take_from_ksmd(struct ksm_mm_slot *mm_slot)
{
	struct ksm_rmap_item *rmap_item;

	lockdep_assert_held(&ksm_thread_mutex);
	for (rmap_item = mm_slot->rmap_list; rmap_item;
	     rmap_item = rmap_item->rmap_list)
		if (rmap_item->address & UNSTABLE_FLAG)
			remove_rmap_item_from_tree(rmap_item);
}

static void upm_free_rmap_item(struct ksm_rmap_item **link,
			       struct ksm_rmap_item *rmap_item);

/*
 * Free @mm's rmap_items for addresses no mergeable VMA covers any more: the
 * bookkeeping of ranges unmapped (or remapped) since they were advised,
 * which ksmd, which passes UPM's mms by, never frees. Called when the mm
 * reaches max_pages_per_process, so that a process that advises fresh
 * mappings and unmaps old ones is never refused for what it no longer has.
 * With ksm_thread_mutex and the mmap_lock held. Return: how many it freed.
 */
static unsigned long upm_prune_unmapped(struct mm_struct *mm,
					struct ksm_mm_slot *mm_slot)
{
	struct ksm_rmap_item **link = &mm_slot->rmap_list;
	struct ksm_rmap_item *rmap_item;
	struct vm_area_struct *vma = NULL;
	unsigned long freed = 0;

	lockdep_assert_held(&ksm_thread_mutex);
	mmap_assert_locked(mm);
	while ((rmap_item = *link)) {
		unsigned long addr = rmap_item->address & PAGE_MASK;

		/* The list is sorted by address: look a VMA up only past one. */
		if (!vma || addr < vma->vm_start || addr >= vma->vm_end)
			vma = vma_lookup(mm, addr);
		if (!vma || !(vma->vm_flags & VM_MERGEABLE)) {
			upm_free_rmap_item(link, rmap_item);
			freed++;
			continue;
		}
		link = &rmap_item->rmap_list;
	}
	return freed;
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
			if (PTR_ERR(rmap_item) == -ENOSPC &&
			    upm_prune_unmapped(mm, mm_slot)) {
				/*
				 * The batch's items are in mergeable VMAs,
				 * so none was freed; *link may have been.
				 */
				link = &mm_slot->rmap_list;
				rmap_item = upm_get_rmap_item(mm_slot, &link, addr);
			}
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
	struct upm_domain_key domain;
	u64 begin = ktime_get_ns();
	struct upm_batch_entry *batch;
	unsigned long addr = start;
	int err = 0;

	batch = kmalloc_array(UPM_BATCH, sizeof(*batch), GFP_KERNEL);
	if (!batch)
		return -EAGAIN;
	upm_current_domain(&domain);

	/*
	 * Freshly faulted pages wait in per-CPU LRU batches with a raised
	 * refcount, which write_protect_page() takes for a GUP pin: drain
	 * them once, as ksmd does before each full scan.
	 */
	lru_add_drain_all();

	while (addr < end && !err) {
		struct upm_domain *merge_domain;
		struct ksm_mm_slot *mm_slot;
		int i, n;

		if (mutex_lock_killable(&ksm_thread_mutex)) {
			err = -EINTR;
			break;
		}
		wait_while_offlining();
		merge_domain = upm_domain_get_by_key(&domain);
		if (!merge_domain) {
			mutex_unlock(&ksm_thread_mutex);
			err = -EAGAIN;
			break;
		}
		if (mmap_read_lock_killable(mm)) {
			upm_domain_put(merge_domain);
			mutex_unlock(&ksm_thread_mutex);
			err = -EINTR;
			break;
		}
		mm_slot = upm_mm_slot(mm);
		if (!mm_slot) {
			/* Every mergeable VMA went away meanwhile. */
			mmap_read_unlock(mm);
			upm_domain_put(merge_domain);
			mutex_unlock(&ksm_thread_mutex);
			break;
		}
		if (!mm_slot->upm)
			upm_take_from_ksmd(mm_slot);
		/* Under ksm_mmlist_lock, where upm_mm_used() and upm_fork() read them. */
		spin_lock(&ksm_mmlist_lock);
		mm_slot->upm = true;
		mm_slot->upm_domain = merge_domain->seq;
		spin_unlock(&ksm_mmlist_lock);
		/*
		 * run = 2: KSM has unmerged every KSM page (run_store() does
		 * it under ksm_thread_mutex) and keeps none until run changes
		 * again. Make no new ones. The mm is marked as UPM's above, so
		 * ksmd keeps out of it once it runs again.
		 */
		if (ksm_run & KSM_RUN_UNMERGE) {
			mmap_read_unlock(mm);
			upm_domain_put(merge_domain);
			mutex_unlock(&ksm_thread_mutex);
			err = -EBUSY;
			break;
		}
		n = upm_collect(mm, mm_slot, &addr, end, batch, &err);
		mmap_read_unlock(mm);

		upm_merge_domain = merge_domain;
		for (i = 0; i < n; i++) {
			switch (upm_merge_page(merge_domain, batch[i].page,
					       batch[i].rmap_item)) {
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
		upm_merge_domain = NULL;
		/* Shrinks the index once a batch dropped stale candidates. */
		upm_index_resize(merge_domain);
		upm_domain_put(merge_domain);
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
	struct upm_domain *domain;

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
	/*
	 * What no process of the domain maps any more goes with the exit
	 * that unmapped it: nodes a fork child (without rmap_items) kept,
	 * chains emptied of their dups. Else the domain would live on.
	 */
	domain = upm_domain_by_seq(mm_slot->upm_domain);
	if (domain)
		upm_sweep_orphans(domain);

	if (ksm_scan.mm_slot == mm_slot) {
		/*
		 * ksmd's cursor: ksmd frees the now empty slot, as any of an
		 * exited mm, once it no longer passes it by as UPM's.
		 */
		ksm_scan.rmap_list = &mm_slot->rmap_list;
		ksm_scan.address = 0;
		spin_lock(&ksm_mmlist_lock);
		mm_slot->upm = false;
		spin_unlock(&ksm_mmlist_lock);
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
	    READ_ONCE(upm_domain_bytes) +
	    READ_ONCE(upm_nr_candidates) * sizeof(struct ksm_rmap_item));
UPM_COUNTER(calls, atomic_long_read(&upm_calls));

/* One domain's figures, as the domains file shows them. */
struct upm_domain_stats {
	unsigned long processes;
	unsigned long pages_shared;
	unsigned long pages_sharing;
};

static void upm_count_stable_node(struct ksm_stable_node *node,
				  struct upm_domain_stats *stats)
{
	if (node->rmap_hlist_len <= 0)
		return;
	stats->pages_shared++;
	stats->pages_sharing += node->rmap_hlist_len - 1;
}

/*
 * What @domain holds, counted as KSM counts pages_shared and pages_sharing:
 * from its stable trees (the dups of each chain) and migrate_nodes, and its
 * processes from the mm_slots. Under ksm_thread_mutex.
 */
static void upm_domain_stats(struct upm_domain *domain,
			     struct upm_domain_stats *stats)
{
	struct ksm_stable_node *node, *dup;
	struct mm_slot *slot;
	struct rb_node *rb;
	int nid;

	memset(stats, 0, sizeof(*stats));
	for (nid = 0; nid < ksm_nr_node_ids; nid++) {
		for (rb = rb_first(upm_stable_tree(domain, nid)); rb; rb = rb_next(rb)) {
			node = rb_entry(rb, struct ksm_stable_node, node);
			if (!is_stable_node_chain(node)) {
				upm_count_stable_node(node, stats);
				continue;
			}
			hlist_for_each_entry(dup, &node->hlist, hlist_dup)
				upm_count_stable_node(dup, stats);
		}
		cond_resched();
	}
	list_for_each_entry(node, &migrate_nodes, list)
		if (stable_node_domain(node) == domain)
			upm_count_stable_node(node, stats);

	spin_lock(&ksm_mmlist_lock);
	list_for_each_entry(slot, &ksm_mm_head.slot.mm_node, mm_node) {
		struct ksm_mm_slot *mm_slot = mm_slot_entry(slot, struct ksm_mm_slot, slot);

		if (mm_slot->upm && mm_slot->upm_domain == domain->seq)
			stats->processes++;
	}
	spin_unlock(&ksm_mmlist_lock);
}

/* The longest line of the domains file. */
#define UPM_DOMAINS_LINE_MAX	(UPM_DOMAIN_NAME_MAX + 6 * 21 + 8)

/*
 * /sys/kernel/mm/upm/domains: a line per merge domain, root only, because
 * domain names and sizes are tenants' data. sysfs reads a page at a time and
 * the text is rebuilt for each, so a listing longer than a page may see
 * domains come and go between its pages.
 */
static ssize_t upm_domains_read(struct file *file, struct kobject *kobj,
				struct bin_attribute *attr, char *buf,
				loff_t off, size_t count)
{
	static const char header[] =
		"# domain processes pages_shared pages_sharing candidates index_bytes\n";
	struct upm_domain_stats stats;
	struct upm_domain *domain;
	size_t size, len;
	ssize_t ret;
	char *text;
	int bkt;

	mutex_lock(&ksm_thread_mutex);
	wait_while_offlining();
	size = sizeof(header) + upm_nr_domains * UPM_DOMAINS_LINE_MAX;
	text = kvmalloc(size, GFP_KERNEL);
	if (!text) {
		mutex_unlock(&ksm_thread_mutex);
		return -ENOMEM;
	}
	len = scnprintf(text, size, "%s", header);
	hash_for_each(upm_domains, bkt, domain, hash) {
		upm_domain_stats(domain, &stats);
		if (domain->key.name_len)
			len += scnprintf(text + len, size - len, "name:%.*s",
					 domain->key.name_len, domain->key.name);
		else
			len += scnprintf(text + len, size - len, "cgroup:%llu",
					 domain->key.cgroup_id);
		len += scnprintf(text + len, size - len, " %lu %lu %lu %lu %zu\n",
				 stats.processes, stats.pages_shared,
				 stats.pages_sharing, domain->nr_candidates,
				 upm_domain_size() +
				 upm_buckets_size(domain->hash_bits) +
				 domain->nr_candidates * sizeof(struct ksm_rmap_item));
	}
	mutex_unlock(&ksm_thread_mutex);

	ret = 0;
	if (off < len) {
		ret = min_t(size_t, count, len - off);
		memcpy(buf, text + off, ret);
	}
	kvfree(text);
	return ret;
}

static struct bin_attribute upm_domains_attr =
	__BIN_ATTR(domains, 0400, upm_domains_read, NULL, 0);

static struct bin_attribute *upm_bin_attrs[] = {
	&upm_domains_attr,
	NULL,
};

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
	.bin_attrs = upm_bin_attrs,
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
