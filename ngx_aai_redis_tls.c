
/*
 * Copyright (C) aai-nginx authors
 *
 * ngx_aai_redis_tls: tls=on.  The SSL_CTX of a client (configuration
 * time), the non-blocking TLS handshake of a connection with nginx's own
 * OpenSSL layer, the verification of the certificate and the name, the
 * session kept for reconnects, the writes through ngx_ssl_write() and the
 * log writer that keeps OpenSSL's last reason for the failure message.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_event.h>
#include <ngx_event_connect.h>

#include "ngx_aai_redis_int.h"


#if (NGX_SSL)


static void ngx_aai_redis_tls_handshake_handler(ngx_connection_t *c);
static ngx_int_t ngx_aai_redis_tls_verify(ngx_aai_redis_conn_t *conn);
static void ngx_aai_redis_tls_save_session(ngx_connection_t *c);
static ngx_uint_t ngx_aai_redis_is_ip(ngx_str_t *name);


/*
 * One SSL_CTX per client, as the upstream module has per location: the
 * client certificate, the trusted CAs (verification is done after the
 * handshake, by ngx_aai_redis_tls_verify()), and a client session cache
 * whose new sessions each connection keeps for its next connect.
 */

ngx_int_t
ngx_aai_redis_ssl_create(ngx_conf_t *cf, ngx_aai_redis_t *rs)
{
    ngx_ssl_t             *ssl;
    ngx_pool_cleanup_t    *cln;
    ngx_aai_redis_conf_t  *rcf;

    rcf = rs->conf;

    ssl = ngx_pcalloc(cf->pool, sizeof(ngx_ssl_t));
    if (ssl == NULL) {
        return NGX_ERROR;
    }

    ssl->log = cf->log;

    if (ngx_ssl_create(ssl, NGX_SSL_TLSv1_2|NGX_SSL_TLSv1_3, NULL)
        != NGX_OK)
    {
        return NGX_ERROR;
    }

    cln = ngx_pool_cleanup_add(cf->pool, 0);
    if (cln == NULL) {
        ngx_ssl_cleanup_ctx(ssl);
        return NGX_ERROR;
    }

    cln->handler = ngx_ssl_cleanup_ctx;
    cln->data = ssl;

    if (rcf->tls_cert.len
        && ngx_ssl_certificate(cf, ssl, &rcf->tls_cert, &rcf->tls_key, NULL)
           != NGX_OK)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cannot load \"tls_cert\" \"%V\" or \"tls_key\" "
                           "\"%V\" in \"%V\"", &rcf->tls_cert, &rcf->tls_key,
                           &rcf->directive);
        return NGX_ERROR;
    }

    if (rcf->tls_verify) {
        if (rcf->tls_ca.len) {
            if (ngx_ssl_trusted_certificate(cf, ssl, &rcf->tls_ca, 4)
                != NGX_OK)
            {
                ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                                   "cannot load \"tls_ca\" \"%V\" in \"%V\"",
                                   &rcf->tls_ca, &rcf->directive);
                return NGX_ERROR;
            }

        } else if (SSL_CTX_set_default_verify_paths(ssl->ctx) != 1) {
            ngx_ssl_error(NGX_LOG_EMERG, cf->log, 0,
                          "SSL_CTX_set_default_verify_paths() failed "
                          "in \"%V\"", &rcf->directive);
            return NGX_ERROR;
        }
    }

    if (ngx_ssl_client_session_cache(cf, ssl, 1) != NGX_OK) {
        return NGX_ERROR;
    }

    rs->ssl = ssl;

    return NGX_OK;
}


/*
 * TCP is connected: the TLS handshake, with nginx's own non-blocking
 * OpenSSL layer.  Its events belong to ngx_ssl_handshake() until it calls
 * ngx_aai_redis_tls_handshake_handler(); the handshake commands' deadline
 * (connect_timeout + timeout) guards it.
 */

