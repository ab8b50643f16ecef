// SPDX-License-Identifier: GPL-2.0-only
/*
 * Stress test for MADV_UPM_MERGE (mm/upm.c): many processes advise, read,
 * write (breaking merged pages by COW), fork, munmap, remap, mprotect,
 * MADV_DONTNEED, MADV_UNMERGEABLE, exit and get killed, all on content drawn
 * from one small set of page patterns, so that their pages really merge with
 * each other. Every process knows what each of its pages must hold and
 * checks it; a single wrong byte fails the run.
 *
 * What a page must hold is kept as one 32-bit key per page: 0 is a page of
 * zeros, 1..npatterns are the patterns every process shares, larger keys are
 * private content. The content of a key is generated, so checking a page
 * costs no copy of it.
 *
 *   upm_stress [-p procs] [-t seconds] [-m MiB] [-s seed] [-n patterns] [-k]
 *
 * runs procs workers at a time for the given seconds, each with MiB of
 * memory in four mappings, respawning those that exit, and (-k) SIGKILLing
 * a random worker now and then. A worker's ops are drawn from a generator
 * seeded with seed, its slot and its generation. At the end it prints a
 * summary line of counts and one TAP result.
 *
 *   upm_stress -H [-n patterns]
 *
 * is a helper for tests that kill a process in the middle of things: it
 * reads commands from stdin and answers each on stdout:
 *
 *   map MIB     map MIB of pages holding the shared patterns in order
 *   advise      MADV_UPM_MERGE on all of it: "ok" or "err ERRNO"
 *   check       "ok BYTES" checked, or "err corrupt=BYTES"
 *   hog MIB     allocate and write MIB of private pages (to be OOM-killed)
 *   exit
 *
 * Run it as root, with whatever ksmd setting and memory cgroup the caller
 * wants: it changes no system setting.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "../kselftest.h"

#define NMAPS		4
#define MAX_PROCS	256
#define MAX_RANGE	256	/* pages in a typical op's range */
#define HUGE_SIZE	(2UL << 20)

/* Counters shared by all processes of a run (MAP_SHARED). */
enum {
	S_OPS, S_ADVISE, S_ADVISED_PAGES, S_EAGAIN, S_EINTR, S_VERIFY,
	S_COW_WRITES, S_FORKS, S_REMAPS, S_MUNMAPS, S_MPROTECTS, S_DONTNEEDS,
	S_UNMERGES, S_SPAWNS, S_KILLS, S_BYTES, S_CORRUPT, S_BAD_ERRNO,
	S_CHILD_FAILURES, S_WORKER_FAILURES, NSTATS
};

static const char * const stat_names[NSTATS] = {
	"ops", "advise", "advised_pages", "eagain", "eintr", "verify",
	"cow_writes", "forks", "remaps", "munmaps", "mprotects", "dontneeds",
	"unmerges", "spawns", "kills", "bytes_verified", "corrupt",
	"bad_errno", "child_failures", "worker_failures",
};

static uint64_t *stats;
static size_t pagesize;
static int upm_advice;
static uint32_t npatterns = 256;
static uint64_t run_seed = 1;
static const char *who = "parent";	/* for messages */
static unsigned long my_bad_errnos;	/* this process's */
static int my_reports;			/* corrupt pages reported */

/* One mapping of a worker and what each of its pages must hold. */
struct mapping {
	char *addr;
	size_t npages;
	uint32_t *key;		/* content key of each page, 0 = zeros */
	uint8_t *ro;		/* page is mapped read-only */
	bool huge;		/* MADV_HUGEPAGE */
};

static struct mapping maps[NMAPS];
static uint64_t rng_state;

static void count(int stat, uint64_t n)
{
	__atomic_fetch_add(&stats[stat], n, __ATOMIC_RELAXED);
}

static uint64_t rnd(void)
{
	uint64_t x = rng_state;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	rng_state = x;
	return x * 0x2545F4914F6CDD1Dull;
}

