/*
 * Copyright (C) aai-nginx authors
 *
 * ratelimit-cpu: the rate limiter's script against one redis-server, Redis
 * CPU per check, several scripts side by side in one run.
 *
 *   ratelimit-cpu PORT PID SECONDS ROUNDS SCENARIOS NAME=FILE.lua[:END.lua]
 *
 * A script given with END.lua (lua/ratelimit_library.lua, from 2026-12-07)
 * is loaded as the module loads it, a Redis 7 function library (the file
 * without its last line, then END.lua), and called with FCALL; without,
 * it is loaded with SCRIPT LOAD and called with EVALSHA.
 *
 * SCENARIOS is a comma-separated list of: exact1 (S8: one sliding window
 * zone per user), s9 (S9: per user sliding, per IP GCRA burst=1000, per IP
 * sliding; the IP keys shared by the batch), counter1 (S15), counter3
 * (three counter zones, each its own key per user), gcra1 (S18: per user
 * GCRA, burst=100 nodelay).  Each run sends, on one connection, one
 * FCALL or EVALSHA at a time as the module does: batches of 14 requests, users
 * drawn from 10,000, the zones' rates high enough that nothing is
 * rejected (RLCPU_USERS: another number of users).  Before each run
 * the database is flushed and 3 checks per user run unmeasured (almost
 * every user's keys written: the steady state, where a counter key is
 * written whole once per window).  The run's Redis CPU is
 * the process's utime + stime (/proc/PID/stat, and INFO's used_cpu_*,
 * finer), its commands INFO commandstats' calls.  Each round runs every
 * (scenario, script) pair, the scripts' order rotating; one line per run.
 */


#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>


#define BATCH    14
#define USERS    10000

static int  users = USERS;       /* RLCPU_USERS */
#define MAXSCR   12
#define MAXKEYS  (3 * BATCH + 2)


typedef struct {
    const char  *name;
    const char  *file;
    const char  *cmd;            /* FCALL or EVALSHA */
    char         sha[41];        /* or the function's name */
} script_t;


static redisContext  *rc;


static double
now_sec(void)
{
    struct timespec  ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}


static double
proc_cpu(int pid)
{
    char                path[64], buf[1024], *p;
    FILE               *f;
    int                 i;
    unsigned long long  ut, st;

    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    f = fopen(path, "r");
    if (f == NULL || fgets(buf, sizeof(buf), f) == NULL) {
        fprintf(stderr, "ratelimit-cpu: %s unreadable\n", path);
        exit(1);
    }
    fclose(f);

    /* fields 14 and 15 (utime, stime), after the ")" of the name */
    p = strrchr(buf, ')');
    for (i = 0; i < 12 && p; i++) {
        p = strchr(p + 1, ' ');
    }
    if (p == NULL || sscanf(p, " %llu %llu", &ut, &st) != 2) {
        fprintf(stderr, "ratelimit-cpu: %s: no utime\n", path);
        exit(1);
    }
    return (double) (ut + st) / sysconf(_SC_CLK_TCK);
}


static redisReply *
cmd(const char *fmt, const char *arg)
{
    redisReply  *r;

    r = arg ? redisCommand(rc, fmt, arg) : redisCommand(rc, fmt);
    if (r == NULL || r->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "ratelimit-cpu: %s: %s\n", fmt,
                r ? r->str : rc->errstr);
        exit(1);
    }
    return r;
}


/* INFO's used_cpu_sys + used_cpu_user, or one command's calls */

static double
info_value(const char *section, const char *name, const char *field)
{
    char        *p;
    double       v;
    redisReply  *r;

    r = cmd("INFO %s", section);
    v = 0;
    p = strstr(r->str, name);
    if (p) {
        p = strstr(p, field);
        if (p) {
            v = atof(p + strlen(field));
        }
    }
    freeReplyObject(r);
    return v;
}


static double
info_cpu(void)
{
    return info_value("cpu", "used_cpu_sys:", "used_cpu_sys:")
           + info_value("cpu", "used_cpu_user:", "used_cpu_user:");
}


/* the calls of every command: "name=calls name=calls ..." */