ngx_int_t
ngx_aai_redis_tls_start(ngx_aai_redis_conn_t *conn)
{
    ngx_int_t              rc;
    ngx_aai_redis_t       *rs;
    ngx_connection_t      *c;
    ngx_aai_redis_conf_t  *rcf;

    rs = conn->rs;
    rcf = rs->conf;
    c = conn->pc.connection;

    conn->state = NGX_AAI_REDIS_TLS;

    /* a peer connection has no pool: ngx_ssl_create_connection() needs one */

    c->pool = ngx_create_pool(512, c->log);
    if (c->pool == NULL) {
        ngx_aai_redis_fail(conn, 0, "no memory", "no memory");
        return NGX_ERROR;
    }

    if (ngx_ssl_create_connection(rs->ssl, c, NGX_SSL_CLIENT) != NGX_OK) {
        ngx_aai_redis_fail(conn, 0, "connection lost",
                           "TLS: cannot create a connection");
        return NGX_ERROR;
    }

    /* SNI: a host name, not an address */

    if (rcf->tls_name.len
        && !ngx_aai_redis_is_ip(&rcf->tls_name)
        && SSL_set_tlsext_host_name(c->ssl->connection,
                                    (char *) rcf->tls_name.data) != 1)
    {
        ngx_aai_redis_fail(conn, 0, "connection lost",
                           "TLS: SSL_set_tlsext_host_name(\"%V\") failed",
                           &rcf->tls_name);
        return NGX_ERROR;
    }

    if (conn->ssl_session
        && ngx_ssl_set_session(c, conn->ssl_session) != NGX_OK)
    {
        ngx_aai_redis_fail(conn, 0, "connection lost",
                           "TLS: cannot set the session");
        return NGX_ERROR;
    }

    c->ssl->save_session = ngx_aai_redis_tls_save_session;

    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, rs->log, 0,
                   "aai redis %V: TLS handshake%s", conn->name,
                   conn->ssl_session ? ", resuming the session" : "");

    rc = ngx_ssl_handshake(c);

    if (rc == NGX_AGAIN) {
        c->ssl->handler = ngx_aai_redis_tls_handshake_handler;
        return NGX_OK;
    }

    ngx_aai_redis_tls_handshake_handler(c);

    return (conn->pc.connection == c
            && conn->state == NGX_AAI_REDIS_HANDSHAKE) ? NGX_OK : NGX_ERROR;
}


static void
ngx_aai_redis_tls_handshake_handler(ngx_connection_t *c)
{
    ngx_aai_redis_conn_t  *conn;

    conn = c->data;

    if (!c->ssl->handshaked) {
        ngx_aai_redis_fail(conn, 0, "connection lost",
                           "TLS handshake failed");
        return;
    }

    if (ngx_aai_redis_tls_verify(conn) != NGX_OK) {
        return;
    }

    ngx_log_debug2(NGX_LOG_DEBUG_EVENT, conn->rs->log, 0,
                   "aai redis %V: TLS handshake done, session reused: %d",
                   conn->name, SSL_session_reused(c->ssl->connection));

    /* c->recv and c->send are ngx_ssl_recv() and ngx_ssl_write() now */

    c->read->handler = ngx_aai_redis_read_handler;
    c->write->handler = ngx_aai_redis_write_handler;

    conn->state = NGX_AAI_REDIS_HANDSHAKE;

    ngx_post_event(c->write, &ngx_posted_events);
    ngx_post_event(c->read, &ngx_posted_events);
}


/* the certificate and the name, logged with the reason they are refused */

static ngx_int_t
ngx_aai_redis_tls_verify(ngx_aai_redis_conn_t *conn)
{
    long                   rc;
    X509                  *cert;
    ngx_connection_t      *c;
    ngx_aai_redis_conf_t  *rcf;

    rcf = conn->rs->conf;
    c = conn->pc.connection;

    if (!rcf->tls_verify) {
        return NGX_OK;
    }

    rc = SSL_get_verify_result(c->ssl->connection);

    if (rc != X509_V_OK) {
        ngx_aai_redis_fail(conn, 0, "connection lost",
                           "TLS: server certificate verify failed: "
                           "(%l: %s)", rc, X509_verify_cert_error_string(rc));
        return NGX_ERROR;
    }

    cert = SSL_get_peer_certificate(c->ssl->connection);

    if (cert == NULL) {
        ngx_aai_redis_fail(conn, 0, "connection lost",
                           "TLS: the server sent no certificate");
        return NGX_ERROR;
    }

    /* an address (the default name of "127.0.0.1:6380") is an IP SAN */

    if (ngx_aai_redis_is_ip(&rcf->tls_name)) {
        rc = X509_check_ip_asc(cert, (char *) rcf->tls_name.data, 0);
        X509_free(cert);

        if (rc == 1) {
            return NGX_OK;
        }

        ngx_aai_redis_fail(conn, 0, "connection lost",
                           "TLS: server certificate does not match "
                           "tls_name \"%V\"", &rcf->tls_name);
        return NGX_ERROR;
    }

    X509_free(cert);

    if (ngx_ssl_check_host(c, &rcf->tls_name) != NGX_OK) {
        ngx_aai_redis_fail(conn, 0, "connection lost",
                           "TLS: server certificate does not match "
                           "tls_name \"%V\"", &rcf->tls_name);
        return NGX_ERROR;
    }

    return NGX_OK;
}


