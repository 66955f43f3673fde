// sqlprof attributes a process's SQLite time to SQL statements.
//
// dqlite 1.11 executes every member's SQL on the leader and has no
// statement-level profiler, so `perf` shows "libsqlite3" without saying
// which query. Loaded with LD_PRELOAD into a control node, this wraps
// sqlite3_prepare_v2 and sqlite3_step (dqlite calls both through the
// dynamic libsqlite3) and every 10 s ($SQLPROF_INTERVAL_MS) rewrites
// $SQLPROF_OUT with, per statement text (runs of ",?" folded, so "IN (?)"
// lists of two or more are one line): calls, rows, and CPU time in step
// and in prepare. Without SQLPROF_OUT it only forwards. Built by
// scalebench --sql-profile; not part of any product binary.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 4096
#define KEYLEN 200

struct entry {
	uint64_t hash;
	char key[KEYLEN];
	uint64_t steps, rows, step_ns, prepares, prepare_ns;
};

static struct entry table[SLOTS];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static const char *out_path;
static int (*real_step)(sqlite3_stmt *);
static int (*real_prepare)(sqlite3 *, const char *, int, sqlite3_stmt **, const char **);

// now_ns is the calling thread's CPU time: wall time would charge a
// statement for the time its thread waited for a core, which on a loaded
// host is most of it.
static uint64_t now_ns(void) {
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

// normalize copies sql into key (truncated to KEYLEN), folding whitespace
// runs to one space and "?,?,?…" to "?,?".
static void normalize(const char *sql, int n, char *key) {
	int k = 0;
	for (int i = 0; sql[i] && (n < 0 || i < n) && k < KEYLEN - 4; i++) {
		char c = sql[i];
		if (c == '\n' || c == '\t' || c == '\r') c = ' ';
		if (c == ' ' && k > 0 && key[k - 1] == ' ') continue;
		if (c == ',' && sql[i + 1] == '?' && k >= 2 && key[k - 1] == '?' && key[k - 2] == ',') {
			i++;
			continue;
		}
		key[k++] = c;
	}
	key[k] = 0;
}

static struct entry *lookup(const char *key) {
	uint64_t h = 1469598103934665603ull;
	for (const char *p = key; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
	for (unsigned i = 0; i < SLOTS; i++) {
		struct entry *e = &table[(h + i) % SLOTS];
		if (e->hash == h && strcmp(e->key, key) == 0) return e;
		if (e->hash == 0) {
			e->hash = h;
			strcpy(e->key, key);
			return e;
		}
	}
	return NULL; // full: the statement is not counted
}

int sqlite3_prepare_v2(sqlite3 *db, const char *sql, int n, sqlite3_stmt **stmt, const char **tail) {
	uint64_t t0 = now_ns();
	int rc = real_prepare(db, sql, n, stmt, tail);
	if (!out_path) return rc;
	uint64_t d = now_ns() - t0;
	char key[KEYLEN];
	normalize(sql, n, key);
	pthread_mutex_lock(&mu);
	struct entry *e = lookup(key);
	if (e) {
		e->prepares++;
		e->prepare_ns += d;
	}
	pthread_mutex_unlock(&mu);
	return rc;
}

int sqlite3_step(sqlite3_stmt *stmt) {
	if (!out_path) return real_step(stmt);
	uint64_t t0 = now_ns();
	int rc = real_step(stmt);
	uint64_t d = now_ns() - t0;
	const char *sql = sqlite3_sql(stmt);
	char key[KEYLEN];
	normalize(sql ? sql : "?", -1, key);
	pthread_mutex_lock(&mu);
	struct entry *e = lookup(key);
	if (e) {
		e->steps++;
		e->step_ns += d;
		if (rc == SQLITE_ROW) e->rows++;
	}
	pthread_mutex_unlock(&mu);
	return rc;
}

/* ms is a time as the profile prints it: whole milliseconds, rounded. */
static uint64_t ms(uint64_t ns) { return (ns + 500000) / 1000000; }

/* by_time orders the profile by the total it shows (step + prepare, each
 * rounded to milliseconds), then by the exact total, empty slots last. Sorting
 * by the exact total alone let a line show a larger total than the one above
 * it once both fields were rounded. */
static int by_time(const void *a, const void *b) {
	const struct entry *x = a, *y = b;
	if (!x->hash || !y->hash) return !x->hash - !y->hash;
	uint64_t sx = ms(x->step_ns) + ms(x->prepare_ns), sy = ms(y->step_ns) + ms(y->prepare_ns);
	if (sx != sy) return sx < sy ? 1 : -1;
	uint64_t tx = x->step_ns + x->prepare_ns, ty = y->step_ns + y->prepare_ns;
	return tx < ty ? 1 : tx > ty ? -1 : 0;
}

static void dump(void) {
	static struct entry copy[SLOTS];
	pthread_mutex_lock(&mu);
	memcpy(copy, table, sizeof copy);
	pthread_mutex_unlock(&mu);
	qsort(copy, SLOTS, sizeof copy[0], by_time);
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s.tmp", out_path);
	FILE *f = fopen(tmp, "w");
	if (!f) return;
	fprintf(f, "step_cpu_ms\tprepare_cpu_ms\tsteps\trows\tprepares\tsql\n");
	for (int i = 0; i < SLOTS && copy[i].hash; i++) {
		struct entry *e = &copy[i];
		fprintf(f, "%llu\t%llu\t%llu\t%llu\t%llu\t%s\n", (unsigned long long)ms(e->step_ns), (unsigned long long)ms(e->prepare_ns),
			(unsigned long long)e->steps, (unsigned long long)e->rows, (unsigned long long)e->prepares, e->key);
	}
	fclose(f);
	rename(tmp, out_path);
}

static void *dumper(void *arg) {
	long ms = (long)(intptr_t)arg;
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
	for (;;) {
		nanosleep(&ts, NULL);
		dump();
	}
	return NULL;
}

__attribute__((constructor)) static void init(void) {
	real_step = dlsym(RTLD_NEXT, "sqlite3_step");
	real_prepare = dlsym(RTLD_NEXT, "sqlite3_prepare_v2");
	if (!real_step || !real_prepare) {
		fprintf(stderr, "sqlprof: libsqlite3 not found: %s\n", dlerror());
		abort();
	}
	out_path = getenv("SQLPROF_OUT");
	if (out_path && *out_path) {
		const char *iv = getenv("SQLPROF_INTERVAL_MS");
		long ms = iv ? atol(iv) : 0;
		if (ms <= 0) ms = 10000;
		pthread_t t;
		pthread_create(&t, NULL, dumper, (void *)(intptr_t)ms);
		pthread_detach(t);
	} else {
		out_path = NULL;
	}
}
