/*
 * kmock: a mock Kafka cluster for the aai-nginx tests (a test tool, not
 * part of the modules).  It runs librdkafka's built-in mock cluster
 * (rdkafka_mock.h): N brokers on loopback ports, speaking the real Kafka
 * protocol, so the module's producer and kcat work against it unchanged.
 *
 *   kmock [-n brokers] [-t "topic:partitions ..."] [-f bootstrap_file]
 *         [-c control_port_file]
 *
 * Defaults: 3 brokers, topics "user-events:12 abuse-events:12 events:12"
 * (other topics are auto-created on first use with the mock's default
 * partition count).  The bootstrap list is printed on stdout and written
 * to the -f file; the control port to the -c file.  Runs until SIGTERM or
 * SIGINT.
 *
 * Control: a TCP port on 127.0.0.1 that reads one command per line and
 * answers "ok" or "err <reason>":
 *   down <broker_id>          the broker drops its connections and refuses
 *                             new ones (no leader change)
 *   up <broker_id>            the broker accepts connections again
 *   rtt <broker_id> <ms>      adds a round-trip delay to the broker
 *   produce_errors <err> <n>  the next n Produce requests, to any broker,
 *                             fail with Kafka error code err
 *   ping                      answers "ok"
 * Broker ids are 1..N.
 */

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>


#define KMOCK_MAX_CLIENTS  16
#define KMOCK_LINE         256


typedef struct {
    int     fd;
    size_t  len;
    char    buf[KMOCK_LINE];
} kmock_client_t;


static volatile sig_atomic_t  kmock_quit;


static void
kmock_signal(int signo)
{
    (void) signo;
    kmock_quit = 1;
}


static int
kmock_write_file(const char *path, const char *text)
{
    FILE  *f;
    char   tmp[4096];

    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int) sizeof(tmp)) {
        return -1;
    }

    f = fopen(tmp, "w");
    if (f == NULL) {
        return -1;
    }

    fprintf(f, "%s\n", text);

    if (fclose(f) != 0) {
        return -1;
    }

    return rename(tmp, path);
}


static int
kmock_create_topics(rd_kafka_mock_cluster_t *mc, const char *spec, int rf)
{
    char                *copy, *tok, *save, *colon;
    int                  parts;
    rd_kafka_resp_err_t  err;

    copy = strdup(spec);
    if (copy == NULL) {
        return -1;
    }

    for (tok = strtok_r(copy, " ,", &save);
         tok != NULL;
         tok = strtok_r(NULL, " ,", &save))
    {
        parts = 4;
        colon = strchr(tok, ':');

        if (colon != NULL) {
            *colon = '\0';
            parts = atoi(colon + 1);
            if (parts <= 0) {
                fprintf(stderr, "kmock: bad partition count for \"%s\"\n",
                        tok);
                free(copy);
                return -1;
            }
        }

        err = rd_kafka_mock_topic_create(mc, tok, parts, rf);
        if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
            fprintf(stderr, "kmock: topic \"%s\": %s\n", tok,
                    rd_kafka_err2str(err));
            free(copy);
            return -1;
        }
    }

    free(copy);
    return 0;
}


static int
kmock_listen(int *port)
{
    int                 fd, one;
    socklen_t           len;
    struct sockaddr_in  sin;

    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd == -1) {
        return -1;
    }

    one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));

    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sin.sin_port = 0;

    if (bind(fd, (struct sockaddr *) &sin, sizeof(sin)) == -1
        || listen(fd, 16) == -1)
    {
        close(fd);
        return -1;
    }

    len = sizeof(sin);
    if (getsockname(fd, (struct sockaddr *) &sin, &len) == -1) {
        close(fd);
        return -1;
    }

    *port = ntohs(sin.sin_port);

    return fd;
}


/* Produce is Kafka API key 0 */