static ngx_uint_t
ngx_aai_redis_is_ip(ngx_str_t *name)
{
    return ngx_inet_addr(name->data, name->len) != INADDR_NONE
           || ngx_strlchr(name->data, name->data + name->len, ':') != NULL;
}


/*
 * conn->log's writer: keeps the text of core's last message (after the
 * "time [level] pid#tid: " prefix, before the ", aai redis: " context).
 */

void
ngx_aai_redis_tls_log_writer(ngx_log_t *log, ngx_uint_t level, u_char *buf,
    size_t len)
{
    u_char                *p, *last, *ctx;
    size_t                 n;
    ngx_aai_redis_conn_t  *conn;

    conn = log->wdata;
    last = buf + len;

    p = ngx_strlchr(buf, last, ']');
    if (p == NULL) {
        return;
    }

    while (p < last - 1 && !(p[0] == ':' && p[1] == ' ')) {
        p++;
    }

    p += 2;

    if (p >= last) {
        return;
    }

    ctx = ngx_strlcasestrn(p, last, (u_char *) ", aai redis:",
                           sizeof(", aai redis:") - 2);
    if (ctx) {
        last = ctx;
    }

    n = ngx_min((size_t) (last - p), sizeof(conn->tls_error));

    ngx_memcpy(conn->tls_error, p, n);
    conn->tls_error_len = n;
}


/* a new session (TLS 1.3: a ticket after the handshake) for reconnects */

static void
ngx_aai_redis_tls_save_session(ngx_connection_t *c)
{
    ngx_ssl_session_t     *session;
    ngx_aai_redis_conn_t  *conn;

    conn = c->data;

    session = ngx_ssl_get_session(c);
    if (session == NULL) {
        return;
    }

    if (conn->ssl_session) {
        ngx_ssl_free_session(conn->ssl_session);
    }

    conn->ssl_session = session;
}


/*
 * One write through c->send (ngx_ssl_write): NGX_OK when bytes were
 * taken (the caller loops), NGX_AGAIN when the write waits for an event
 * (ngx_ssl_write() armed it, for a read or a write), NGX_ERROR when the
 * connection failed.
 */

ngx_int_t
ngx_aai_redis_tls_send(ngx_aai_redis_conn_t *conn, u_char *p, size_t size)
{
    ssize_t            n;
    ngx_connection_t  *c;

    c = conn->pc.connection;

    n = c->send(c, p, size);

    ngx_log_debug3(NGX_LOG_DEBUG_EVENT, conn->rs->log, 0,
                   "aai redis %V: TLS send: %z of %uz", conn->name, n, size);

    if (n > 0) {
        if (conn->state == NGX_AAI_REDIS_HANDSHAKE) {
            conn->hs_sent += n;

        } else {
            conn->out_pos += n;
        }

        return NGX_OK;
    }

    if (n == NGX_AGAIN) {
        if (ngx_handle_write_event(c->write, 0) != NGX_OK) {
            ngx_aai_redis_fail(conn, 0, "connection lost",
                               "cannot arm the write event");
            return NGX_ERROR;
        }

        return NGX_AGAIN;
    }

    ngx_aai_redis_fail(conn, 0, "connection lost", "TLS write failed");

    return NGX_ERROR;
}

#endif /* NGX_SSL */