static uint64_t rnd_below(uint64_t n)
{
	return n ? rnd() % n : 0;
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static uint64_t key_start(uint32_t key)
{
	uint64_t x = (key + run_seed * 0x9E3779B97F4A7C15ull) *
		     0xBF58476D1CE4E5B9ull;

	return x ^ (x >> 31) ^ 1;
}

/* Write the content of key into the page at p. */
static void fill_page(char *p, uint32_t key)
{
	uint64_t *w = (uint64_t *)p, x = key_start(key);

	if (!key) {
		memset(p, 0, pagesize);
		return;
	}
	for (size_t j = 0; j < pagesize / 8; j++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		w[j] = x;
	}
}

/* The number of bytes of the page at p that differ from key's content. */
static size_t bad_bytes(const char *p, uint32_t key)
{
	const uint64_t *w = (const uint64_t *)p;
	uint64_t x = key_start(key), want;
	size_t bad = 0;

	for (size_t j = 0; j < pagesize / 8; j++) {
		if (key) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			want = x;
		} else {
			want = 0;
		}
		if (w[j] != want)
			for (int b = 0; b < 64; b += 8)
				bad += ((w[j] ^ want) >> b & 0xff) != 0;
	}
	return bad;
}

static uint32_t shared_key(void)
{
	return 1 + rnd_below(npatterns);
}

static uint32_t private_key(void)
{
	return npatterns + 1 + rnd_below(1u << 30);
}

/* Check pages [first, first + n) of m; returns the corrupt bytes. */
static size_t verify(struct mapping *m, size_t first, size_t n)
{
	size_t corrupt = 0;

	for (size_t i = first; i < first + n; i++) {
		size_t bad = bad_bytes(m->addr + i * pagesize, m->key[i]);

		if (bad && my_reports++ < 10) {
			ksft_print_msg("%s: mapping %ld page %zu (%p) key %u: %zu bytes differ\n",
				       who, (long)(m - maps), i,
				       m->addr + i * pagesize, m->key[i], bad);
		}
		corrupt += bad;
	}
	count(S_VERIFY, 1);
	count(S_BYTES, n * pagesize);
	count(S_CORRUPT, corrupt);
	return corrupt;
}

static size_t verify_all(void)
{
	size_t corrupt = 0;

	for (int i = 0; i < NMAPS; i++)
		corrupt += verify(&maps[i], 0, maps[i].npages);
	return corrupt;
}

static void bad_errno(const char *what, int err)
{
	ksft_print_msg("%s: %s: unexpected %s\n", who, what, strerror(err));
	count(S_BAD_ERRNO, 1);
	my_bad_errnos++;
}

/* A random range of m: mostly small, sometimes all of it. */
static void pick(struct mapping *m, size_t *first, size_t *n)
{
	if (!rnd_below(8)) {
		*first = 0;
		*n = m->npages;
		return;
	}
	*n = 1 + rnd_below(m->npages < MAX_RANGE ? m->npages : MAX_RANGE);
	*first = rnd_below(m->npages - *n + 1);
}

/* Fill fresh pages: mostly shared patterns, some private, some untouched. */
static void populate(struct mapping *m, size_t first, size_t n)
{
	for (size_t i = first; i < first + n; i++) {
		uint64_t r = rnd_below(16);

		if (r == 0) {
			m->key[i] = 0;	/* never touched: absent */
			continue;
		}
		m->key[i] = r < 14 ? shared_key() : private_key();
		fill_page(m->addr + i * pagesize, m->key[i]);
	}
}

