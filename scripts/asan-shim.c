/*
 * Test-only helper of `make asan` (t/run-tests builds it and preloads it
 * right after the AddressSanitizer runtime into the nginx under test).
 * Never part of a module build.
 *
 * 1. dlclose() does nothing.  nginx unloads the modules (and with them
 *    librdkafka, cJSON) when it destroys a cycle, i.e. just before exit,
 *    before LeakSanitizer runs: their globals are then gone from the root
 *    set (librdkafka's bookkeeping shows up as dozens of false "leaks") and
 *    every frame of a real leak of ours is "<unknown module>".  Keeping
 *    them mapped makes the exit-time leak check sound and symbolized.
 *
 * 2. Once the process is exiting (this library's atexit handler, which
 *    runs right before the runtime's leak check), sanitizer reports go to
 *    "<dir>/lsan.<pid>" instead of "<dir>/asan.<pid>" (the dir of log_path
 *    in ASAN_OPTIONS).  Anything written to asan.* fails the test block at
 *    once (t/compat); the exit-time leak reports are judged afterwards by
 *    scripts/lsan-filter, which keeps only the leaks whose allocation stack
 *    runs through our code or our libraries (see t/run-tests).
 *
 * 3. "nginx -t" (and -T) returns from main() with the configuration it
 *    read still allocated: the cycle is then referenced from main()'s
 *    stack only, so everything in it is "leaked" by design, ours included
 *    (an rd_kafka_conf_t or a metrics array freed by a pool cleanup that
 *    never runs).  Such a process ends without the exit-time leak check.
 *    A failed "nginx -t" destroys its pools and is still checked, and so
 *    is the configuration memory of a running nginx (a reload destroys the
 *    old cycle's pools, the master frees the last one at exit).
 *
 * 4. The process keeps the exit status it asked for (by exit() or by
 *    returning from main()) when it has leaks: a leak report would turn it
 *    into 1, and a leak must not look like a failed start of the
 *    daemonizing nginx or a failed "nginx -t"; scripts/lsan-filter reports
 *    it.
 */

#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sanitizer/common_interface_defs.h>


static char  aai_lsan_path[4096];
static int   aai_exit_status = -1;


int
dlclose(void *handle)
{
    (void) handle;

    return 0;
}


/* the runtime's _exit() interceptor would turn 0 into 1 again */

static void
aai_die(void)
{
    if (aai_exit_status >= 0) {
        syscall(SYS_exit_group, aai_exit_status);
    }
}


/*
 * Registered after the runtime's own exit handler (this library needs the
 * runtime, so it is initialized after it): runs before the leak check.
 */

static void
aai_at_exit(void)
{
    if (aai_lsan_path[0]) {
        __sanitizer_set_report_path(aai_lsan_path);
    }

    __sanitizer_set_death_callback(aai_die);
}


void
exit(int status)
{
    void  (*real_exit)(int);

    aai_exit_status = status & 0xff;

    real_exit = (void (*)(int)) dlsym(RTLD_NEXT, "exit");
    if (real_exit) {
        real_exit(status);
    }

    _exit(status);
}


static int  (*aai_main)(int, char **, char **);


/* "-t", "-T", "-qt"...; the values of -p, -c, -g, -e and -s are skipped */

static int
aai_config_test(int argc, char **argv)
{
    int    i;
    char  *p;

    for (i = 1; i < argc; i++) {
        p = argv[i];

        if (*p++ != '-') {
            continue;
        }

        for ( /* void */ ; *p; p++) {

            if (*p == 't' || *p == 'T') {
                return 1;
            }

            if (strchr("pcges", *p)) {
                if (p[1] == '\0') {
                    i++;
                }

                break;
            }
        }
    }

    return 0;
}


static int
aai_main_wrapper(int argc, char **argv, char **envp)
{
    int  rc, test;

    test = aai_config_test(argc, argv);

    rc = aai_main(argc, argv, envp);

    aai_exit_status = rc & 0xff;

    if (test && rc == 0) {
        /* no atexit handlers: the leak check would report the cycle */
        syscall(SYS_exit_group, aai_exit_status);
    }

    return rc;
}


int
__libc_start_main(int (*main)(int, char **, char **), int argc,
    char **argv, void (*init)(void), void (*fini)(void),
    void (*rtld_fini)(void), void *stack_end)
{
    int  (*real)(int (*)(int, char **, char **), int, char **,
                 void (*)(void), void (*)(void), void (*)(void), void *);

    real = (int (*)(int (*)(int, char **, char **), int, char **,
                    void (*)(void), void (*)(void), void (*)(void), void *))
           dlsym(RTLD_NEXT, "__libc_start_main");

    aai_main = main;

    return real(aai_main_wrapper, argc, argv, init, fini, rtld_fini,
                stack_end);
}


__attribute__((constructor))
static void
aai_shim_init(void)
{
    size_t       n;
    const char  *opts, *p, *c, *end, *slash;

    opts = getenv("ASAN_OPTIONS");

    p = opts ? strstr(opts, "log_path=") : NULL;

    if (p) {
        p += sizeof("log_path=") - 1;
        end = strchr(p, ':');
        if (end == NULL) {
            end = p + strlen(p);
        }

        slash = NULL;
        for (c = p; c < end; c++) {
            if (*c == '/') {
                slash = c;
            }
        }

        n = slash ? (size_t) (slash - p) + 1 : 0;

        if (n + sizeof("lsan") <= sizeof(aai_lsan_path)) {
            memcpy(aai_lsan_path, p, n);
            memcpy(aai_lsan_path + n, "lsan", sizeof("lsan"));
        }
    }

    atexit(aai_at_exit);
}