static void
info_calls(char *out, size_t size)
{
    char        *p, *e, *c;
    size_t       n;
    redisReply  *r;

    r = cmd("INFO commandstats", NULL);
    n = 0;
    out[0] = '\0';
    for (p = r->str; (p = strstr(p, "cmdstat_")) != NULL; p = e) {
        p += 8;
        e = strchr(p, ':');
        c = strstr(p, "calls=");
        if (e == NULL || c == NULL) {
            break;
        }
        n += snprintf(out + n, size - n, "%.*s=%lld ", (int) (e - p), p,
                      atoll(c + 6));
        if (n >= size) {
            break;
        }
    }
    freeReplyObject(r);
}


static long long
calls_of(const char *all, const char *name)
{
    char        pat[64];
    const char  *p;

    snprintf(pat, sizeof(pat), " %s=", name);
    p = strstr(all, pat);
    if (p == NULL && strncmp(all, pat + 1, strlen(pat + 1)) == 0) {
        return atoll(all + strlen(pat + 1));
    }
    return p ? atoll(p + strlen(pat)) : 0;
}


/*
 * One batch of a scenario: the FCALL's or EVALSHA's arguments.  Returns
 * argc.
 */

static int
build(const char *sc, script_t *s, const char **av, size_t *al,
    char keys[][32], unsigned char *layout)
{
    int            i, j, z, nz, nkeys, argc, uses[MAXKEYS], kidx[BATCH][3];
    size_t         n;
    static char    nk[16];
    const char    *defs[16];
    int            ndefargs;
    char           key[32];

    static const char  *exact1[] = { "0", "100000000", "60000000", "0", "0" };
    static const char  *s9[] = {
        "0", "100000000", "60000000", "0", "0",
        "1", "1000000", "1000000", "1000", "0",
        "0", "100000000", "10000000", "0", "0" };
    static const char  *counter3[] = {
        "2", "100000000", "60000000", "0", "0",
        "2", "100000000", "3600000000", "0", "0",
        "2", "100000000", "86400000000", "0", "0" };
    static const char  *gcra1[] = { "1", "100000000", "60000000", "100",
                                    "100" };
    const char  **d;

    if (strcmp(sc, "exact1") == 0) {
        d = exact1; nz = 1;
    } else if (strcmp(sc, "s9") == 0) {
        d = s9; nz = 3;
    } else if (strcmp(sc, "counter1") == 0) {
        d = counter3; nz = 1;
    } else if (strcmp(sc, "counter3") == 0) {
        d = counter3; nz = 3;
    } else if (strcmp(sc, "gcra1") == 0) {
        d = gcra1; nz = 1;
    } else {
        fprintf(stderr, "ratelimit-cpu: unknown scenario %s\n", sc);
        exit(2);
    }

    ndefargs = 5 * nz;
    for (i = 0; i < ndefargs; i++) {
        defs[i] = d[i];
    }

    nkeys = 0;

    for (i = 0; i < BATCH; i++) {
        int  user = rand() % users;

        for (z = 0; z < nz; z++) {
            if (strcmp(sc, "s9") == 0 && z > 0) {
                snprintf(key, sizeof(key), "aai:rl:%s%d:127.0.0.1", sc, z);
            } else {
                snprintf(key, sizeof(key), "aai:rl:%s%d:u%d", sc, z, user);
            }
            for (j = 0; j < nkeys; j++) {
                if (strcmp(keys[j], key) == 0) {
                    break;
                }
            }
            if (j == nkeys) {
                strcpy(keys[nkeys], key);
                uses[nkeys++] = 0;
            }
            uses[j]++;
            kidx[i][z] = j;
        }
    }

    n = 0;
    for (i = 0; i < BATCH; i++) {
        layout[n++] = (unsigned char) nz;
        for (z = 0; z < nz; z++) {
            j = kidx[i][z] + 1;
            layout[n++] = (unsigned char) (z + 1);
            layout[n++] = (unsigned char) ((j >> 8)
                                           | (uses[j - 1] > 1 ? 0x80 : 0));
            layout[n++] = (unsigned char) (j & 0xff);
        }
    }

    argc = 0;
    av[argc] = s->cmd; al[argc++] = strlen(s->cmd);
    av[argc] = s->sha; al[argc++] = strlen(s->sha);
    snprintf(nk, sizeof(nk), "%d", nkeys);
    av[argc] = nk; al[argc++] = strlen(nk);
    for (j = 0; j < nkeys; j++) {
        av[argc] = keys[j]; al[argc++] = strlen(keys[j]);
    }
    av[argc] = (const char *) layout; al[argc++] = n;
    av[argc] = "0"; al[argc++] = 1;
    for (i = 0; i < ndefargs; i++) {
        av[argc] = defs[i]; al[argc++] = strlen(defs[i]);
    }

    return argc;
}