static void map_fresh(struct mapping *m, char *at)
{
	size_t len = m->npages * pagesize;
	int flags = MAP_PRIVATE | MAP_ANONYMOUS;
	char *p;

	if (at) {
		p = mmap(at, len, PROT_READ | PROT_WRITE,
			 flags | MAP_FIXED_NOREPLACE, -1, 0);
	} else if (m->huge) {
		/* Over-map and trim, so that THPs can back the mapping. */
		p = mmap(NULL, len + HUGE_SIZE, PROT_READ | PROT_WRITE,
			 flags, -1, 0);
		if (p != MAP_FAILED) {
			char *a = (char *)(((uintptr_t)p + HUGE_SIZE - 1) &
					   ~(HUGE_SIZE - 1));

			if (a > p)
				munmap(p, a - p);
			munmap(a + len, p + HUGE_SIZE - a);
			p = a;
		}
	} else {
		p = mmap(NULL, len, PROT_READ | PROT_WRITE, flags, -1, 0);
	}
	if (p == MAP_FAILED)
		ksft_exit_fail_msg("%s: mmap %zu bytes: %s\n", who, len,
				   strerror(errno));
	if (m->huge && madvise(p, len, MADV_HUGEPAGE))
		bad_errno("MADV_HUGEPAGE", errno);
	m->addr = p;
	memset(m->key, 0, m->npages * sizeof(*m->key));
	memset(m->ro, 0, m->npages);
}

static void op_advise(struct mapping *m)
{
	size_t first, n;
	int tries = 0;

	pick(m, &first, &n);
	for (;;) {
		count(S_ADVISE, 1);
		if (!madvise(m->addr + first * pagesize, n * pagesize,
			     upm_advice)) {
			count(S_ADVISED_PAGES, n);
			return;
		}
		if (errno == EAGAIN && ++tries < 3) {
			count(S_EAGAIN, 1);
			continue;
		}
		if (errno == EINTR) {
			count(S_EINTR, 1);
			return;
		}
		bad_errno("MADV_UPM_MERGE", errno);
		return;
	}
}

static void make_writable(struct mapping *m, size_t first, size_t n)
{
	for (size_t i = first; i < first + n; i++) {
		if (!m->ro[i])
			continue;
		if (mprotect(m->addr + first * pagesize, n * pagesize,
			     PROT_READ | PROT_WRITE))
			ksft_exit_fail_msg("%s: mprotect RW: %s\n", who,
					   strerror(errno));
		memset(m->ro + first, 0, n);
		count(S_MPROTECTS, 1);
		return;
	}
}

/* Rewrite a few pages: a merged page gets the writer its own copy. */
static void op_write(struct mapping *m)
{
	size_t n = 1 + rnd_below(16), first;

	if (n > m->npages)
		n = m->npages;
	first = rnd_below(m->npages - n + 1);
	make_writable(m, first, n);
	for (size_t i = first; i < first + n; i++) {
		/* Back to a shared pattern, or something of our own. */
		m->key[i] = rnd_below(2) ? shared_key() : private_key();
		fill_page(m->addr + i * pagesize, m->key[i]);
	}
	count(S_COW_WRITES, n);
}

static void op_read(struct mapping *m)
{
	size_t first, n;

	pick(m, &first, &n);
	verify(m, first, n);
}

static void op_mprotect(struct mapping *m)
{
	bool ro = rnd_below(2);
	size_t first, n;

	pick(m, &first, &n);
	if (mprotect(m->addr + first * pagesize, n * pagesize,
		     ro ? PROT_READ : PROT_READ | PROT_WRITE))
		ksft_exit_fail_msg("%s: mprotect: %s\n", who, strerror(errno));
	memset(m->ro + first, ro, n);
	count(S_MPROTECTS, 1);
}

static void op_dontneed(struct mapping *m)
{
	size_t first, n;

	pick(m, &first, &n);
	if (madvise(m->addr + first * pagesize, n * pagesize, MADV_DONTNEED))
		bad_errno("MADV_DONTNEED", errno);
	memset(m->key + first, 0, n * sizeof(*m->key));
	count(S_DONTNEEDS, 1);
}