static void
kmock_produce_errors(rd_kafka_mock_cluster_t *mc, int n, int code, int count,
    char *out, size_t size)
{
    int  i;

    if (n != 3 || code <= 0 || count <= 0) {
        snprintf(out, size, "err usage: produce_errors <err> <count>\n");
        return;
    }

    for (i = 0; i < count; i++) {
        rd_kafka_mock_push_request_errors(mc, 0, 1,
                                          (rd_kafka_resp_err_t) code);
    }

    fprintf(stderr, "kmock: produce_errors %d %d\n", code, count);
    snprintf(out, size, "ok\n");
}


static void
kmock_command(rd_kafka_mock_cluster_t *mc, int nbrokers, char *line,
    char *out, size_t size)
{
    int                  id, ms, n;
    char                 cmd[32];
    rd_kafka_resp_err_t  err;

    id = 0;
    ms = 0;
    n = sscanf(line, "%31s %d %d", cmd, &id, &ms);

    if (n < 1) {
        snprintf(out, size, "err empty command\n");
        return;
    }

    if (strcmp(cmd, "ping") == 0) {
        snprintf(out, size, "ok\n");
        return;
    }

    if (strcmp(cmd, "produce_errors") == 0) {
        kmock_produce_errors(mc, n, id, ms, out, size);
        return;
    }

    if (n < 2 || id < 1 || id > nbrokers) {
        snprintf(out, size, "err bad broker id\n");
        return;
    }

    if (strcmp(cmd, "down") == 0) {
        err = rd_kafka_mock_broker_set_down(mc, id);

    } else if (strcmp(cmd, "up") == 0) {
        err = rd_kafka_mock_broker_set_up(mc, id);

    } else if (strcmp(cmd, "rtt") == 0 && n == 3 && ms >= 0) {
        err = rd_kafka_mock_broker_set_rtt(mc, id, ms);

    } else {
        snprintf(out, size, "err unknown command\n");
        return;
    }

    if (err != RD_KAFKA_RESP_ERR_NO_ERROR) {
        snprintf(out, size, "err %s\n", rd_kafka_err2str(err));
        return;
    }

    fprintf(stderr, "kmock: %s\n", line);
    snprintf(out, size, "ok\n");
}


static void
kmock_client_read(rd_kafka_mock_cluster_t *mc, int nbrokers,
    kmock_client_t *c)
{
    char     *nl, reply[128];
    size_t    used;
    ssize_t   n;

    n = read(c->fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len);

    if (n <= 0) {
        close(c->fd);
        c->fd = -1;
        return;
    }

    c->len += n;
    c->buf[c->len] = '\0';

    while ((nl = strchr(c->buf, '\n')) != NULL) {
        *nl = '\0';
        if (nl > c->buf && nl[-1] == '\r') {
            nl[-1] = '\0';
        }

        kmock_command(mc, nbrokers, c->buf, reply, sizeof(reply));

        if (write(c->fd, reply, strlen(reply)) < 0) {
            /* the client went away; the next read sees it */
        }

        used = nl + 1 - c->buf;
        memmove(c->buf, nl + 1, c->len - used + 1);
        c->len -= used;
    }

    if (c->len == sizeof(c->buf) - 1) {
        close(c->fd);
        c->fd = -1;
    }
}