static void
run(const char *sc, script_t *s, int pid, double seconds)
{
    int           argc, zones;
    char          keys[MAXKEYS][32], before[4096], after[4096], *p, *e;
    size_t        al[128];
    double        t0, c0, i0, c1, i1, checks;
    long long     batches, d, total;
    const char   *av[128];
    redisReply   *r;
    unsigned char layout[BATCH * 10 + 1];

    freeReplyObject(cmd("FLUSHALL", NULL));

    /* the warm-up: every user's keys written once (as after the first
     * seconds of the nginx benchmark), then the counters reset */
    for (batches = 0; batches < 3 * users / BATCH; batches++) {
        argc = build(sc, s, av, al, keys, layout);
        r = redisCommandArgv(rc, argc, av, al);
        if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
            fprintf(stderr, "ratelimit-cpu: %s %s: %s\n", sc, s->name,
                    r ? (r->str ? r->str : "not an array") : rc->errstr);
            exit(1);
        }
        freeReplyObject(r);
    }

    freeReplyObject(cmd("CONFIG RESETSTAT", NULL));

    /* under callgrind (bench/ratelimit-cpu with VALGRIND=1): the
     * instructions counted from here */
    if (getenv("RLCPU_ZERO") && system(getenv("RLCPU_ZERO")) != 0) {
        fprintf(stderr, "ratelimit-cpu: %s failed\n", getenv("RLCPU_ZERO"));
        exit(1);
    }

    zones = (strcmp(sc, "s9") == 0 || strcmp(sc, "counter3") == 0) ? 3 : 1;

    info_calls(before, sizeof(before));
    c0 = proc_cpu(pid);
    i0 = info_cpu();
    t0 = now_sec();
    batches = 0;

    while (now_sec() - t0 < seconds) {
        argc = build(sc, s, av, al, keys, layout);
        r = redisCommandArgv(rc, argc, av, al);
        if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
            fprintf(stderr, "ratelimit-cpu: %s %s: %s\n", sc, s->name,
                    r ? (r->str ? r->str : "not an array") : rc->errstr);
            exit(1);
        }
        freeReplyObject(r);
        batches++;
    }

    i1 = info_cpu();
    c1 = proc_cpu(pid);
    info_calls(after, sizeof(after));

    if (getenv("RLCPU_DUMP") && system(getenv("RLCPU_DUMP")) != 0) {
        fprintf(stderr, "ratelimit-cpu: %s failed\n", getenv("RLCPU_DUMP"));
        exit(1);
    }

    checks = (double) batches * BATCH;

    printf("%-9s %-8s checks %8.0f  proc %6.2f us/check  info %6.2f"
           " us/check  zones %d  cmds/check",
           sc, s->name, checks, (c1 - c0) * 1e6 / checks,
           (i1 - i0) * 1e6 / checks, zones);

    /* every command's calls per check, the INFO commands left out */
    total = 0;
    for (p = after; *p; p = e + 1) {
        char   name[48];
        int    len;

        e = strchr(p, '=');
        if (e == NULL) {
            break;
        }
        len = (int) (e - p);
        if (len >= (int) sizeof(name)) {
            break;
        }
        memcpy(name, p, len);
        name[len] = '\0';
        d = atoll(e + 1) - calls_of(before, name);
        e = strchr(e, ' ');
        if (strcmp(name, "info") == 0 || strcmp(name, "config|resetstat") == 0
            || strcmp(name, "flushall") == 0 || d <= 0)
        {
            if (e == NULL) {
                break;
            }
            continue;
        }
        total += d;
        printf(" %s %.2f", name, d / checks);
        if (e == NULL) {
            break;
        }
    }
    printf(" total %.2f\n", total / checks);
    fflush(stdout);
}


/* a file's content, NUL-terminated; exits when unreadable */