static void op_unmerge(struct mapping *m)
{
	size_t first, n;

	pick(m, &first, &n);
	count(S_UNMERGES, 1);
	/* Unmerging allocates pages: under a memcg limit it may fail. */
	if (madvise(m->addr + first * pagesize, n * pagesize,
		    MADV_UNMERGEABLE) &&
	    errno != ENOMEM && errno != EAGAIN)
		bad_errno("MADV_UNMERGEABLE", errno);
}

/* Replace a range by fresh memory (MAP_FIXED splits the VMA). */
static void op_remap(struct mapping *m)
{
	size_t first, n;
	char *p;

	pick(m, &first, &n);
	p = mmap(m->addr + first * pagesize, n * pagesize,
		 PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
		 -1, 0);
	if (p == MAP_FAILED)
		ksft_exit_fail_msg("%s: mmap MAP_FIXED: %s\n", who,
				   strerror(errno));
	memset(m->key + first, 0, n * sizeof(*m->key));
	memset(m->ro + first, 0, n);
	populate(m, first, n);
	count(S_REMAPS, 1);
}

/* Unmap a whole mapping and map it again, refilled. */
static void op_munmap(struct mapping *m)
{
	char *at = m->addr;

	if (munmap(m->addr, m->npages * pagesize))
		ksft_exit_fail_msg("%s: munmap: %s\n", who, strerror(errno));
	map_fresh(m, m->huge ? at : NULL);
	populate(m, 0, m->npages);
	count(S_MUNMAPS, 1);
}

static void random_op(bool may_fork);

/*
 * A child checks the copy it inherited, changes it, and checks it again;
 * the parent goes on meanwhile and checks its own copy as usual.
 */
static pid_t op_fork(void)
{
	size_t corrupt;
	pid_t pid;

	fflush(stdout);
	pid = fork();
	if (pid < 0) {
		if (errno != EAGAIN && errno != ENOMEM)
			bad_errno("fork", errno);
		return 0;
	}
	if (pid)
		return pid;
	who = "fork child";
	rng_state ^= getpid() * 0x9E3779B97F4A7C15ull;
	corrupt = verify_all();
	for (int i = 0; i < 32; i++)
		random_op(false);
	corrupt += verify_all();
	if (corrupt || my_bad_errnos) {
		count(S_CHILD_FAILURES, 1);
		_exit(1);
	}
	_exit(0);
}

static pid_t fork_child;

static void reap_fork_child(void)
{
	int status;

	if (!fork_child)
		return;
	if (waitpid(fork_child, &status, 0) != fork_child ||
	    !WIFEXITED(status) || WEXITSTATUS(status)) {
		ksft_print_msg("%s: fork child %d ended with status %#x\n",
			       who, fork_child, status);
		count(S_CHILD_FAILURES, 1);
	}
	fork_child = 0;
}

static void random_op(bool may_fork)
{
	struct mapping *m = &maps[rnd_below(NMAPS)];
	uint64_t r = rnd_below(100);

	count(S_OPS, 1);
	if (r < 22) {
		op_advise(m);
	} else if (r < 37) {
		op_read(m);
	} else if (r < 59) {
		op_write(m);
	} else if (r < 67) {
		op_mprotect(m);
	} else if (r < 75) {
		op_dontneed(m);
	} else if (r < 82) {
		op_unmerge(m);
	} else if (r < 90) {
		op_remap(m);
	} else if (r < 93) {
		op_munmap(m);
	} else if (may_fork && r < 97) {
		reap_fork_child();
		fork_child = op_fork();
		if (fork_child)
			count(S_FORKS, 1);
	} else {
		op_advise(m);
	}
}

static void setup_maps(size_t npages)
{
	for (int i = 0; i < NMAPS; i++) {
		struct mapping *m = &maps[i];

		m->npages = npages / NMAPS ? npages / NMAPS : 1;
		m->huge = i == 0 && m->npages * pagesize >= HUGE_SIZE;
		m->key = calloc(m->npages, sizeof(*m->key));
		m->ro = calloc(m->npages, 1);
		if (!m->key || !m->ro)
			ksft_exit_fail_msg("calloc\n");
		map_fresh(m, NULL);
		populate(m, 0, m->npages);
	}
}

