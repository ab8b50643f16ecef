// SPDX-License-Identifier: GPL-2.0-only
/*
 * Functional tests for MADV_UPM_MERGE (mm/upm.c), in the manner of
 * ksm_functional_tests.c. Run as root with ksmd stopped: every merge seen
 * here is made by madvise itself. The last test starts ksmd, to show that it
 * keeps out of the memory of processes that used UPM.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "../kselftest.h"

#define NPAGES 64

static size_t pagesize;
static int upm_advice;
static char ksm_run_saved[16];

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

/* A field of /proc/self/ksm_stat, such as "ksm_rmap_items"; -1 if absent. */
static long ksm_stat_field(const char *field)
{
	size_t len = strlen(field);
	char line[128];
	long v = -1;
	FILE *f;

	f = fopen("/proc/self/ksm_stat", "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, field, len) && line[len] == ' ') {
			v = strtol(line + len, NULL, 10);
			break;
		}
	fclose(f);
	return v;
}

static long merging_pages(void)
{
	return ksm_stat_field("ksm_merging_pages");
}

/*
 * KSM pages mapped in [mem, mem + npages pages), from pagemap and
 * kpageflags (root only): exact for a range, where ksm_merging_pages counts
 * the whole process and keeps counting unmapped pages until exit.
 */
static long ksm_pages_in(char *mem, int npages)
{
	int pagemap = open("/proc/self/pagemap", O_RDONLY);
	int kpageflags = open("/proc/kpageflags", O_RDONLY);
	long n = 0;

	if (pagemap < 0 || kpageflags < 0)
		ksft_exit_fail_msg("pagemap/kpageflags: %s\n", strerror(errno));
	for (int i = 0; i < npages; i++) {
		uint64_t entry, flags;
		off_t off = ((uintptr_t)mem / pagesize + i) * 8;

		if (pread(pagemap, &entry, 8, off) != 8)
			ksft_exit_fail_msg("pagemap read\n");
		if (!(entry & (1ull << 63)))
			continue;
		off = (entry & ((1ull << 55) - 1)) * 8;
		if (pread(kpageflags, &flags, 8, off) != 8)
			ksft_exit_fail_msg("kpageflags read\n");
		n += !!(flags & (1ull << 21));	/* KPF_KSM */
	}
	close(pagemap);
	close(kpageflags);
	return n;
}

static void write_str(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY);

	if (fd < 0 || write(fd, s, strlen(s)) != (ssize_t)strlen(s))
		ksft_exit_fail_msg("writing %s: %s\n", path, strerror(errno));
	close(fd);
}

/* Page i gets content that depends on seed and i only. */
static void fill(char *mem, int npages, unsigned int seed)
{
	for (int i = 0; i < npages; i++) {
		uint64_t x = seed * 0x9E3779B97F4A7C15ull + i + 1;
		uint64_t *p = (uint64_t *)(mem + i * pagesize);

		for (size_t j = 0; j < pagesize / 8; j++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			p[j] = x;
		}
	}
}

static bool same_as(char *mem, int npages, unsigned int seed)
{
	char *want = malloc(npages * pagesize);
	bool ok;

	fill(want, npages, seed);
	ok = !memcmp(mem, want, npages * pagesize);
	free(want);
	return ok;
}

