// SPDX-License-Identifier: GPL-2.0-only
/*
 * A seeded random fuzzer of madvise(MADV_UPM_MERGE) arguments.
 *
 * Each iteration does one thing to a set of slots, 2 MiB each, that are
 * remapped as every kind of mapping madvise meets (private and shared
 * anonymous, private and shared memfd, read-only shared memfd, /dev/zero,
 * PROT_NONE, read-only, MAP_LOCKED, THP, mremap()ed, holes): it remaps a
 * slot, writes pages, punches holes, forks a child that advises its copy, or
 * calls madvise() with MADV_UPM_MERGE, MADV_MERGEABLE, MADV_UNMERGEABLE,
 * MADV_DONTNEED, MADV_HUGEPAGE or an invalid advice over an address and a
 * length drawn from classes meant to hit every check: aligned, misaligned,
 * NULL, holes, kernel and non-canonical addresses, wrapping ranges, the
 * process's own stack, text, vdso and vvar, lengths of 0, odd bytes, huge.
 *
 * Every return is checked against the errno that
 * Documentation/admin-guide/mm/upm.rst (and madvise(2) for the other
 * advices) gives for that input, predicted from /proc/self/smaps read just
 * before the call: EINVAL for an invalid advice, a misaligned start or an
 * overflowing length, EINVAL for MADV_UPM_MERGE over a VMA KSM cannot merge
 * (shared, PFN, I/O, VM_DONTEXPAND...), ENOMEM for a hole, else 0. The
 * content of every slot is kept in a model and compared after each step
 * that touches it: only MADV_DONTNEED may change it, to zero for private
 * anonymous memory and to the file's content for private file mappings.
 *
 * The kernel's reports (KASAN, lockdep, BUG) are for whoever reads the
 * console: the VM rig fails the run on them.
 *
 * Usage: upm_fuzz [-n iterations] [-t seconds] [-s seed] [-v]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>

#include "../kselftest.h"

#ifndef MADV_MERGEABLE
#define MADV_MERGEABLE		12
#define MADV_UNMERGEABLE	13
#endif
#ifndef MADV_HUGEPAGE
#define MADV_HUGEPAGE		14
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE	0x100000
#endif

#define NSLOTS		6
#define SLOT_PAGES	512		/* 2 MiB: room for one THP */
#define MAX_VMAS	1024
#define TASK_TOP	0x7ffffffff000UL

enum slot_type {
	SLOT_HOLE,		/* unmapped */
	SLOT_ANON,		/* MAP_PRIVATE | MAP_ANONYMOUS */
	SLOT_ANON_SHARED,	/* MAP_SHARED | MAP_ANONYMOUS: EINVAL */
	SLOT_MEMFD_PRIVATE,	/* file-backed, copy-on-write */
	SLOT_MEMFD_SHARED,	/* file-backed, VM_SHARED: EINVAL */
	SLOT_MEMFD_SHARED_RO,	/* read-only fd: VM_MAYSHARE only: EINVAL */
	SLOT_ZERO_PRIVATE,	/* /dev/zero, private: anonymous */
	SLOT_ZERO_SHARED,	/* /dev/zero, shared: shmem: EINVAL */
	SLOT_PROT_NONE,		/* written, then PROT_NONE */
	SLOT_READONLY,		/* written, then PROT_READ */
	SLOT_LOCKED,		/* MAP_LOCKED */
	SLOT_THP,		/* MADV_HUGEPAGE before the first write */
	SLOT_MREMAPPED,		/* written elsewhere, mremap()ed in */
	SLOT_NR_TYPES,
};

static const char *const slot_names[SLOT_NR_TYPES] = {
	"hole", "anon", "anon-shared", "memfd-private", "memfd-shared",
	"memfd-shared-ro", "zero-private", "zero-shared", "prot-none",
	"readonly", "locked", "thp", "mremapped",
};

struct slot {
	enum slot_type type;
	bool mapped[SLOT_PAGES];
	uint32_t tag[SLOT_PAGES];	/* what the page holds: 0 is zeroes */
	uint32_t ftag[SLOT_PAGES];	/* the file's page, for memfd types */
};