/* A worker: random ops until its lifetime is over, then a full check. */
static void __attribute__((noreturn))
worker(int slot, unsigned int gen, size_t npages, double deadline)
{
	double end;

	who = "worker";
	rng_state = (run_seed + 1) * 0x9E3779B97F4A7C15ull ^
		    (slot + 1) * 0xBF58476D1CE4E5B9ull ^
		    (gen + 1) * 0x94D049BB133111EBull;
	/* Lives a random 2..12 s, or what is left of the run. */
	end = now() + 2 + rnd_below(10);
	if (end > deadline)
		end = deadline;
	setup_maps(npages);
	while (now() < end)
		random_op(true);
	reap_fork_child();
	_exit(verify_all() || my_bad_errnos ? 1 : 0);
}

static pid_t spawn(int slot, unsigned int gen, size_t npages, double deadline)
{
	pid_t pid;

	fflush(stdout);
	pid = fork();
	if (pid < 0)
		ksft_exit_fail_msg("fork: %s\n", strerror(errno));
	if (!pid)
		worker(slot, gen, npages, deadline);
	count(S_SPAWNS, 1);
	return pid;
}

static int stress(int procs, int seconds, size_t mib, bool kills)
{
	size_t npages = mib * (1 << 20) / pagesize;
	double start = now(), deadline = start + seconds, next_kill = start;
	pid_t pids[MAX_PROCS] = { 0 };
	unsigned int gen = 0;
	int running = 0, status;
	bool ok;

	/* Orphaned fork children are reaped here, so all are waited for. */
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	rng_state = run_seed * 0xD6E8FEB86659FD93ull + 1;
	for (int i = 0; i < procs; i++, running++)
		pids[i] = spawn(i, gen++, npages, deadline);

	while (running) {
		pid_t pid = waitpid(-1, &status, WNOHANG);
		int slot = -1;

		if (pid < 0)
			ksft_exit_fail_msg("waitpid: %s\n", strerror(errno));
		if (!pid) {
			usleep(20000);
			if (kills && now() > next_kill && now() < deadline - 1) {
				next_kill = now() + 0.5 + rnd_below(1000) / 1000.0;
				if (rnd_below(2)) {
					slot = rnd_below(procs);
					kill(pids[slot], SIGKILL);
					count(S_KILLS, 1);
				}
			}
			continue;
		}
		for (int i = 0; i < procs; i++)
			if (pids[i] == pid)
				slot = i;
		if (slot < 0)
			continue;	/* an orphaned fork child: it counts itself */
		if (!(WIFEXITED(status) && !WEXITSTATUS(status)) &&
		    !(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL && kills)) {
			ksft_print_msg("worker %d ended with status %#x\n",
				       pid, status);
			count(S_WORKER_FAILURES, 1);
		}
		if (now() < deadline - 1) {
			pids[slot] = spawn(slot, gen++, npages, deadline);
		} else {
			pids[slot] = 0;
			running--;
		}
	}
	/* Fork children whose worker was killed. */
	while (waitpid(-1, &status, 0) > 0)
		;

	printf("# stress: processes=%d duration=%.1fs seed=%llu mib=%zu patterns=%u",
	       procs, now() - start, (unsigned long long)run_seed, mib,
	       npatterns);
	for (int i = 0; i < NSTATS; i++)
		printf(" %s=%llu", stat_names[i],
		       (unsigned long long)stats[i]);
	printf("\n");
	ok = !stats[S_CORRUPT] && !stats[S_BAD_ERRNO] &&
	     !stats[S_CHILD_FAILURES] && !stats[S_WORKER_FAILURES] &&
	     stats[S_BYTES] && stats[S_ADVISED_PAGES];
	ksft_test_result(ok, "stress: %d processes, %d s, %zu MiB each\n",
			 procs, seconds, mib);
	return ok;
}