static char *
slurp(const char *path, long *len)
{
    FILE  *f;
    char  *body;

    f = fopen(path, "rb");
    if (f == NULL) {
        perror(path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    *len = ftell(f);
    fseek(f, 0, SEEK_SET);
    body = malloc(*len + 1);
    if (body == NULL || fread(body, 1, *len, f) != (size_t) *len) {
        fprintf(stderr, "ratelimit-cpu: %s unreadable\n", path);
        exit(1);
    }
    body[*len] = '\0';
    fclose(f);

    return body;
}


/*
 * The script as a function library "rlcpu_<n>", as the module makes it:
 * its name, the script without its last line (the call of EVAL), the
 * library's end (END.lua); FCALL rlcpu_<n>.
 */

static int
load_library(script_t *s, int n, char *body, long len, const char *endf)
{
    char        *lib, *last;
    long         elen;
    size_t       llen;
    redisReply  *r;
    char        *end;

    end = slurp(endf, &elen);

    /* the last line left out */
    if (len > 0 && body[len - 1] == '\n') {
        body[len - 1] = '\0';
    }
    last = strrchr(body, '\n');
    if (last == NULL || strncmp(last + 1, "return check(", 13) != 0) {
        fprintf(stderr, "ratelimit-cpu: %s: no EVAL line last\n", s->file);
        return 1;
    }
    last[1] = '\0';

    lib = malloc(len + elen + 128);
    if (lib == NULL) {
        return 1;
    }
    snprintf(s->sha, sizeof(s->sha), "rlcpu_%d", n);
    llen = sprintf(lib, "#!lua name=%s\nlocal library = '%s'\n%s%s",
                   s->sha, s->sha, body, end);

    r = redisCommand(rc, "FUNCTION LOAD REPLACE %b", lib, llen);
    if (r == NULL || r->type != REDIS_REPLY_STRING) {
        fprintf(stderr, "ratelimit-cpu: FUNCTION LOAD %s failed: %s\n",
                s->file, r && r->str ? r->str : "");
        return 1;
    }
    freeReplyObject(r);
    free(lib);
    free(end);

    s->cmd = "FCALL";
    return 0;
}


int
main(int argc, char **argv)
{
    int          port, pid, rounds, nscripts, i, j, k, round;
    char        *scs, *sc, *save, *body, *end;
    long         len;
    double       seconds;
    script_t     scripts[MAXSCR];
    redisReply  *r;

    if (argc < 7) {
        fprintf(stderr, "usage: ratelimit-cpu PORT PID SECONDS ROUNDS "
                "SCENARIOS NAME=FILE.lua[:END.lua] ...\n");
        return 2;
    }

    port = atoi(argv[1]);
    pid = atoi(argv[2]);
    seconds = atof(argv[3]);
    rounds = atoi(argv[4]);
    scs = argv[5];

    rc = redisConnect("127.0.0.1", port);
    if (rc == NULL || rc->err) {
        fprintf(stderr, "ratelimit-cpu: connect: %s\n",
                rc ? rc->errstr : "no memory");
        return 1;
    }

    nscripts = 0;
    for (i = 6; i < argc && nscripts < MAXSCR; i++) {
        char  *eq = strchr(argv[i], '=');

        if (eq == NULL) {
            fprintf(stderr, "ratelimit-cpu: %s: not NAME=FILE\n", argv[i]);
            return 2;
        }
        *eq = '\0';
        scripts[nscripts].name = argv[i];
        scripts[nscripts].file = eq + 1;

        end = strchr(eq + 1, ':');
        if (end) {
            *end++ = '\0';
        }

        body = slurp(eq + 1, &len);

        if (end) {
            if (load_library(&scripts[nscripts], nscripts, body, len, end)
                != 0)
            {
                return 1;
            }
            free(body);
            nscripts++;
            continue;
        }

        scripts[nscripts].cmd = "EVALSHA";

        r = redisCommand(rc, "SCRIPT LOAD %b", body, (size_t) len);
        if (r == NULL || r->type != REDIS_REPLY_STRING || r->len != 40) {
            fprintf(stderr, "ratelimit-cpu: SCRIPT LOAD %s failed\n", eq + 1);
            return 1;
        }
        memcpy(scripts[nscripts].sha, r->str, 40);
        scripts[nscripts].sha[40] = '\0';
        freeReplyObject(r);
        free(body);
        nscripts++;
    }

    if (getenv("RLCPU_USERS")) {
        users = atoi(getenv("RLCPU_USERS"));
        if (users < 1) {
            users = USERS;
        }
    }

    srand(1);

    for (round = 0; round < rounds; round++) {
        char  list[256];

        snprintf(list, sizeof(list), "%s", scs);
        for (sc = strtok_r(list, ",", &save); sc;
             sc = strtok_r(NULL, ",", &save))
        {
            for (j = 0; j < nscripts; j++) {
                k = (j + round) % nscripts;
                run(sc, &scripts[k], pid, seconds);
            }
        }
    }

    return 0;
}