static char *map_filled(int npages, unsigned int seed)
{
	char *mem = mmap(NULL, npages * pagesize, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (mem == MAP_FAILED)
		ksft_exit_fail_msg("mmap: %s\n", strerror(errno));
	fill(mem, npages, seed);
	return mem;
}

/*
 * A child writes the parent's content into fresh pages of its own (so the
 * two are distinct physical pages), both advise, and every page is merged
 * when the second madvise returns.
 */
static void test_merge_across_fork(void)
{
	char *mem = map_filled(NPAGES, 1);
	int status;
	pid_t pid;

	if (madvise(mem, NPAGES * pagesize, upm_advice)) {
		ksft_test_result_fail("parent madvise: %s\n", strerror(errno));
		return;
	}
	pid = fork();
	if (!pid) {
		fill(mem, NPAGES, 1);	/* COW: private pages, same content */
		if (madvise(mem, NPAGES * pagesize, upm_advice))
			_exit(1);
		_exit(merging_pages() == NPAGES &&
		      ksm_pages_in(mem, NPAGES) == NPAGES &&
		      same_as(mem, NPAGES, 1) ? 0 : 2);
	}
	waitpid(pid, &status, 0);
	ksft_test_result(WIFEXITED(status) && !WEXITSTATUS(status),
			 "pages of two processes merged when madvise returns\n");
	munmap(mem, NPAGES * pagesize);
}

/*
 * Fork of a merged region: the child sees the data; its write gets it its
 * own copy; the parent's pages stay merged and unchanged.
 */
static void test_fork_of_merged(void)
{
	char *a = map_filled(NPAGES, 2), *b = map_filled(NPAGES, 2);
	int status;
	pid_t pid;

	if (madvise(a, NPAGES * pagesize, upm_advice) ||
	    madvise(b, NPAGES * pagesize, upm_advice) ||
	    ksm_pages_in(a, NPAGES) != NPAGES ||
	    ksm_pages_in(b, NPAGES) != NPAGES) {
		ksft_test_result_fail("merge before fork: %ld + %ld merged\n",
				      ksm_pages_in(a, NPAGES),
				      ksm_pages_in(b, NPAGES));
		return;
	}
	pid = fork();
	if (!pid) {
		if (!same_as(a, NPAGES, 2) || ksm_pages_in(a, NPAGES) != NPAGES)
			_exit(1);
		/* volatile: nothing reads it before _exit, yet it must happen */
		*(volatile char *)(a + 5 * pagesize) ^= 1;
		if (!same_as(b, NPAGES, 2) ||
		    ksm_pages_in(a, NPAGES) != NPAGES - 1) {
			ksft_print_msg("child after write: a %ld b %ld merged, b %s\n",
				       ksm_pages_in(a, NPAGES),
				       ksm_pages_in(b, NPAGES),
				       same_as(b, NPAGES, 2) ? "intact" : "changed");
			_exit(2);
		}
		_exit(0);
	}
	waitpid(pid, &status, 0);
	ksft_print_msg("child status %#x, parent: %ld of %d pages merged, data %s\n",
		       status, ksm_pages_in(a, NPAGES), NPAGES,
		       same_as(a, NPAGES, 2) ? "intact" : "changed");
	ksft_test_result(WIFEXITED(status) && !WEXITSTATUS(status) &&
			 same_as(a, NPAGES, 2) &&
			 ksm_pages_in(a, NPAGES) == NPAGES,
			 "fork of a merged region\n");
	munmap(a, NPAGES * pagesize);
	munmap(b, NPAGES * pagesize);
}

/* A process that shares exits: the other keeps its data, counters follow. */
static void test_exit_while_shared(void)
{
	char *mem = map_filled(NPAGES, 3);
	long sharing_merged, sharing_after;
	int status, pipefd[2];
	pid_t pid;
	char c;

	if (pipe(pipefd))
		ksft_exit_fail_msg("pipe\n");
	pid = fork();
	if (!pid) {
		fill(mem, NPAGES, 3);
		if (madvise(mem, NPAGES * pagesize, upm_advice))
			_exit(1);
		c = 1;
		if (write(pipefd[1], &c, 1) != 1)
			_exit(1);
		pause();
		_exit(0);
	}
	if (read(pipefd[0], &c, 1) != 1)
		ksft_exit_fail_msg("child\n");
	madvise(mem, NPAGES * pagesize, upm_advice);
	sharing_merged = read_long("/sys/kernel/mm/ksm/pages_sharing");
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	/* The child's half of every pair is gone from KSM's books at once. */
	sharing_after = read_long("/sys/kernel/mm/ksm/pages_sharing");
	ksft_print_msg("pages_sharing %ld with the child, %ld after it, %ld of %d pages still merged\n",
		       sharing_merged, sharing_after, ksm_pages_in(mem, NPAGES), NPAGES);
	ksft_test_result(same_as(mem, NPAGES, 3) &&
			 ksm_pages_in(mem, NPAGES) == NPAGES &&
			 sharing_after == sharing_merged - NPAGES,
			 "a sharer is killed: data intact, KSM's counters follow\n");
	munmap(mem, NPAGES * pagesize);
	close(pipefd[0]);
	close(pipefd[1]);
}

static void test_unmergeable(void)
{
	char *a = map_filled(NPAGES, 4), *b = map_filled(NPAGES, 4);

	madvise(a, NPAGES * pagesize, upm_advice);
	madvise(b, NPAGES * pagesize, upm_advice);
	ksft_print_msg("before MADV_UNMERGEABLE: a %p %ld, b %p %ld merged\n",
		       a, ksm_pages_in(a, NPAGES), b, ksm_pages_in(b, NPAGES));
	if (madvise(b, NPAGES * pagesize, MADV_UNMERGEABLE)) {
		ksft_test_result_fail("MADV_UNMERGEABLE: %s\n", strerror(errno));
		return;
	}
	ksft_print_msg("after MADV_UNMERGEABLE: a %ld, b %ld of %d pages merged\n",
		       ksm_pages_in(a, NPAGES), ksm_pages_in(b, NPAGES), NPAGES);
	ksft_test_result(ksm_pages_in(b, NPAGES) == 0 &&
			 ksm_pages_in(a, NPAGES) == NPAGES &&
			 same_as(a, NPAGES, 4) &&
			 same_as(b, NPAGES, 4),
			 "MADV_UNMERGEABLE unmerges at once\n");
	munmap(a, NPAGES * pagesize);
	munmap(b, NPAGES * pagesize);
}

/*
 * In a fresh process (ksm_fork() starts its ksm_stat at 0): NPAGES pages,
 * NPAGES - 4 of them twins of the pages of a second area, 4 without a twin
 * (candidates), advised with UPM, then MADV_UNMERGEABLE over the span of
 * both, with a page unmapped between them if @hole. Exits 0 if the span
 * ends unmerged and UPM's and KSM's bookkeeping of it is all gone.
 */
static int unmerge_span_child(bool hole)
{
	size_t span = (2 * NPAGES + 1) * pagesize;
	long candidates = read_long("/sys/kernel/mm/upm/candidates");
	long items, merged, merging, cands_left;
	char *mem, *tail;
	int ret, err;

	mem = mmap(NULL, span, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return 3;
	tail = mem + (NPAGES + 1) * pagesize;
	fill(mem, NPAGES, 8);
	fill(tail, NPAGES, 8);
	fill(tail + (NPAGES - 4) * pagesize, 4, 9);
	if (madvise(mem, span, upm_advice))
		return 3;
	merged = ksm_pages_in(mem, NPAGES) + ksm_pages_in(tail, NPAGES);
	if (hole)
		munmap(mem + NPAGES * pagesize, pagesize);
	ret = madvise(mem, span, MADV_UNMERGEABLE);
	err = errno;
	items = ksm_stat_field("ksm_rmap_items");
	merging = ksm_stat_field("ksm_merging_pages");
	cands_left = read_long("/sys/kernel/mm/upm/candidates") - candidates;
	ksft_print_msg("%s: %ld pages merged; MADV_UNMERGEABLE %s; then %ld+%ld merged, ",
		       hole ? "with a hole" : "without a hole", merged,
		       ret ? strerror(err) : "0",
		       ksm_pages_in(mem, NPAGES), ksm_pages_in(tail, NPAGES));
	printf("ksm_rmap_items %ld, ksm_merging_pages %ld, candidates %+ld\n",
	       items, merging, cands_left);
	fflush(stdout);
	if (merged != 2 * (NPAGES - 4) || (hole ? ret != -1 || err != ENOMEM : ret))
		return 1;
	return ksm_pages_in(mem, NPAGES) || ksm_pages_in(tail, NPAGES) ||
	       items || merging || cands_left ||
	       !same_as(mem, NPAGES - 4, 8) || !same_as(tail, NPAGES - 4, 8) ? 2 : 0;
}

/*
 * MADV_UNMERGEABLE over a range with a hole fails with ENOMEM, as madvise
 * documents, yet the mapped parts are unmerged: UPM's clean-up of them must
 * happen too, as for a range without holes.
 */
static void test_unmergeable_hole(void)
{
	int status[2];

	for (int hole = 0; hole < 2; hole++) {
		pid_t pid;

		fflush(stdout);
		pid = fork();
		if (!pid)
			_exit(unmerge_span_child(hole));
		waitpid(pid, &status[hole], 0);
	}
	ksft_test_result(WIFEXITED(status[0]) && !WEXITSTATUS(status[0]) &&
			 WIFEXITED(status[1]) && !WEXITSTATUS(status[1]),
			 "MADV_UNMERGEABLE over a hole cleans up the mapped parts\n");
}

/*
 * While /sys/kernel/mm/ksm/run is 2, KSM unmerges every KSM page: UPM must
 * not make new ones. MADV_UPM_MERGE fails with EBUSY and merges nothing;
 * once run leaves 2, advising again merges.
 */
static void test_run_unmerge(void)
{
	char *a = map_filled(NPAGES, 10), *b = map_filled(NPAGES, 10);
	int ra, rb, ea, eb;
	long during, after;

	write_str("/sys/kernel/mm/ksm/run", "2");
	ra = madvise(a, NPAGES * pagesize, upm_advice);
	ea = errno;
	rb = madvise(b, NPAGES * pagesize, upm_advice);
	eb = errno;
	during = ksm_pages_in(a, NPAGES) + ksm_pages_in(b, NPAGES);
	write_str("/sys/kernel/mm/ksm/run", "0");
	madvise(a, NPAGES * pagesize, upm_advice);
	madvise(b, NPAGES * pagesize, upm_advice);
	after = ksm_pages_in(a, NPAGES) + ksm_pages_in(b, NPAGES);
	ksft_print_msg("run=2: madvise %s, %s; %ld pages merged; run=0: %ld merged\n",
		       ra ? strerror(ea) : "0", rb ? strerror(eb) : "0",
		       during, after);
	ksft_test_result(ra == -1 && ea == EBUSY && rb == -1 && eb == EBUSY &&
			 during == 0 && after == 2 * NPAGES &&
			 same_as(a, NPAGES, 10) && same_as(b, NPAGES, 10),
			 "no merge while ksm/run is 2 (EBUSY)\n");
	munmap(a, NPAGES * pagesize);
	munmap(b, NPAGES * pagesize);
}

static void test_errors(void)
{
	char *mem = map_filled(4, 5), *shared;
	bool ok = true;

	if (!madvise(mem + 1, pagesize, upm_advice) || errno != EINVAL) {
		ksft_print_msg("misaligned start: %s\n", strerror(errno));
		ok = false;
	}
	munmap(mem + 2 * pagesize, pagesize);
	if (!madvise(mem, 4 * pagesize, upm_advice) || errno != ENOMEM) {
		ksft_print_msg("hole: %s\n", strerror(errno));
		ok = false;
	}
	shared = mmap(NULL, pagesize, PROT_READ | PROT_WRITE,
		      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (!madvise(shared, pagesize, upm_advice) || errno != EINVAL) {
		ksft_print_msg("MAP_SHARED: %s\n", strerror(errno));
		ok = false;
	}
	ksft_test_result(ok, "documented errnos for bad ranges\n");
	munmap(shared, pagesize);
	munmap(mem, 4 * pagesize);
}

/* Wait until ksmd has finished @n more full scans; false after two minutes. */
static bool wait_full_scans(int n)
{
	long until = read_long("/sys/kernel/mm/ksm/full_scans") + n;

	for (int i = 0; i < 1200; i++) {
		if (read_long("/sys/kernel/mm/ksm/full_scans") >= until)
			return true;
		usleep(100 * 1000);
	}
	return false;
}

/*
 * The process test_fork_keeps_domain() execs: one that never used UPM.
 * It offers NPAGES pages to ksmd, says so on stdout, holds them until
 * stdin closes, and exits 0 if none of them was merged.
 */
static int mergeable_main(unsigned int seed)
{
	char *mem = map_filled(NPAGES, seed);
	char c;

	if (madvise(mem, NPAGES * pagesize, MADV_MERGEABLE))
		return 3;
	if (write(1, "r", 1) != 1)
		return 3;
	while (read(0, &c, 1) > 0)
		;
	return merging_pages() == 0 ? 0 : 1;
}

/*
 * A fork of a process that used UPM stays in its merge domain: ksmd, which
 * merges in no domain, must not share the pages the child inherited with a
 * process that only used MADV_MERGEABLE, even with ksmd scanning flat out.
 */
static void test_fork_keeps_domain(void)
{
	char *mem, c, to_scan[16], sleep_ms[16];
	int ready[2], hold[2], status;
	pid_t stock, child;
	bool scanned;

	/* Close-on-exec: the exec'd process must hold no write end of hold. */
	if (pipe2(ready, O_CLOEXEC) || pipe2(hold, O_CLOEXEC))
		ksft_exit_fail_msg("pipe: %s\n", strerror(errno));
	stock = fork();
	if (!stock) {
		dup2(hold[0], 0);
		dup2(ready[1], 1);
		execl("/proc/self/exe", "upm_functional_tests", "--mergeable", "7", NULL);
		_exit(4);
	}
	close(ready[1]);
	close(hold[0]);
	if (read(ready[0], &c, 1) != 1)
		ksft_exit_fail_msg("the MADV_MERGEABLE process did not start\n");

	mem = map_filled(NPAGES, 7);
	if (madvise(mem, NPAGES * pagesize, upm_advice))
		ksft_exit_fail_msg("madvise: %s\n", strerror(errno));
	child = fork();
	if (!child) {
		for (;;)
			pause();
	}

	snprintf(to_scan, sizeof(to_scan), "%ld", read_long("/sys/kernel/mm/ksm/pages_to_scan"));
	snprintf(sleep_ms, sizeof(sleep_ms), "%ld", read_long("/sys/kernel/mm/ksm/sleep_millisecs"));
	write_str("/sys/kernel/mm/ksm/pages_to_scan", "1000");
	write_str("/sys/kernel/mm/ksm/sleep_millisecs", "10");
	write_str("/sys/kernel/mm/ksm/run", "1");
	scanned = wait_full_scans(3);

	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	close(hold[1]);
	waitpid(stock, &status, 0);
	/* ksmd frees the exited process's bookkeeping in its next passes. */
	scanned = wait_full_scans(2) && scanned;
	write_str("/sys/kernel/mm/ksm/run", "0");
	write_str("/sys/kernel/mm/ksm/pages_to_scan", to_scan);
	write_str("/sys/kernel/mm/ksm/sleep_millisecs", sleep_ms);
	close(ready[0]);
	munmap(mem, NPAGES * pagesize);

	if (!scanned)
		ksft_test_result_fail("ksmd did not finish its scans in time\n");
	else
		ksft_test_result(WIFEXITED(status) && !WEXITSTATUS(status),
				 "ksmd leaves the fork of a UPM process alone (status %d)\n",
				 WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

static void restore_ksm_run(void)
{
	write_str("/sys/kernel/mm/ksm/run", ksm_run_saved);
}

int main(int argc, char **argv)
{
	pagesize = getpagesize();
	if (argc == 3 && !strcmp(argv[1], "--mergeable"))
		return mergeable_main(atoi(argv[2]));
	ksft_print_header();

	upm_advice = read_long("/sys/kernel/mm/upm/advice");
	if (upm_advice < 0)
		ksft_exit_skip("no /sys/kernel/mm/upm/advice: kernel without CONFIG_UPM\n");
	if (geteuid())
		ksft_exit_skip("needs root to stop ksmd\n");
	snprintf(ksm_run_saved, sizeof(ksm_run_saved), "%ld",
		 read_long("/sys/kernel/mm/ksm/run"));
	write_str("/sys/kernel/mm/ksm/run", "0");
	atexit(restore_ksm_run);

	ksft_set_plan(8);
	test_merge_across_fork();
	test_fork_of_merged();
	test_exit_while_shared();
	test_unmergeable();
	test_errors();
	test_unmergeable_hole();
	test_run_unmerge();
	test_fork_keeps_domain();
	ksft_finished();
}