struct vma {
	unsigned long start, end;
	bool ksm_incompatible;	/* sh ms pf io de ht mm */
	bool dontneed_invalid;	/* lo pf */
};

static size_t ps;
static int upm_advice;
static char *arena;		/* NSLOTS slots and one scratch slot */
static size_t slot_size;
static struct slot slots[NSLOTS];
static int devzero = -1;
static bool locked_ok = true;
static bool verbose;
/* ENOSPC is documented once max_pages_per_process is in reach. */
static bool enospc_ok;

static struct vma vmas[MAX_VMAS];
static int nr_vmas;
static char smaps_buf[4 << 20];

static uint64_t rng_state;
static unsigned long long nr_calls, nr_unexpected, nr_corrupt;
static unsigned long long nr_forks, nr_forks_failed;
static unsigned long long by_errno[256];

static uint64_t rnd(void)
{
	/* xorshift64* */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545F4914F6CDD1DULL;
}

static uint64_t below(uint64_t n)
{
	return n ? rnd() % n : 0;
}

static long read_long(const char *path)
{
	char buf[64];
	ssize_t n;
	int fd;

	fd = open(path, O_RDONLY);
	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	return strtol(buf, NULL, 10);
}

static char *slot_addr(int s)
{
	return arena + s * slot_size;
}

/* Page content: tag 0 is a page of zeroes, any other tag a pattern. */
static void fill_page(void *page, uint32_t tag)
{
	uint64_t *w = page;

	for (size_t i = 0; i < ps / 8; i++)
		w[i] = tag ? tag * 0x9E3779B97F4A7C15ULL + i : 0;
}

static bool page_is(const void *page, uint32_t tag)
{
	const uint64_t *w = page;

	for (size_t i = 0; i < ps / 8; i++)
		if (w[i] != (tag ? tag * 0x9E3779B97F4A7C15ULL + i : 0))
			return false;
	return true;
}

/* Mostly a few shared tags, so that pages merge; some unique, some zero. */
static uint32_t random_tag(void)
{
	switch (below(4)) {
	case 0:
		return 0;
	case 1:
		return 0x10000 + (uint32_t)below(1 << 30);
	default:
		return 1 + below(8);
	}
}

static bool slot_writable(enum slot_type t)
{
	return t != SLOT_HOLE && t != SLOT_MEMFD_SHARED_RO &&
	       t != SLOT_PROT_NONE && t != SLOT_READONLY;
}

static bool slot_shared(enum slot_type t)
{
	return t == SLOT_ANON_SHARED || t == SLOT_MEMFD_SHARED ||
	       t == SLOT_MEMFD_SHARED_RO || t == SLOT_ZERO_SHARED;
}

/* What a page reads after MADV_DONTNEED. */
static uint32_t after_dontneed(struct slot *sl, int p)
{
	if (slot_shared(sl->type))
		return sl->tag[p];
	if (sl->type == SLOT_MEMFD_PRIVATE)
		return sl->ftag[p];
	return 0;
}

/* ---- The oracle: the VMAs of this process, from /proc/self/smaps. ---- */

static bool has_flag(const char *flags, const char *f)
{
	for (const char *p = flags; *p && *p != '\n'; p += 3)
		if (p[0] == f[0] && p[1] == f[1])
			return true;
	return false;
}