/* The command loop of -H. */
static int helper(void)
{
	struct mapping *m = &maps[0];
	char line[128];
	size_t mib;

	who = "helper";
	setvbuf(stdout, NULL, _IOLBF, 0);
	while (fgets(line, sizeof(line), stdin)) {
		if (sscanf(line, "map %zu", &mib) == 1) {
			m->npages = mib * (1 << 20) / pagesize;
			m->key = calloc(m->npages, sizeof(*m->key));
			m->ro = calloc(m->npages, 1);
			if (!m->key || !m->ro)
				ksft_exit_fail_msg("calloc\n");
			map_fresh(m, NULL);
			for (size_t i = 0; i < m->npages; i++) {
				m->key[i] = 1 + i % npatterns;
				fill_page(m->addr + i * pagesize, m->key[i]);
			}
			printf("ok\n");
		} else if (!strncmp(line, "advise", 6)) {
			if (madvise(m->addr, m->npages * pagesize, upm_advice))
				printf("err %s\n", strerror(errno));
			else
				printf("ok\n");
		} else if (!strncmp(line, "check", 5)) {
			size_t corrupt = verify(m, 0, m->npages);

			if (corrupt)
				printf("err corrupt=%zu\n", corrupt);
			else
				printf("ok %zu\n", m->npages * pagesize);
		} else if (sscanf(line, "hog %zu", &mib) == 1) {
			size_t len = mib << 20;
			char *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
				       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

			if (p == MAP_FAILED) {
				printf("err %s\n", strerror(errno));
				continue;
			}
			for (size_t off = 0; off < len; off += pagesize)
				fill_page(p + off, private_key());
			printf("ok\n");
		} else if (!strncmp(line, "exit", 4)) {
			return 0;
		} else {
			printf("err unknown command\n");
		}
	}
	return 0;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: upm_stress [-p procs] [-t seconds] [-m MiB] [-s seed] [-n patterns] [-k]\n"
		"       upm_stress -H [-n patterns]\n");
	exit(KSFT_FAIL);
}

int main(int argc, char **argv)
{
	int procs = 8, seconds = 60, opt;
	bool kills = false, help = false;
	size_t mib = 16;
	FILE *f;

	pagesize = getpagesize();
	while ((opt = getopt(argc, argv, "p:t:m:s:n:kH")) != -1) {
		switch (opt) {
		case 'p':
			procs = atoi(optarg);
			break;
		case 't':
			seconds = atoi(optarg);
			break;
		case 'm':
			mib = strtoul(optarg, NULL, 0);
			break;
		case 's':
			run_seed = strtoull(optarg, NULL, 0);
			break;
		case 'n':
			npatterns = strtoul(optarg, NULL, 0);
			break;
		case 'k':
			kills = true;
			break;
		case 'H':
			help = true;
			break;
		default:
			usage();
		}
	}
	if (procs < 1 || procs > MAX_PROCS || seconds < 1 || !mib ||
	    !npatterns || npatterns > (1u << 30))
		usage();

	stats = mmap(NULL, NSTATS * sizeof(*stats), PROT_READ | PROT_WRITE,
		     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (stats == MAP_FAILED)
		ksft_exit_fail_msg("mmap: %s\n", strerror(errno));
	f = fopen("/sys/kernel/mm/upm/advice", "r");
	if (!f || fscanf(f, "%d", &upm_advice) != 1)
		ksft_exit_skip("no /sys/kernel/mm/upm/advice: kernel without CONFIG_UPM\n");
	fclose(f);
	if (help)
		return helper();

	setvbuf(stdout, NULL, _IOLBF, 0);
	ksft_print_header();
	ksft_set_plan(1);
	stress(procs, seconds, mib, kills);
	ksft_finished();
}