static void
kmock_serve(rd_kafka_mock_cluster_t *mc, int nbrokers, int lfd)
{
    int             i, n, fd;
    nfds_t          nfds;
    struct pollfd   pfd[KMOCK_MAX_CLIENTS + 1];
    kmock_client_t  cl[KMOCK_MAX_CLIENTS];

    for (i = 0; i < KMOCK_MAX_CLIENTS; i++) {
        cl[i].fd = -1;
        cl[i].len = 0;
    }

    while (!kmock_quit) {
        pfd[0].fd = lfd;
        pfd[0].events = POLLIN;
        nfds = 1;

        for (i = 0; i < KMOCK_MAX_CLIENTS; i++) {
            pfd[i + 1].fd = cl[i].fd;
            pfd[i + 1].events = POLLIN;
            pfd[i + 1].revents = 0;
            nfds++;
        }

        n = poll(pfd, nfds, 200);
        if (n <= 0) {
            continue;
        }

        for (i = 0; i < KMOCK_MAX_CLIENTS; i++) {
            if (cl[i].fd != -1 && (pfd[i + 1].revents & (POLLIN|POLLHUP))) {
                kmock_client_read(mc, nbrokers, &cl[i]);
            }
        }

        if (pfd[0].revents & POLLIN) {
            fd = accept(lfd, NULL, NULL);
            if (fd == -1) {
                continue;
            }

            for (i = 0; i < KMOCK_MAX_CLIENTS; i++) {
                if (cl[i].fd == -1) {
                    cl[i].fd = fd;
                    cl[i].len = 0;
                    break;
                }
            }

            if (i == KMOCK_MAX_CLIENTS) {
                close(fd);
            }
        }
    }

    for (i = 0; i < KMOCK_MAX_CLIENTS; i++) {
        if (cl[i].fd != -1) {
            close(cl[i].fd);
        }
    }
}


int
main(int argc, char **argv)
{
    int                       opt, nbrokers, lfd, port, rf;
    char                      errstr[512], buf[32];
    const char               *topics, *bfile, *cfile, *boot;
    rd_kafka_t               *rk;
    rd_kafka_conf_t          *conf;
    struct sigaction          sa;
    rd_kafka_mock_cluster_t  *mc;

    nbrokers = 3;
    topics = "user-events:12 abuse-events:12 events:12";
    bfile = NULL;
    cfile = NULL;

    while ((opt = getopt(argc, argv, "n:t:f:c:")) != -1) {
        switch (opt) {
        case 'n':
            nbrokers = atoi(optarg);
            break;
        case 't':
            topics = optarg;
            break;
        case 'f':
            bfile = optarg;
            break;
        case 'c':
            cfile = optarg;
            break;
        default:
            fprintf(stderr, "usage: kmock [-n brokers] [-t \"topic:parts "
                    "...\"] [-f bootstrap_file] [-c control_port_file]\n");
            return 2;
        }
    }

    if (nbrokers < 1 || nbrokers > 16) {
        fprintf(stderr, "kmock: bad broker count\n");
        return 2;
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = kmock_signal;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &sa, NULL);

    conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "log_level", "3", errstr, sizeof(errstr))
        != RD_KAFKA_CONF_OK)
    {
        fprintf(stderr, "kmock: %s\n", errstr);
        return 1;
    }

    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
    if (rk == NULL) {
        fprintf(stderr, "kmock: rd_kafka_new: %s\n", errstr);
        return 1;
    }

    mc = rd_kafka_mock_cluster_new(rk, nbrokers);
    if (mc == NULL) {
        fprintf(stderr, "kmock: cannot create the mock cluster\n");
        rd_kafka_destroy(rk);
        return 1;
    }

    rf = nbrokers < 3 ? nbrokers : 3;

    if (kmock_create_topics(mc, topics, rf) != 0) {
        rd_kafka_mock_cluster_destroy(mc);
        rd_kafka_destroy(rk);
        return 1;
    }

    lfd = kmock_listen(&port);
    if (lfd == -1) {
        fprintf(stderr, "kmock: control socket: %s\n", strerror(errno));
        rd_kafka_mock_cluster_destroy(mc);
        rd_kafka_destroy(rk);
        return 1;
    }

    boot = rd_kafka_mock_cluster_bootstraps(mc);
    snprintf(buf, sizeof(buf), "%d", port);

    if ((bfile != NULL && kmock_write_file(bfile, boot) != 0)
        || (cfile != NULL && kmock_write_file(cfile, buf) != 0))
    {
        fprintf(stderr, "kmock: cannot write the address files: %s\n",
                strerror(errno));
        close(lfd);
        rd_kafka_mock_cluster_destroy(mc);
        rd_kafka_destroy(rk);
        return 1;
    }

    printf("%s\n", boot);
    fflush(stdout);

    kmock_serve(mc, nbrokers, lfd);

    close(lfd);
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);

    return 0;
}