static void load_vmas(void)
{
	size_t len = 0;
	char *line, *next;
	ssize_t n;
	int fd;

	fd = open("/proc/self/smaps", O_RDONLY);
	if (fd < 0)
		ksft_exit_fail_msg("/proc/self/smaps: %s\n", strerror(errno));
	while ((n = read(fd, smaps_buf + len, sizeof(smaps_buf) - 1 - len)) > 0)
		len += n;
	close(fd);
	if (len >= sizeof(smaps_buf) - 1)
		ksft_exit_fail_msg("/proc/self/smaps does not fit\n");
	smaps_buf[len] = 0;

	nr_vmas = 0;
	for (line = smaps_buf; *line; line = next) {
		unsigned long start, end;

		next = strchr(line, '\n');
		next = next ? next + 1 : line + strlen(line);
		if (sscanf(line, "%lx-%lx ", &start, &end) == 2 &&
		    strchr(line, '-') < strchr(line, ' ')) {
			/* The vsyscall page is no VMA: madvise sees a hole. */
			if (start >= TASK_TOP)
				continue;
			if (nr_vmas == MAX_VMAS)
				ksft_exit_fail_msg("too many VMAs\n");
			vmas[nr_vmas].start = start;
			vmas[nr_vmas].end = end;
			vmas[nr_vmas].ksm_incompatible = true;	/* until VmFlags */
			vmas[nr_vmas].dontneed_invalid = true;
			nr_vmas++;
		} else if (!strncmp(line, "VmFlags:", 8) && nr_vmas) {
			const char *f = line + 9;
			struct vma *v = &vmas[nr_vmas - 1];

			v->ksm_incompatible = has_flag(f, "sh") ||
				has_flag(f, "ms") || has_flag(f, "pf") ||
				has_flag(f, "io") || has_flag(f, "de") ||
				has_flag(f, "ht") || has_flag(f, "mm");
			v->dontneed_invalid = has_flag(f, "lo") ||
				has_flag(f, "pf");
		}
	}
}

static bool advice_valid(int advice)
{
	return advice == upm_advice || advice == MADV_MERGEABLE ||
	       advice == MADV_UNMERGEABLE || advice == MADV_DONTNEED ||
	       advice == MADV_HUGEPAGE;
}

/*
 * The errno madvise(start, len, advice) must fail with, 0 for success. For
 * an EINVAL of the VMA walk, *stop is where the walk stopped: the VMAs
 * before it were advised (for MADV_DONTNEED: zapped).
 */
static int expected_errno(int advice, unsigned long start, size_t len,
			  unsigned long *stop)
{
	unsigned long end, cur = start;
	size_t alen;
	bool hole = false;

	*stop = start;
	if (!advice_valid(advice))
		return EINVAL;
	if (start & (ps - 1))
		return EINVAL;
	alen = (len + ps - 1) & ~(ps - 1);
	if (len && !alen)
		return EINVAL;
	end = start + alen;
	if (end < start)
		return EINVAL;
	if (end == start)
		return 0;
	load_vmas();
	for (int i = 0; i < nr_vmas; i++) {
		struct vma *v = &vmas[i];

		if (v->end <= start || v->start >= end)
			continue;
		if (v->start > cur)
			hole = true;
		if ((advice == upm_advice && v->ksm_incompatible) ||
		    (advice == MADV_DONTNEED && v->dontneed_invalid)) {
			*stop = v->start > start ? v->start : start;
			return EINVAL;
		}
		cur = v->end;
	}
	*stop = end;
	if (cur < end)
		hole = true;
	return hole ? ENOMEM : 0;
}

static const char *errno_name(int e)
{
	switch (e) {
	case 0: return "0";
	case EINVAL: return "EINVAL";
	case ENOMEM: return "ENOMEM";
	case EAGAIN: return "EAGAIN";
	case EINTR: return "EINTR";
	case EFAULT: return "EFAULT";
	case EPERM: return "EPERM";
	case EBADF: return "EBADF";
	case EACCES: return "EACCES";
	case EIO: return "EIO";
	case ENOSPC: return "ENOSPC";
	default: return strerrorname_np(e) ?: "E?";
	}
}

static const char *advice_name(int advice)
{
	static char buf[32];

	if (advice == upm_advice)
		return "UPM_MERGE";
	switch (advice) {
	case MADV_MERGEABLE: return "MERGEABLE";
	case MADV_UNMERGEABLE: return "UNMERGEABLE";
	case MADV_DONTNEED: return "DONTNEED";
	case MADV_HUGEPAGE: return "HUGEPAGE";
	}
	snprintf(buf, sizeof(buf), "advice %d", advice);
	return buf;
}

/* ---- Slots ---- */

static int new_memfd(struct slot *sl)
{
	char *page = smaps_buf;	/* any scratch page will do */
	int fd = memfd_create("upm_fuzz", 0);

	if (fd < 0 || ftruncate(fd, slot_size))
		ksft_exit_fail_msg("memfd: %s\n", strerror(errno));
	for (int p = 0; p < SLOT_PAGES; p++) {
		sl->ftag[p] = below(2) ? random_tag() : 0;
		if (!sl->ftag[p])
			continue;
		fill_page(page, sl->ftag[p]);
		if (pwrite(fd, page, ps, p * ps) != (ssize_t)ps)
			ksft_exit_fail_msg("memfd write: %s\n", strerror(errno));
	}
	return fd;
}

/* Writes random tags into a random share of the slot's pages. */
static void write_pages(int s, int from, int to)
{
	struct slot *sl = &slots[s];
	int every = 1 + below(4);

	for (int p = from; p < to; p += every) {
		if (!sl->mapped[p])
			continue;
		sl->tag[p] = random_tag();
		fill_page(slot_addr(s) + p * ps, sl->tag[p]);
	}
}

static void *map_or_die(void *addr, size_t len, int prot, int flags, int fd)
{
	void *p = mmap(addr, len, prot, flags, fd, 0);

	if (p == MAP_FAILED || (addr && p != addr))
		ksft_exit_fail_msg("mmap %s: %s\n", addr ? "fixed" : "",
				   strerror(errno));
	return p;
}

static void remap_slot(int s, enum slot_type type)
{
	struct slot *sl = &slots[s];
	char *addr = slot_addr(s);
	int rw = PROT_READ | PROT_WRITE;
	int fixed = MAP_FIXED;
	int fd = -1;
	void *tmp;

	if (type == SLOT_LOCKED && !locked_ok)
		type = SLOT_ANON;
	sl->type = type;
	memset(sl->tag, 0, sizeof(sl->tag));
	memset(sl->ftag, 0, sizeof(sl->ftag));
	for (int p = 0; p < SLOT_PAGES; p++)
		sl->mapped[p] = type != SLOT_HOLE;

	switch (type) {
	case SLOT_HOLE:
		if (munmap(addr, slot_size))
			ksft_exit_fail_msg("munmap: %s\n", strerror(errno));
		return;
	case SLOT_ANON:
	case SLOT_PROT_NONE:
	case SLOT_READONLY:
	case SLOT_THP:
		map_or_die(addr, slot_size, rw, fixed | MAP_PRIVATE | MAP_ANONYMOUS, -1);
		if (type == SLOT_THP && madvise(addr, slot_size, MADV_HUGEPAGE))
			ksft_exit_fail_msg("MADV_HUGEPAGE: %s\n", strerror(errno));
		break;
	case SLOT_LOCKED:
		if (mmap(addr, slot_size, rw, fixed | MAP_PRIVATE | MAP_ANONYMOUS |
			 MAP_LOCKED, -1, 0) == MAP_FAILED) {
			ksft_print_msg("MAP_LOCKED: %s: not fuzzed\n", strerror(errno));
			locked_ok = false;
			remap_slot(s, SLOT_ANON);
			return;
		}
		break;
	case SLOT_ANON_SHARED:
		map_or_die(addr, slot_size, rw, fixed | MAP_SHARED | MAP_ANONYMOUS, -1);
		break;
	case SLOT_MEMFD_PRIVATE:
	case SLOT_MEMFD_SHARED:
		fd = new_memfd(sl);
		map_or_die(addr, slot_size, rw, fixed |
			   (type == SLOT_MEMFD_SHARED ? MAP_SHARED : MAP_PRIVATE), fd);
		memcpy(sl->tag, sl->ftag, sizeof(sl->tag));
		break;
	case SLOT_MEMFD_SHARED_RO: {
		char path[64];
		int ro;

		fd = new_memfd(sl);
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		ro = open(path, O_RDONLY);
		if (ro < 0)
			ksft_exit_fail_msg("%s: %s\n", path, strerror(errno));
		map_or_die(addr, slot_size, PROT_READ, fixed | MAP_SHARED, ro);
		close(ro);
		memcpy(sl->tag, sl->ftag, sizeof(sl->tag));
		break;
	}
	case SLOT_ZERO_PRIVATE:
	case SLOT_ZERO_SHARED:
		map_or_die(addr, slot_size, rw, fixed |
			   (type == SLOT_ZERO_SHARED ? MAP_SHARED : MAP_PRIVATE),
			   devzero);
		break;
	case SLOT_MREMAPPED:
		/* Written in the scratch slot, then moved in. */
		tmp = slot_addr(NSLOTS);
		map_or_die(tmp, slot_size, rw, fixed | MAP_PRIVATE | MAP_ANONYMOUS, -1);
		for (int p = 0; p < SLOT_PAGES; p++) {
			sl->tag[p] = below(2) ? random_tag() : 0;
			if (sl->tag[p])
				fill_page((char *)tmp + p * ps, sl->tag[p]);
		}
		if (mremap(tmp, slot_size, slot_size, MREMAP_MAYMOVE | MREMAP_FIXED,
			   addr) != addr)
			ksft_exit_fail_msg("mremap: %s\n", strerror(errno));
		map_or_die(tmp, slot_size, PROT_NONE,
			   fixed | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1);
		break;
	default:
		break;
	}
	if (fd >= 0)
		close(fd);

	if (slot_writable(type) || type == SLOT_PROT_NONE || type == SLOT_READONLY) {
		if (type != SLOT_MREMAPPED)
			write_pages(s, 0, type == SLOT_THP ? SLOT_PAGES : below(SLOT_PAGES + 1));
	}
	if (type == SLOT_PROT_NONE && mprotect(addr, slot_size, PROT_NONE))
		ksft_exit_fail_msg("mprotect: %s\n", strerror(errno));
	if (type == SLOT_READONLY && mprotect(addr, slot_size, PROT_READ))
		ksft_exit_fail_msg("mprotect: %s\n", strerror(errno));
}

static bool verify_slot(int s, const char *after)
{
	struct slot *sl = &slots[s];
	char *addr = slot_addr(s);
	char *page = smaps_buf;
	int memfd = -1;
	bool ok = true;

	if (sl->type == SLOT_PROT_NONE) {
		/* Read through /proc/self/mem, which may read PROT_NONE. */
		memfd = open("/proc/self/mem", O_RDONLY);
		if (memfd < 0)
			ksft_exit_fail_msg("/proc/self/mem: %s\n", strerror(errno));
	}
	for (int p = 0; p < SLOT_PAGES; p++) {
		const char *src = addr + p * ps;

		if (!sl->mapped[p])
			continue;
		if (memfd >= 0) {
			if (pread(memfd, page, ps, (uintptr_t)src) != (ssize_t)ps)
				ksft_exit_fail_msg("read /proc/self/mem: %s\n",
						   strerror(errno));
			src = page;
		}
		if (!page_is(src, sl->tag[p])) {
			ksft_print_msg("corrupt: slot %d (%s) page %d: expected tag %u after %s\n",
				       s, slot_names[sl->type], p, sl->tag[p], after);
			ok = false;
			break;
		}
	}
	if (memfd >= 0)
		close(memfd);
	if (!ok)
		nr_corrupt++;
	return ok;
}

/* ---- madvise calls ---- */

/* An address and a length, of a class picked at random. */
static void pick_range(bool contained, unsigned long *start, size_t *len)
{
	unsigned long res = (unsigned long)arena;
	unsigned long res_end = res + NSLOTS * slot_size;
	static const unsigned long kernel[] = {
		0xffff888000000000UL, 0xffffffff81000000UL,
		0xffffffffff600000UL, 0x800000000000UL,
		0xfffffffffffff000UL, TASK_TOP,
	};
	unsigned int class = below(contained ? 4 : 10);

	*start = res + below(NSLOTS * SLOT_PAGES) * ps;
	switch (class) {
	case 0:
	case 1:		/* aligned, inside the slots */
		break;
	case 2:		/* misaligned start */
		*start += 1 + below(ps - 1);
		break;
	case 3:		/* wrapping range (EINVAL before any VMA is seen) */
		*len = -(*start) + below(3) * ps - below(2);
		return;
	case 4:		/* NULL and low addresses */
		*start = below(2) ? 0 : below(16) * ps;
		break;
	case 5:		/* kernel, vsyscall, non-canonical, the top */
		*start = kernel[below(ARRAY_SIZE(kernel))];
		break;
	case 6: {	/* one of our own VMAs: stack, text, vdso, vvar... */
		struct vma *v;

		load_vmas();
		v = &vmas[below(nr_vmas)];
		*start = v->start + below((v->end - v->start) / ps) * ps;
		break;
	}
	case 7:		/* anywhere below the top */
		*start = below(TASK_TOP / ps) * ps;
		break;
	case 8:		/* from below the slots into them */
		*start = res - (1 + below(SLOT_PAGES)) * ps;
		*len = (1 + below(2 * SLOT_PAGES)) * ps;
		return;
	default:	/* from the slots past their end */
		*start = res_end - (1 + below(SLOT_PAGES)) * ps;
		break;
	}

	switch (below(8)) {
	case 0:
		*len = 0;
		break;
	case 1:		/* odd bytes: rounded up to pages */
		*len = 1 + below(3 * ps);
		break;
	case 2:		/* huge */
		if (contained) {
			*len = res_end - *start;
			break;
		}
		{
			/* The second rounds up to 0, the last ends at the top. */
			const size_t huge[] = {
				SIZE_MAX, SIZE_MAX - ps + 2, 1UL << 47,
				TASK_TOP - *start,
			};

			*len = huge[below(ARRAY_SIZE(huge))];
		}
		break;
	default:
		*len = (1 + below(2 * SLOT_PAGES)) * ps;
		break;
	}
	if (contained && *start < res_end && *len > res_end - *start)
		*len = res_end - *start;
}

static int pick_advice(bool *contained)
{
	unsigned int r = below(100);

	*contained = false;
	if (r < 45)
		return upm_advice;
	if (r < 55)
		return MADV_MERGEABLE;
	if (r < 70)
		return MADV_UNMERGEABLE;
	if (r < 88) {
		/* These change memory: only inside the slots. */
		*contained = true;
		return r < 82 ? MADV_DONTNEED : MADV_HUGEPAGE;
	}
	if (r < 98) {
		/*
		 * Invalid advice around MADV_UPM_MERGE's; never 100 and 101
		 * (MADV_HWPOISON, MADV_SOFT_OFFLINE: we are root).
		 */
		int a;

		do
			a = 26 + below(74);
		while (a == upm_advice);
		return a;
	}
	{
		static const int odd[] = { -1, INT_MIN, INT_MAX, 80 + 256, 0x10050 };

		return odd[below(ARRAY_SIZE(odd))];
	}
}

/* Applies a MADV_DONTNEED of [start, stop) to the model. */
static void model_dontneed(unsigned long start, unsigned long stop)
{
	unsigned long res = (unsigned long)arena;

	for (int s = 0; s < NSLOTS; s++) {
		for (int p = 0; p < SLOT_PAGES; p++) {
			unsigned long a = res + (s * SLOT_PAGES + p) * ps;

			if (a >= start && a < stop && slots[s].mapped[p])
				slots[s].tag[p] = after_dontneed(&slots[s], p);
		}
	}
}

static void fuzz_madvise(unsigned long long iter)
{
	unsigned long res = (unsigned long)arena;
	unsigned long start, stop;
	bool contained;
	size_t len = 0;
	int advice = pick_advice(&contained);
	int want, got, ret;

	pick_range(contained, &start, &len);
	want = expected_errno(advice, start, len, &stop);
	ret = madvise((void *)start, len, advice);
	got = ret ? errno : 0;
	nr_calls++;
	by_errno[got < 256 ? got : 255]++;

	if (got == ENOSPC && enospc_ok && advice == upm_advice &&
	    (want == 0 || want == ENOMEM))
		want = ENOSPC;
	if (got != want) {
		nr_unexpected++;
		ksft_print_msg("unexpected: iteration %llu: madvise(%#lx, %#zx, %s) = %s, want %s\n",
			       iter, start, len, advice_name(advice),
			       errno_name(got), errno_name(want));
	} else if (verbose) {
		ksft_print_msg("madvise(%#lx, %#zx, %s) = %s\n", start, len,
			       advice_name(advice), errno_name(got));
	}
	if (advice == MADV_DONTNEED && (got == 0 || got == ENOMEM || got == EINVAL))
		model_dontneed(start, got == EINVAL ? stop : start + ((len + ps - 1) & ~(ps - 1)));

	/* Check the slots the range touched. */
	if (start & (ps - 1) || !len)
		return;
	for (int s = 0; s < NSLOTS; s++) {
		unsigned long a = res + s * slot_size;

		if (start < a + slot_size && (start + len > a || start + len < start))
			verify_slot(s, advice_name(advice));
	}
}

/* A child advises its copy of the slots, writes, checks, and exits. */
static void fuzz_fork(void)
{
	int status, s = below(NSLOTS);
	pid_t pid;

	fflush(stdout);
	pid = fork();
	if (pid < 0)
		ksft_exit_fail_msg("fork: %s\n", strerror(errno));
	if (!pid) {
		unsigned long start = (unsigned long)slot_addr(s), stop;
		bool ok = true;

		for (int round = 0; round < 2; round++) {
			int want = expected_errno(upm_advice, start, slot_size, &stop);
			int got = madvise((void *)start, slot_size, upm_advice) ? errno : 0;

			if (got == ENOSPC && enospc_ok && (want == 0 || want == ENOMEM))
				want = ENOSPC;
			if (got != want) {
				ksft_print_msg("unexpected: child: madvise(%#lx, %#zx, UPM_MERGE) = %s, want %s\n",
					       start, slot_size, errno_name(got), errno_name(want));
				ok = false;
			}
			/* Unlike the parent's copy now, then advised again. */
			if (!round && slot_writable(slots[s].type) &&
			    !slot_shared(slots[s].type))
				write_pages(s, 0, SLOT_PAGES);
		}
		for (int i = 0; i < NSLOTS; i++)
			ok &= verify_slot(i, "a fork");
		fflush(stdout);
		_exit(ok ? 0 : 1);
	}
	nr_forks++;
	if (waitpid(pid, &status, 0) != pid)
		ksft_exit_fail_msg("waitpid: %s\n", strerror(errno));
	if (!WIFEXITED(status) || WEXITSTATUS(status)) {
		ksft_print_msg("fork child: status %#x\n", status);
		nr_forks_failed++;
	}
	for (int i = 0; i < NSLOTS; i++)
		verify_slot(i, "a child's writes");
}

static void fuzz_step(unsigned long long iter)
{
	unsigned int r = below(100);
	int s = below(NSLOTS);

	if (r < 6) {
		remap_slot(s, below(SLOT_NR_TYPES));
		verify_slot(s, "a remap");
	} else if (r < 14) {
		if (slot_writable(slots[s].type)) {
			int from = below(SLOT_PAGES);

			write_pages(s, from, from + below(SLOT_PAGES - from + 1));
		}
	} else if (r < 17) {
		/* Punch a hole. */
		int from = below(SLOT_PAGES), n = 1 + below(16);

		if (from + n > SLOT_PAGES)
			n = SLOT_PAGES - from;
		if (munmap(slot_addr(s) + from * ps, n * ps))
			ksft_exit_fail_msg("munmap: %s\n", strerror(errno));
		for (int p = from; p < from + n; p++)
			slots[s].mapped[p] = false;
	} else if (r < 18) {
		fuzz_fork();
	} else {
		fuzz_madvise(iter);
	}
}

/* process_madvise() does not take MADV_UPM_MERGE (upm.rst). */
static void test_process_madvise(void)
{
	struct iovec iov = { .iov_base = slot_addr(0), .iov_len = ps };
	int pidfd = syscall(SYS_pidfd_open, getpid(), 0);
	long ret;

	if (pidfd < 0) {
		ksft_test_result_skip("process_madvise: pidfd_open: %s\n", strerror(errno));
		return;
	}
	ret = syscall(SYS_process_madvise, pidfd, &iov, 1, upm_advice, 0);
	ksft_test_result(ret == -1 && errno == EINVAL,
			 "process_madvise(MADV_UPM_MERGE) fails with EINVAL\n");
	close(pidfd);
}

static void usage(const char *prog)
{
	fprintf(stderr, "usage: %s [-n iterations] [-t seconds] [-s seed] [-v]\n", prog);
	exit(KSFT_FAIL);
}

int main(int argc, char **argv)
{
	unsigned long long iterations = 0, iter;
	unsigned long seconds = 0;
	uint64_t seed = 0;
	bool seeded = false;
	struct timespec now;
	time_t deadline;
	char *reserve;
	char line[512];
	int n, opt;
	long limit;

	while ((opt = getopt(argc, argv, "n:t:s:v")) != -1) {
		switch (opt) {
		case 'n':
			iterations = strtoull(optarg, NULL, 0);
			break;
		case 't':
			seconds = strtoul(optarg, NULL, 0);
			break;
		case 's':
			seed = strtoull(optarg, NULL, 0);
			seeded = true;
			break;
		case 'v':
			verbose = true;
			break;
		default:
			usage(argv[0]);
		}
	}
	if (!iterations && !seconds)
		iterations = 10000;
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (!seeded)
		seed = now.tv_nsec ^ ((uint64_t)getpid() << 32);
	rng_state = seed ? seed : 1;
	deadline = now.tv_sec + seconds;

	ps = getpagesize();
	slot_size = SLOT_PAGES * ps;
	ksft_print_header();
	upm_advice = read_long("/sys/kernel/mm/upm/advice");
	if (upm_advice < 0)
		ksft_exit_skip("no /sys/kernel/mm/upm/advice: kernel without CONFIG_UPM\n");
	limit = read_long("/sys/kernel/mm/upm/max_pages_per_process");
	enospc_ok = limit >= 0 && limit < 16 * (NSLOTS + 1) * SLOT_PAGES;
	if (enospc_ok)
		ksft_print_msg("max_pages_per_process is %ld: ENOSPC allowed\n", limit);
	ksft_set_plan(4);
	ksft_print_msg("seed=%llu (repeat with -s %llu)\n",
		       (unsigned long long)seed, (unsigned long long)seed);

	devzero = open("/dev/zero", O_RDWR);
	if (devzero < 0)
		ksft_exit_fail_msg("/dev/zero: %s\n", strerror(errno));
	/* NSLOTS slots and a scratch slot, 2 MiB aligned for THPs. */
	reserve = map_or_die(NULL, (NSLOTS + 2) * slot_size, PROT_NONE,
			     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1);
	arena = (char *)(((uintptr_t)reserve + slot_size - 1) & ~(slot_size - 1));
	for (int s = 0; s < NSLOTS; s++)
		remap_slot(s, below(SLOT_NR_TYPES));

	test_process_madvise();

	for (iter = 0; ; iter++) {
		if (iterations && iter >= iterations)
			break;
		if (seconds && !(iter % 16)) {
			clock_gettime(CLOCK_MONOTONIC, &now);
			if (now.tv_sec >= deadline)
				break;
		}
		fuzz_step(iter);
		if (nr_unexpected + nr_corrupt + nr_forks_failed > 20) {
			ksft_print_msg("too many failures: stopping\n");
			break;
		}
	}
	for (int s = 0; s < NSLOTS; s++)
		verify_slot(s, "the last step");

	ksft_test_result(nr_unexpected == 0,
			 "%llu madvise calls returned the documented errno\n", nr_calls);
	ksft_test_result(nr_corrupt == 0, "slot contents intact\n");
	ksft_test_result(nr_forks_failed == 0,
			 "%llu forked children advised and checked their copies\n", nr_forks);

	n = snprintf(line, sizeof(line),
		     "fuzz: seed=%llu iterations=%llu calls=%llu forks=%llu by_errno:",
		     (unsigned long long)seed, iter, nr_calls, nr_forks);
	for (int e = 0; e < 256; e++)
		if (by_errno[e] && n < (int)sizeof(line))
			n += snprintf(line + n, sizeof(line) - n, " %s=%llu",
				      errno_name(e), by_errno[e]);
	ksft_print_msg("%s unexpected=%llu corrupt=%llu\n", line, nr_unexpected,
		       nr_corrupt);
	ksft_finished();
}
